"""The CLI end to end on a tiny corpus, and its one-line errors."""

import json
import subprocess

import pytest
from typer.testing import CliRunner

from charnn.cli import app
from tests.conftest import PYTHON, cli_env

runner = CliRunner()
TINY = ["--layers", "1", "--hidden", "16", "--embed", "8", "--batch-size", "4", "--seq-len", "16",
        "--max-iters", "12", "--eval-every", "6", "--sample-every", "6", "--sample-length", "10", "--quiet",
        "--device", "cpu"]


def invoke(*args):
    return runner.invoke(app, list(map(str, args)), env={"COLUMNS": "200"})


def test_train_sample_eval_end_to_end(tmp_path, tiny_corpus):
    run = tmp_path / "run"
    res = invoke("train", tiny_corpus, "--out", run, *TINY)
    assert res.exit_code == 0, res.output
    assert (run / "step-00000012.safetensors").exists()

    res = invoke("sample", run, "--prime", "First", "--length", "40", "--seed", "3")
    assert res.exit_code == 0
    assert res.stdout.startswith("First") and len(res.stdout) == len("First") + 40 + 1  # + final newline
    assert res.stdout == invoke("sample", run, "--prime", "First", "--length", "40", "--seed", "3").stdout

    res = invoke("sample", run, "--length", "10", "--seed", "1", "--num-samples", "3")
    assert res.exit_code == 0 and res.stdout.count("---------------") == 2
    res = invoke("sample", run, "--length", "30", "--seed", "1", "--num-samples", "2", "--precision", "bf16")
    assert res.exit_code == 0 and res.stdout.count("---------------") == 1

    res = invoke("eval", run, "--json")
    row = json.loads(res.stdout)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = min(r["val_loss"] for r in logged if r["kind"] == "eval")
    assert row["file"] == "validation split" and abs(row["nats_per_char"] - best) < 1e-6
    assert abs(row["bits_per_char"] * 0.6931471805599453 - row["nats_per_char"]) < 1e-9

    res = invoke("eval", run, tiny_corpus)
    assert res.exit_code == 0 and "bits/char" in res.stdout and "perplexity" in res.stdout


def test_resume_continues_a_run(tmp_path, tiny_corpus):
    run = tmp_path / "run"
    assert invoke("train", tiny_corpus, "--out", run, *TINY).exit_code == 0
    more = [a if a != "12" else "18" for a in TINY]
    res = invoke("train", "--resume", run, *more)
    assert res.exit_code == 0, res.output
    assert (run / "step-00000018.safetensors").exists()


def test_model_options_reach_the_run_and_survive_resume(tmp_path, tiny_corpus):
    from charnn.rundir import load_run

    run = tmp_path / "run"
    no_embed = [a for i, a in enumerate(TINY) if a != "--embed" and TINY[i - 1] != "--embed"]
    res = invoke("train", tiny_corpus, "--out", run, *no_embed, "--tie-weights", "--layer-norm",
                 "--locked-dropout", "0.25")
    assert res.exit_code == 0, res.output
    saved = json.loads((run / "config.json").read_text())["model"]
    assert (saved["tie_weights"], saved["layer_norm"], saved["locked_dropout"]) == (True, True, 0.25)
    assert saved["embed"] == saved["hidden"] == 16  # --tie-weights without --embed takes the hidden size
    loaded = load_run(run)
    assert loaded.model_cfg.tie_weights and loaded.model.head.weight is loaded.model.embed.weight
    assert invoke("eval", run).exit_code == 0
    # Resuming keeps the run's model options without repeating them, and refuses a change.
    assert "cannot change on resume" in one_error_line(invoke("train", "--resume", run, "--no-layer-norm"))
    more = [a if a != "12" else "18" for a in no_embed]
    res = invoke("train", "--resume", run, *more)
    assert res.exit_code == 0, res.output
    assert load_run(run, which="latest").model_cfg == loaded.model_cfg


def one_error_line(res, code=2):
    assert res.exit_code == code, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output
    return lines[0]


@pytest.mark.parametrize("args, needle", [
    (["sample", "/nonexistent/run"], "no such run"),
    (["sample", "RUN", "--temperature", "0"], "--temperature"),
    (["sample", "RUN", "--top-k", "abc"], "--top-k"),
    (["sample", "RUN", "--prime", "Zq"], "not in this model's vocabulary"),
    (["sample", "RUN", "--bogus"], "--bogus"),
    (["sample", "RUN", "--precision", "fp16"], "--precision"),
    (["train", "CORPUS", "--model", "transformer"], "--model"),
    (["train", "CORPUS", "--dropout", "2"], "--dropout"),
    (["train", "CORPUS", "--patience", "0"], "--patience must be at least 1"),
    (["train", "CORPUS", "--patience", "2", "--val-frac", "0"], "--patience needs a validation split"),
    (["train", "CORPUS", "--locked-dropout", "0.95"], "--locked-dropout must be at most 0.9"),
    (["train", "CORPUS", "--tie-weights", "--embed", "8", "--hidden", "16"],
     "--tie-weights needs --embed equal to --hidden (--embed 8, --hidden 16)"),
    (["train", "CORPUS", "--seq-len", "100000"], "--seq-len"),
    (["train", "CORPUS", "--device", "cuda:7"], "cuda"),
    (["train"], "missing CORPUS"),
    (["eval", "RUN", "/nonexistent.txt"], "no such file"),
])
def test_bad_inputs_give_one_line_and_exit_2(tiny_run, tiny_corpus, args, needle):
    args = [str(tiny_run) if a == "RUN" else str(tiny_corpus) if a == "CORPUS" else a for a in args]
    assert needle in one_error_line(invoke(*args))


def test_existing_run_is_never_overwritten(tiny_run, tiny_corpus):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_run.iterdir()}
    assert "already holds a run" in one_error_line(invoke("train", tiny_corpus, "--out", tiny_run, *TINY))
    assert before == {p.name: p.stat().st_mtime_ns for p in tiny_run.iterdir()}


def test_python_dash_m_and_version():
    out = subprocess.run([PYTHON, "-m", "charnn", "--version"], capture_output=True, text=True, env=cli_env())
    assert out.returncode == 0 and out.stdout.startswith("charnn ")
    out = subprocess.run([PYTHON, "-m", "charnn", "sample", "--help"], capture_output=True, text=True, env=cli_env())
    assert out.returncode == 0 and "--temperature" in out.stdout


def test_out_that_is_a_file_or_cannot_be_created(tmp_path, tiny_corpus):
    a_file = tmp_path / "file"
    a_file.write_text("precious")
    assert "is a file" in one_error_line(invoke("train", tiny_corpus, "--out", a_file, *TINY))
    assert a_file.read_text() == "precious"
    res = invoke("train", tiny_corpus, "--out", a_file / "sub", *TINY)
    assert res.exit_code == 4 and "cannot create the run directory" in res.stderr
    assert "Traceback" not in res.output
