"""The CLI end to end on a tiny corpus, and its one-line errors; on a terminal, sampled control characters
are escaped unless --raw."""

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from charnn.config import DataConfig
from charnn.data import Vocab
from charnn.model import CharRNN
from charnn.store.checkpoint import model_bytes
from tests.conftest import PYTHON, REPO, SMALL_MODEL, TINY_FLAGS, cli_env, invoke, one_error_line

TINY = [
    *TINY_FLAGS,
    "--max-iters",
    "12",
    "--eval-every",
    "6",
    "--sample-every",
    "6",
    "--sample-length",
    "10",
    "--quiet",
    "--device",
    "cpu",
]


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
    from charnn.store.rundir import load_run

    run = tmp_path / "run"
    no_embed = [a for i, a in enumerate(TINY) if a != "--embed" and TINY[i - 1] != "--embed"]
    res = invoke(
        "train", tiny_corpus, "--out", run, *no_embed, "--tie-weights", "--layer-norm", "--locked-dropout", "0.25"
    )
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


@pytest.mark.parametrize(
    "args, needle",
    [
        (["sample", "/nonexistent/run"], "no such run"),
        (["sample", "RUN", "--temperature", "0"], "--temperature"),
        (["sample", "RUN", "--top-k", "abc"], "--top-k"),
        (["sample", "RUN", "--prime", "Zq"], "not in this model's vocabulary"),
        (["sample", "RUN", "--bogus"], "--bogus"),
        (["sample", "RUN", "--precision", "fp16"], "--precision"),
        (["train", "CORPUS", "--model", "transformer"], "--model"),
        (["train", "CORPUS", "--dropout", "2"], "--dropout"),
        (["train", "CORPUS", "--patience", "-1"], "--patience must be at least 0"),
        (["train", "CORPUS", "--patience", "2", "--val-frac", "0"], "--patience needs a validation split"),
        (["train", "CORPUS", "--locked-dropout", "0.95"], "--locked-dropout must be at most 0.9"),
        (
            ["train", "CORPUS", "--tie-weights", "--embed", "8", "--hidden", "16"],
            "--tie-weights needs --embed equal to --hidden (--embed 8, --hidden 16)",
        ),
        (["train", "CORPUS", "--seq-len", "100000"], "--seq-len"),
        (["train", "CORPUS", "--device", "cuda:7"], "cuda"),
        (["train"], "missing CORPUS"),
        (["eval", "RUN", "/nonexistent.txt"], "no such file"),
    ],
)
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
    assert res.exit_code == 2 and "cannot write the run directory at" in res.stderr  # a path mistake, not a full disk
    assert "Traceback" not in res.output


def help_of(*args, width=200):
    from charnn.cli.docs import help_text

    return help_text(args, width=width)


def test_docs_cli_md_is_generated_from_the_help():
    from charnn.cli.docs import render

    assert (REPO / "docs" / "cli.md").read_text(encoding="utf-8") == render(), (
        "docs/cli.md is stale: run python3 -m charnn.cli.docs"
    )


def test_help_is_short_grouped_and_uppercase():
    train = help_of("train", width=80)
    assert len(train.splitlines()) <= 125  # about two screens of an 80 x 60 terminal
    for panel in ("Run", "Model", "Optimisation", "Stopping", "Evaluation & output", "Data", "Hardware"):
        assert f"─ {panel} ─" in train
    for args in [("train",), ("sample",), ("eval",), ("report",)]:
        text = help_of(*args)
        assert "Examples:" in text and text.count(f"\n charnn {args[0]} ") == 3, args
        assert not re.search(r"\[(?!required)[a-z]+\]|\{[a-z]+\}|<[a-z]", text), args  # [corpus], {run}, <list
        assert "(default:" not in text  # one notation: [default: X]
    assert "Usage: charnn eval [OPTIONS] RUN [FILE]..." in help_of("eval")


def test_every_command_defaults_to_the_same_device():
    for command in ("train", "sample", "eval"):
        assert re.search(
            r"--device +DEVICE +Where to run: auto, cpu, cuda, cuda:N or mps\. \[default: auto\]", help_of(command)
        ), command


