"""Smoke test of benchmarks/: each script runs with --quick and prints its fields; no timing asserted."""

from __future__ import annotations

import json
import subprocess
from importlib.util import find_spec

import pytest
import torch
from conftest import PYTHON, REPO, cli_env

SERVE = all(find_spec(name) for name in ("fastapi", "uvicorn", "httpx"))
FIELDS = {
    "train_speed.py": {"charnn_chars_per_s", "bare_chars_per_s", "ratio_loop", "ratio_amortised",
                       "peak_rss_mb_charnn", "peak_rss_mb_plain", "rss_ratio"},
    "sample_speed.py": {"one_stream_chars_per_s", "one_stream_plain_chars_per_s", "one_stream_ratio",
                        "many_streams_chars_per_s", "many_streams_plain_chars_per_s", "many_streams_ratio",
                        "many_streams_bf16_chars_per_s",
                        "fast_and_module_same_text"},
    "eval_speed.py": {"charnn_chars_per_s", "bare_chars_per_s", "ratio", "cli_eval_seconds"},
    "step_speed.py": {"rows", "median_ratio"},
    "serve_load.py": {"loads", "bare_stepper_chars_per_s", "server_vs_bare_ratio", "one_at_a_time_chars_per_s",
                      "batched_vs_one_at_a_time", "rss_mb_before", "rss_mb_after", "requests_all_complete"},
}


@pytest.mark.parametrize("script", sorted(FIELDS))
def test_benchmark_runs_quick_and_prints_its_fields(script):
    if script == "serve_load.py" and not SERVE:
        pytest.skip("needs fastapi, uvicorn and httpx")
    done = subprocess.run([PYTHON, str(REPO / "benchmarks" / script), "--quick"], env=cli_env(),
                          capture_output=True, text=True, timeout=600)
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
    done = subprocess.run([PYTHON, str(REPO / "benchmarks" / script), "--help"], env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--quick" in done.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_sampling_gives_the_eager_fast_path_text(kind, precision):
    from charnn import sample
    from charnn.config import ModelConfig, SampleConfig
    from charnn.data import Vocab
    from charnn.model import CharRNN
    from charnn.stepper import Tuning

    vocab = Vocab(tuple(map(ord, "\n abcdefgh")))
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(model=kind, layers=2, hidden=16, embed=8), len(vocab)).cuda()
    for cfg in (SampleConfig(length=300, seed=3, temperature=1.0, prime="abc", num_samples=3, precision=precision),
                SampleConfig(length=50, seed=1, top_k=3, precision=precision),
                SampleConfig(length=50, greedy=True, precision=precision)):
        graphed = sample.sample_text(model, vocab, cfg)
        assert graphed == sample.sample_text(model, vocab, cfg, tuning=Tuning(cuda_graphs=False))


def _json_rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_quality_benchmark_quick_compares_with_the_baseline():
    done = subprocess.run([PYTHON, str(REPO / "benchmarks" / "quality.py"), "--quick"], env=cli_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _json_rows(done.stdout)
    tools = {r["tool"] for r in rows}
    assert "charnn" in tools
    if (REPO.parent / "shared" / "bench" / "ref_lstm.py").exists():
        assert "ref_lstm" in tools and "vs ref" in done.stdout
    ours = next(r for r in rows if r["tool"] == "charnn")
    assert {"val_nats", "val_bpc", "prose_nats", "prose_bpc", "sample", "params"} <= set(ours)


def test_gpu_grid_quick_runs_on_the_cpu():
    done = subprocess.run([PYTHON, str(REPO / "benchmarks" / "gpu_grid.py"), "--device", "cpu", "--quick"],
                          env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _json_rows(done.stdout)[1:]
    assert len(rows) == 2
    assert all({"charnn_ms_per_iter", "bare_ms_per_iter", "ratio", "charnn_peak_mb"} <= set(r) for r in rows)
