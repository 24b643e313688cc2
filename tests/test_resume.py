"""Resume is exact: a run stopped and resumed (in this process or a new one, or after SIGINT) gives the same
losses and bit-identical weights as one run straight through, and the check is sensitive to the RNG and
optimizer restores. Interrupts: SIGINT/SIGTERM finish the step, save and exit 130/143; a second SIGINT exits at
once. A resume that would change the corpus, vocabulary or model is refused. Each test was checked once to fail
with its requirement broken."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import charnn.store.rundir as rundir
import charnn.training.resume as resume
from charnn.config import DataConfig, ModelConfig, TrainConfig
from charnn.data import encode_file
from charnn.errors import ResumeMismatchError
from charnn.store.checkpoint import load_model
from charnn.training.train import train
from tests.conftest import (
    PYTHON,
    SMALL_MODEL,
    TINY_TEXT,
    cli_env,
    corpus_of,
    exit_code_in_child,
    invoke,
    one_error_line,
    small_train,
    weights_of,
)

setup_mod = sys.modules["charnn.training.setup"]  # where a run builds its optimizer
resume_mod = sys.modules["charnn.training.resume"]

RESUME_MODEL = ModelConfig(model="lstm", layers=2, hidden=16, embed=8, dropout=0.2)  # dropout: RNG matters


def resume_train(**over) -> TrainConfig:
    # A constant learning rate (min_lr == lr, no warmup): the schedule does not depend on max_iters, so a
    # 13-step run continued to 30 follows the same schedule as 30 steps straight.
    return small_train(**{"min_lr": 1e-2, "eval_every": 100, "max_iters": 30} | over)


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in rows if r["kind"] == "train"}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("straight")
    corpus = root / "tiny.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    train(corpus, model_cfg=RESUME_MODEL, train_cfg=resume_train(), out_dir=root / "run")
    return root / "run"


def _split_run_in_process(tmp_path: Path, straight: Path) -> Path:
    corpus = corpus_of(straight)
    run = tmp_path / "split"
    train(corpus, model_cfg=RESUME_MODEL, train_cfg=resume_train(max_iters=13), out_dir=run)
    train(corpus, model_cfg=RESUME_MODEL, train_cfg=resume_train(max_iters=30), out_dir=run, resume=True)
    return run


def _same_run(a: Path, b: Path) -> bool:
    pa, pb = weights_of(a / "step-00000030.safetensors"), weights_of(b / "step-00000030.safetensors")
    return _losses(a) == _losses(b) and all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.mark.slow
def test_resume_in_a_new_process_is_bit_exact(straight_run: Path, tmp_path: Path):
    """30 steps straight == 13 steps, then `charnn train --resume` in a new process for 17 more."""
    corpus = corpus_of(straight_run)
    run = tmp_path / "split"
    train(corpus, model_cfg=RESUME_MODEL, train_cfg=resume_train(max_iters=13), out_dir=run)
    assert max(_losses(run)) == 13
    proc = subprocess.run(
        [PYTHON, "-m", "charnn", "train", "--resume", str(run), "--max-iters", "30", "--quiet"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    losses = _losses(run)
    assert sorted(losses) == list(range(1, 31))
    assert losses == _losses(straight_run)  # exact float equality, every step
    a, b = weights_of(run / "step-00000030.safetensors"), weights_of(straight_run / "step-00000030.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_in_process_is_bit_exact(straight_run: Path, tmp_path: Path):
    assert _same_run(_split_run_in_process(tmp_path, straight_run), straight_run)


def test_dropping_rng_restore_breaks_exact_resume(straight_run: Path, tmp_path: Path, monkeypatch):
    """The resume test is sensitive: without the RNG restore (dropout draws differ) it fails."""
    monkeypatch.setattr(resume_mod, "set_rng_state", lambda state: None)
    assert not _same_run(_split_run_in_process(tmp_path, straight_run), straight_run)


def test_dropping_optimizer_restore_breaks_exact_resume(straight_run: Path, tmp_path: Path, monkeypatch):
    real = setup_mod.make_optimizer

    def fresh_optimizer(*a, **k):
        opt = real(*a, **k)
        opt.load_state_dict = lambda state: None
        return opt

    monkeypatch.setattr(setup_mod, "make_optimizer", fresh_optimizer)
    assert not _same_run(_split_run_in_process(tmp_path, straight_run), straight_run)


@pytest.mark.slow
def test_sigint_then_resume_equals_uninterrupted(straight_run: Path, tmp_path: Path):
    """SIGINT mid-run: the step finishes, a checkpoint is saved, exit 130; resuming reaches the same weights."""
    corpus = corpus_of(straight_run)
    run = tmp_path / "interrupted"
    args = [
        PYTHON,
        "-m",
        "charnn",
        "train",
        str(corpus),
        "--out",
        str(run),
        "--model",
        "lstm",
        "--layers",
        "2",
        "--hidden",
        "16",
        "--embed",
        "8",
        "--dropout",
        "0.2",
        "--no-layer-norm",
        "--weight-decay",
        "0",
        "--batch-size",
        "4",
        "--seq-len",
        "16",
        "--lr",
        "0.01",
        "--min-lr",
        "0.01",
        "--warmup-iters",
        "0",
        "--eval-every",
        "100",
        "--sample-length",
        "0",
        "--log-every",
        "1",
        "--seed",
        "7",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--quiet",
    ]
    proc = subprocess.Popen([*args, "--max-iters", "100000"], env=cli_env(), stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: interrupted at step")
    stopped = rundir.list_checkpoints(run)[-1]
    k = load_model(stopped).step
    assert k >= 5
    # Resume to k + 8 and compare with an uninterrupted run of k + 8 steps (constant lr: same schedule).
    train(corpus, model_cfg=RESUME_MODEL, train_cfg=resume_train(max_iters=k + 8), out_dir=run, resume=True)
    ref = tmp_path / "ref"
    train(corpus, model_cfg=RESUME_MODEL, train_cfg=resume_train(max_iters=k + 8), out_dir=ref)
    name = f"step-{k + 8:08d}.safetensors"
    a, b = weights_of(run / name), weights_of(ref / name)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert _losses(run) == _losses(ref)


def test_sigterm_flag_saves_and_exits_143(run_dir: Path):
    """The loop polls the flag between steps: the step finishes, a checkpoint is written, then Interrupted."""
    from charnn.errors import Interrupted

    polls = []

    def stop_at_23():
        polls.append(1)
        return signal.SIGTERM if len(polls) > 3 else None

    with pytest.raises(Interrupted) as err:
        train(
            corpus_of(run_dir),
            model_cfg=SMALL_MODEL,
            train_cfg=small_train(max_iters=40),
            out_dir=run_dir,
            resume=True,
            should_stop=stop_at_23,
        )
    assert err.value.exit_code == 143 and "--resume" in str(err.value)
    assert load_model(run_dir / "step-00000023.safetensors").step == 23


def test_second_sigint_exits_at_once():
    """In a forked child: the first SIGINT only sets the flag, the second ends the process with 130."""
    from charnn.cli.commands import _StopFlag

    def interrupt_twice() -> int:
        with _StopFlag() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            if stop() != signal.SIGINT:
                return 2
            os.kill(os.getpid(), signal.SIGINT)  # never returns
            return 3

    assert exit_code_in_child(interrupt_twice) == 130


def test_resume_refuses_changed_corpus_vocab_or_model(run_dir: Path, tmp_path: Path):
    corpus = corpus_of(run_dir)
    changed = tmp_path / "changed.txt"
    changed.write_text(TINY_TEXT + "one more line\n", encoding="utf-8")
    with pytest.raises(ResumeMismatchError, match="corpus differs"):
        train(changed, model_cfg=SMALL_MODEL, train_cfg=small_train(max_iters=30), out_dir=run_dir, resume=True)
    bigger = ModelConfig(model="lstm", layers=1, hidden=32, embed=8)
    with pytest.raises(ResumeMismatchError, match="model config differs"):
        train(corpus, model_cfg=bigger, train_cfg=small_train(max_iters=30), out_dir=run_dir, resume=True)
    # The same bytes read another way give another vocabulary: refused even though the sha256 matches.
    loaded = load_model(run_dir / "step-00000020.safetensors")
    other = encode_file(corpus, DataConfig(bytes_mode=True))
    with pytest.raises(ResumeMismatchError, match="vocabulary"):
        resume.check_same_run(loaded, SMALL_MODEL, other.vocab, loaded.corpus_sha256)
    # Through the CLI: exit 2, one line; training options may change.
    res = invoke("train", "--resume", str(run_dir), "--hidden", "64")
    assert res.exit_code == 2 and "cannot change on resume" in one_error_line(res)
    res = invoke("train", str(changed), "--resume", str(run_dir))
    assert res.exit_code == 2 and "corpus differs" in one_error_line(res)
    res = invoke("train", "--resume", str(run_dir), "--max-iters", "22", "--lr", "0.005", "--quiet")
    assert res.exit_code == 0, res.output