def test_options_come_from_the_config_fields():
    """Each config field with a help panel is an option, with the field's help; one more field, one more option."""
    import dataclasses

    from charnn.cli.options import config_options
    from charnn.config import DataConfig, ModelConfig, SampleConfig, TrainConfig, opt
    from charnn.store.corpus_cache import DEFAULT_CACHE_DIR

    train, sample = help_of("train"), help_of("sample")
    for cls, text in ((ModelConfig, train), (TrainConfig, train), (DataConfig, train), (SampleConfig, sample)):
        for f in dataclasses.fields(cls):
            if f.metadata["panel"]:
                flag = (f.metadata["flags"] or ["--" + f.name.replace("_", "-")])[0].split("/")[0]
                assert re.search(rf"{flag}\b.*{re.escape(f.metadata['help'][:20])}", text), f.name
    assert f"[default: {DEFAULT_CACHE_DIR}]" in train
    assert "--max-bad-steps" not in train  # a field without a panel is the library's only

    @dataclasses.dataclass(frozen=True)
    class Extra:
        knob: int = opt(3, "A knob.", min=1, panel="Model")
        hidden_knob: int = opt(4, "Not on the command line.")

    [param] = config_options(Extra)
    assert param.name == "knob" and param.default == 3
    [param] = config_options(Extra, planned=True)
    assert param.default is None  # under the plan, None means "not given"


def test_planned_options_show_the_plan_as_their_default():
    from charnn.training.plan import PLANNED

    train = help_of("train")
    assert re.search(r"--hidden +INT +Hidden units per layer\. \[default: plan\]", train)
    assert re.search(r"--layer-norm +--no-layer-norm .*\[default: plan\]", train)
    assert train.count("[default: plan]") == len(PLANNED)


def test_plan_json_prints_the_plan_as_one_json_object(tmp_path, monkeypatch):
    from tests.conftest import TINY_TEXT

    corpus = tmp_path / "notes.txt"
    corpus.write_text(TINY_TEXT * 20, encoding="utf-8")
    monkeypatch.setenv("CHARNN_STEP_SECONDS", "0.05")  # given, not measured: the same figures on every machine
    shown = invoke("train", corpus, "--plan", "--dropout", "0.2")
    result = invoke("train", corpus, "--plan", "--json", "--dropout", "0.2")
    assert result.exit_code == 0 and shown.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1 and not result.stderr
    plan = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert plan["lines"] == shown.stdout.splitlines()
    assert plan["model"]["dropout"] == 0.2 and plan["model"]["hidden"] == 256
    assert plan["schedule"]["steps"] == plan["stopping"]["max_iters"] and plan["cadence"]["eval_every"] >= 1
    assert plan["measured_step_seconds"] == 0.05 and plan["capped"] is False
    assert plan["estimated_seconds"] > plan["schedule"]["steps"] * 0.05
    assert any(line.startswith("about ") and "(measured 50 ms a step)" in line for line in plan["lines"])
    assert not (tmp_path / "checkpoints").exists()


def test_plan_json_without_a_measured_speed_has_nulls(tiny_corpus):
    result = invoke("train", tiny_corpus, "--plan", "--json")  # the tests' CHARNN_STEP_SECONDS=0: not measured
    plan = json.loads(result.stdout)
    assert plan["estimated_seconds"] is None and plan["measured_step_seconds"] is None and plan["capped"] is False


def test_plan_json_is_for_the_plan_alone(tiny_corpus):
    line = one_error_line(invoke("train", tiny_corpus, "--json"))
    assert line == "error: --json prints the plan: give --plan too"


# --- sampled text on a terminal ------------------------------------------------------------------------


def _tty_sample(args: list[str]) -> bytes:
    """Run `charnn sample` in-process with stdout on a pseudo-terminal; returns what the terminal got."""
    from charnn.cli.commands import app

    master, slave = pty.openpty()
    import termios

    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.OPOST  # no \n -> \r\n: read back exactly what was written
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    old = sys.stdout
    sys.stdout = open(slave, "w", encoding="utf-8", closefd=False)
    try:
        assert sys.stdout.isatty()
        code = app(["sample", *args], standalone_mode=False)
        sys.stdout.flush()
    finally:
        sys.stdout.close()
        sys.stdout = old
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert code in (0, None)
    return out


def test_control_characters_escaped_on_a_terminal_unless_raw(tmp_path: Path):
    vocab = Vocab((9, 10, 27, 97))  # tab, newline, ESC, 'a'
    model = CharRNN(SMALL_MODEL, len(vocab))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, 0.0, 3.0, 1.0]))  # mostly ESC
    path = tmp_path / "step-00000001.safetensors"
    path.write_bytes(model_bytes(model, vocab, DataConfig(), step=1, val_loss=None, corpus_sha256=""))
    escaped = _tty_sample([str(path), "--length", "40", "--seed", "3"])
    assert b"\x1b" not in escaped and b"\\x1b" in escaped
    raw = _tty_sample([str(path), "--length", "40", "--seed", "3", "--raw"])
    assert raw.count(b"\x1b") == escaped.count(b"\\x1b") > 0
    assert raw.replace(b"\x1b", b"\\x1b") == escaped  # only the control characters differ; \n and \t pass
    res = invoke("sample", str(path), "--length", "40", "--seed", "3")  # not a terminal: bytes as they are
    assert res.stdout.encode() == raw
