"""The run directory: saving keeps the last checkpoints plus the best (a NaN validation loss is never the best),
prunes only once the new file is durable, and never writes non-finite weights; resuming falls back past a
corrupt newest checkpoint or training state to the previous good one. Each test was checked once to fail with
its requirement broken."""

import math
import os
from pathlib import Path

import pytest
import torch

from charnn.config import DataConfig, ModelConfig
from charnn.data import Vocab
from charnn.errors import CharnnWarning, CheckpointError, CheckpointWriteError
from charnn.model import CharRNN
from charnn.store.checkpoint import load_model
from charnn.store.rundir import save_checkpoint
from charnn.training.train import train
from tests.conftest import SMALL_MODEL, corpus_of, flip_data_byte, small_train, snapshot


def test_keep_last_two_plus_best_never_nan(tmp_path: Path):
    vocab = Vocab((97, 98))
    model = CharRNN(ModelConfig(model="gru", layers=1, hidden=4, embed=2), len(vocab))
    expected = [{1}, {1, 2}, {2, 3}, {3, 4}, {3, 4, 5}, {5, 6}]
    for step, (val, keep) in enumerate(zip([math.nan, 3, 2, 5, 4, 1], expected, strict=True), start=1):
        save_checkpoint(
            tmp_path,
            model,
            vocab,
            DataConfig(),
            step=step,
            val_loss=val,
            corpus_sha256="",
            state={"step": step},
            keep_last=2,
        )
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == sorted(
            [f"step-{s:08d}.safetensors" for s in keep] + [f"step-{s:08d}.state.pt" for s in keep]
        ), f"after step {step}"


def test_failed_save_prunes_nothing(tmp_path: Path, monkeypatch):
    """Pruning happens only after the new file is durable: a failed write removes no older checkpoint."""
    vocab = Vocab((97, 98))
    model = CharRNN(ModelConfig(model="gru", layers=1, hidden=4, embed=2), len(vocab))
    for step in (1, 2):
        save_checkpoint(
            tmp_path,
            model,
            vocab,
            DataConfig(),
            step=step,
            val_loss=None,
            corpus_sha256="",
            state={"step": step},
            keep_last=1,
        )
    before = snapshot(tmp_path)
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("00000003.safetensors"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(CheckpointWriteError, match=r"checkpoint write failed \(disk full\?\)"):
        save_checkpoint(
            tmp_path,
            model,
            vocab,
            DataConfig(),
            step=3,
            val_loss=None,
            corpus_sha256="",
            state={"step": 3},
            keep_last=1,
        )
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if "00000003" not in k} == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_non_finite_parameters_are_never_saved(tmp_path: Path):
    vocab = Vocab((97, 98))
    model = CharRNN(ModelConfig(model="gru", layers=1, hidden=4, embed=2), len(vocab))
    with torch.no_grad():
        model.head.weight[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match="non-finite"):
        save_checkpoint(
            tmp_path,
            model,
            vocab,
            DataConfig(),
            step=1,
            val_loss=None,
            corpus_sha256="",
            state={"step": 1},
            keep_last=2,
        )
    assert list(tmp_path.iterdir()) == []


def test_resume_falls_back_when_newest_checkpoint_is_corrupt(run_dir: Path):
    newest = run_dir / "step-00000020.safetensors"
    flip_data_byte(newest)
    stale = run_dir / ".step-00000030.safetensors.999.tmp"
    stale.write_bytes(b"half a checkpoint")
    events = []
    with pytest.warns(CharnnWarning, match="checksum mismatch.*falling back"):
        result = train(
            corpus_of(run_dir),
            model_cfg=SMALL_MODEL,
            train_cfg=small_train(max_iters=22),
            out_dir=run_dir,
            resume=True,
            on_progress=events.append,
        )
    start = next(e for e in events if e.kind == "start")
    assert start.step == 10  # continued from the previous good checkpoint
    assert result.steps == 22 and not stale.exists()
    load_model(run_dir / "step-00000020.safetensors")  # rewritten by the resumed run


def test_resume_falls_back_when_newest_state_is_corrupt(run_dir: Path):
    state = run_dir / "step-00000020.state.pt"
    blob = bytearray(state.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    state.write_bytes(bytes(blob))
    events = []
    with pytest.warns(CharnnWarning, match="training state"):
        train(
            corpus_of(run_dir),
            model_cfg=SMALL_MODEL,
            train_cfg=small_train(max_iters=21),
            out_dir=run_dir,
            resume=True,
            on_progress=events.append,
        )
    assert next(e for e in events if e.kind == "start").step == 10
