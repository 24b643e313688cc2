"""Smoke test of benchmarks/: each script runs with --quick and prints its fields; no timing asserted."""

from __future__ import annotations

import json
import subprocess
from importlib.util import find_spec

import pytest
import torch

from charnn.runtime import native_bf16_cpu
from tests.conftest import PYTHON, REPO, cli_env

SERVE = all(find_spec(name) for name in ("fastapi", "uvicorn", "httpx"))
FIELDS = {
    "train_speed.py": {
        "charnn_chars_per_s",
        "bare_chars_per_s",
        "ratio_loop",
        "ratio_amortised",
        "peak_rss_mb_charnn",
        "peak_rss_mb_plain",
        "rss_ratio",
    },
    "sample_speed.py": {
        "one_stream_chars_per_s",
        "one_stream_plain_chars_per_s",
        "one_stream_ratio",
        "many_streams_chars_per_s",
        "many_streams_plain_chars_per_s",
        "many_streams_ratio",
        "many_streams_bf16_chars_per_s",
        "cli_chars_per_s",
        "cli_ratio",
        "cli_bf16_chars_per_s",
        "one_stream_bf16_chars_per_s",
        "stepped_loss_fp32",
        "stepped_loss_bf16",
        "first_char_s",
        "fast_and_module_same_text",
    },
    "eval_speed.py": {"charnn_chars_per_s", "bare_chars_per_s", "ratio", "cli_eval_seconds"},
    "step_speed.py": {"rows", "median_ratio"},
    "shared_cores.py": {"rows", "worst_busy_ratio"},
    "novelty.py": {"rows", "query_ms_1000_chars_worst"},
    "cold_start.py": {"rows", "means"},
    "serve_load.py": {
        "loads",
        "bare_stepper_chars_per_s",
        "server_vs_bare_ratio",
        "one_at_a_time_chars_per_s",
        "batched_vs_one_at_a_time",
        "rss_mb_before",
        "rss_mb_after",
        "requests_all_complete",
    },
}


