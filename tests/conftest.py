"""Shared fixtures: tiny corpora and tiny trained runs, all under tmp_path, CPU only."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Deterministic cuBLAS workspaces on the GPU machine (nn.LSTM's docs: cuDNN RNNs are otherwise not bitwise
# reproducible, and the resume test compares runs); read when CUDA starts, so set before any test runs.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest  # noqa: E402
import torch  # noqa: E402

from charnn.config import DataConfig, ModelConfig, TrainConfig

torch.set_num_threads(1)  # tiny models: threads only add contention

REPO = Path(__file__).resolve().parents[1]
# Where the `device`-marked tests run: the CPU, unless CHARNN_TEST_DEVICE names another device (cuda on the GPU
# machine: benchmarks/gpu_check.py sets it).
TEST_DEVICE = os.environ.get("CHARNN_TEST_DEVICE", "cpu")
TINY_TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
             "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 20


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(TINY_TEXT, encoding="utf-8")
    return path


def tiny_configs(**train_overrides) -> tuple[ModelConfig, TrainConfig, DataConfig]:
    model = ModelConfig(model="lstm", layers=2, hidden=32, embed=16)
    train = dict(batch_size=4, seq_len=16, lr=1e-2, warmup_iters=0, max_iters=20, eval_every=10,
                 sample_every=10, sample_length=20, log_every=5, device="cpu", seed=7)
    train.update(train_overrides)
    return model, TrainConfig(**train), DataConfig()


@pytest.fixture
def tiny_run(tmp_path: Path, tiny_corpus: Path) -> Path:
    """A finished 20-step run directory on the tiny corpus."""
    from charnn.train import train

    model, cfg, data = tiny_configs()
    out = tmp_path / "run"
    train(tiny_corpus, model_cfg=model, train_cfg=cfg, data_cfg=data, out_dir=out)
    return out


@pytest.fixture
def device() -> str:
    """CHARNN_TEST_DEVICE (default cpu); the test skips when that device is not here."""
    if TEST_DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip(f"CHARNN_TEST_DEVICE={TEST_DEVICE}, but there is no CUDA here")
    return TEST_DEVICE


def cli_env() -> dict[str, str]:
    """Environment for running `python -m charnn` in a subprocess from the repo."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "200"
    return env


PYTHON = sys.executable
