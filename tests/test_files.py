"""Durable writes: a process killed at any moment of a checkpoint save leaves the newest complete checkpoint
loadable (and the temp files it left are cleaned up); a write refused by the file system (disk full, file too
large) leaves the previous checkpoint intact and no temp file. Each test was checked once to fail with its
requirement broken."""

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

import charnn.store.rundir as rundir
from charnn.config import DataConfig, ModelConfig
from charnn.data import Vocab
from charnn.model import CharRNN
from charnn.store.checkpoint import load_model
from charnn.store.files import remove_stale_temps
from charnn.store.rundir import save_checkpoint
from charnn.store.trainstate import load_state
from tests.conftest import PYTHON, cli_env, snapshot

DURABLE_MODEL = ModelConfig(model="lstm", layers=2, hidden=128, embed=8)  # ~1 MB per file: writes take a while


def _save_loop(run: Path) -> None:
    """The child: train-like saves forever, each with different weights and state."""
    torch.manual_seed(os.getpid())
    vocab = Vocab(tuple(range(97, 105)))
    model = CharRNN(DURABLE_MODEL, len(vocab))
    step = 0
    while True:
        step += 1
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)
        state = {
            "step": step,
            "elapsed": 0.0,
            "optimizer": {"state": {0: {"m": torch.randn(200_000)}}, "param_groups": []},
            "rng": {"python": [3, [0] * 625, None], "torch": torch.get_rng_state()},
        }
        save_checkpoint(
            run, model, vocab, DataConfig(), step=step, val_loss=1.0 / step, corpus_sha256="x", state=state, keep_last=2
        )


def _mid_write(run: Path, full: dict[str, int]) -> bool:
    """True while some file is visibly being written: a temp file exists, or a file is shorter than usual."""
    for p in run.iterdir():
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            continue
        kind = "tmp" if p.name.endswith(".tmp") else p.suffix
        if kind == "tmp" or size < 0.9 * full.setdefault(kind, size):
            return True
        full[kind] = max(full[kind], size)
    return False


@pytest.mark.slow
def test_sigkill_during_saves_never_loses_the_latest_checkpoint(tmp_path: Path):
    """A process saving in a loop is SIGKILLed 20 times, at random moments and (every other time) at the moment
    a write is visibly under way; each time the newest checkpoint loads and verifies, model and state."""
    run = tmp_path / "run"
    run.mkdir()
    rng = random.Random(0)
    survived, mid_write_kills, full = 0, 0, {}
    for attempt in range(20):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            try:
                _save_loop(run)
            finally:
                os._exit(0)
        deadline = time.monotonic() + 20
        while not rundir.list_checkpoints(run) and time.monotonic() < deadline:
            time.sleep(0.002)
        if attempt % 2:
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and not _mid_write(run, full):
                pass
            mid_write_kills += time.monotonic() < deadline
        else:
            time.sleep(rng.uniform(0.0, 0.2))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        remove_stale_temps(run)  # what train does at start
        ckpts = rundir.list_checkpoints(run)
        assert ckpts, "no checkpoint at all"
        loaded = load_model(ckpts[-1])
        load_state(ckpts[-1].with_name(ckpts[-1].stem + ".state.pt"), loaded.meta.state_sha256)
        assert not list(run.glob(".*.tmp"))
        for p in ckpts:  # clear the way for the next child, which counts from step 1 again
            p.unlink()
            p.with_name(p.stem + ".state.pt").unlink(missing_ok=True)
        survived += 1
    assert survived == 20
    assert mid_write_kills >= 5  # the adversarial kills did land inside writes


@pytest.mark.slow
def test_file_size_limit_leaves_previous_checkpoint_intact(run_dir: Path):
    """RLIMIT_FSIZE in a subprocess: the save fails with EFBIG, exit 4, old files untouched, no temp left."""
    import resource

    before = snapshot(run_dir)
    limit = max(p.stat().st_size for p in run_dir.iterdir() if p.name.endswith(".jsonl")) + 4096

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [PYTHON, "-m", "charnn", "train", "--resume", str(run_dir), "--max-iters", "21", "--quiet"],
        env=cli_env(),
        capture_output=True,
        text=True,
        preexec_fn=cap,
        timeout=120,
    )
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "checkpoint write failed (disk full?)" in errors[0]
    assert snapshot(run_dir) == before
    assert not list(run_dir.glob(".*.tmp"))
    load_model(run_dir / "step-00000020.safetensors")