@pytest.mark.parametrize("script", sorted(FIELDS))
def test_benchmark_runs_quick_and_prints_its_fields(script):
    if script == "serve_load.py" and not SERVE:
        pytest.skip("needs fastapi, uvicorn and httpx")
    done = subprocess.run(
        [PYTHON, str(REPO / "benchmarks" / script), "--quick"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert FIELDS[script] <= set(result)
    assert "ratio" in done.stdout and "machine:" in done.stdout
    if script == "serve_load.py":  # every response complete, the servers stopped cleanly
        assert all(load["all_complete"] for load in result["loads"]) and result["requests_all_complete"]
        assert result["exit_codes"] == [0, 0]
    if script == "step_speed.py" and torch.backends.mkldnn.is_available():
        assert result["median_ratio"] is not None  # --quick forces the packed path, so there is a ratio


@pytest.mark.parametrize("script", sorted(FIELDS))
def test_benchmark_help(script):
    if script == "serve_load.py" and not SERVE:
        pytest.skip("needs fastapi, uvicorn and httpx")
    done = subprocess.run(
        [PYTHON, str(REPO / "benchmarks" / script), "--help"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "--quick" in done.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_sampling_gives_the_eager_fast_path_text(kind, precision):
    from charnn.config import ModelConfig, SampleConfig
    from charnn.data import Vocab
    from charnn.model import CharRNN
    from charnn.sampling import generate as sample
    from charnn.sampling.stepper import Tuning

    vocab = Vocab(tuple(map(ord, "\n abcdefgh")))
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(model=kind, layers=2, hidden=16, embed=8), len(vocab)).cuda()
    for cfg in (
        SampleConfig(length=300, seed=3, temperature=1.0, prime="abc", num_samples=3, precision=precision),
        SampleConfig(length=50, seed=1, top_k=3, precision=precision),
        SampleConfig(length=50, greedy=True, precision=precision),
    ):
        graphed = sample.sample_text(model, vocab, cfg)
        assert graphed == sample.sample_text(model, vocab, cfg, tuning=Tuning(cuda_graphs=False))


def _json_rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


# A stand-in for the plain baseline trainer: the one JSON line quality.py reads from it.
PLAIN_TRAINER = """import json
print(json.dumps({"event": "final", "steps": 7, "val_loss": 2.5, "val_bits_per_char": 3.6067, "chars_per_s": 999}))
"""


@pytest.mark.slow
def test_quality_benchmark_quick_compares_with_the_baseline(tmp_path):
    trainer = tmp_path / "plain_trainer.py"
    trainer.write_text(PLAIN_TRAINER, encoding="utf-8")
    done = subprocess.run(
        [PYTHON, str(REPO / "benchmarks" / "quality.py"), "--quick", "--ref", str(trainer), "--seeds", "1,2"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _json_rows(done.stdout)
    assert [r["tool"] for r in rows] == ["ref_lstm", "charnn", "charnn"]
    ours = rows[1:]
    for row in ours:
        assert {"val_nats", "val_bpc", "prose_nats", "prose_bpc", "sample", "params"} <= set(row)
        assert f"{row['val_nats'] - 2.5:+.4f}" in done.stdout
        assert 0 < row["best_step"] <= row["steps"]  # the checkpoint scored, and the run's last step
    assert [row["seed"] for row in ours] == [1, 2] and "vs ref" in done.stdout
    mean = (ours[0]["val_nats"] + ours[1]["val_nats"]) / 2
    assert f"charnn tiny: mean {mean:.4f} nats/char over 2 seeds" in done.stdout


def test_quality_benchmark_takes_the_seed_once():
    done = subprocess.run(
        [PYTHON, str(REPO / "benchmarks" / "quality.py"), "--seeds", "1,2", "--", "--seed", "3"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--seeds and a --seed after -- both set the seed" in done.stderr


def test_gpu_grid_quick_runs_on_the_cpu():
    done = subprocess.run(
        [PYTHON, str(REPO / "benchmarks" / "gpu_grid.py"), "--device", "cpu", "--quick"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _json_rows(done.stdout)[1:]
    assert len(rows) == 2
    assert all({"charnn_ms_per_iter", "bare_ms_per_iter", "ratio", "charnn_peak_mb"} <= set(r) for r in rows)


def test_fit_benchmark_quick_runs_the_default_and_the_sweep():
    done = subprocess.run(
        [PYTHON, str(REPO / "benchmarks" / "fit.py"), "--quick"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    runs = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert {(r["corpus"], r["run"]) for r in runs} == {
        ("quick-a", "default"),
        ("quick-b", "default"),
        ("quick-a", "2x256 d0.5"),
        ("quick-b", "2x256 d0.5"),
    }
    assert all(r["val"] > 0 and r["steps"] == 12 for r in runs)
    assert "| quick-a | 10,800 |" in done.stdout  # the table, with the training split's size


@pytest.mark.hw
def test_gpu_check_dry_run_runs_every_part_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.py --dry-run: the GPU window's script, every part on the CPU at tiny sizes; its speed
    rows in bf16 too where the CPU has native bf16."""
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [PYTHON, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(out.read_text())
    parts = report["parts"]
    assert list(parts) == ["machine", "tests", "sampling", "ddp", "speed", "quality"]
    assert done.returncode == 0, {name: p["error"] for name, p in parts.items()}
    assert parts["tests"]["result"]["passed"] >= 1 and parts["tests"]["result"]["failed"] == 0
    assert parts["sampling"]["result"]["all_same_text"] is True
    assert parts["ddp"]["result"]["steps"] == 4
    measured = {r["precision"] for r in parts["speed"]["result"]["rows"] if "ratio" in r}
    assert measured == ({"bf16", "fp32"} if native_bf16_cpu() else {"fp32"})
    assert parts["machine"]["result"]["native_bf16"] == native_bf16_cpu()
    assert parts["quality"]["result"]["val_nats_per_char"] > 0
    table = done.stdout[done.stdout.index("gpu_check (dry-run)") :]
    assert all(name in table for name in parts) and "charnn c/s" in table
