"""Shared fixtures and helpers: tiny corpora and tiny trained runs, all under tmp_path, CPU only; the CLI run
in-process and its one-line errors. Test files import helpers as `from tests.conftest import ...`."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

# Deterministic cuBLAS workspaces on the GPU machine (nn.LSTM's docs: cuDNN RNNs are otherwise not bitwise
# reproducible, and the resume test compares runs); read when CUDA starts, so set before any test runs.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
# The plan measures the device's speed before a run (about 2 s); tests skip that (0: no estimate, no time cap),
# and those of the estimate give a step time. Set here so that the CLI run in a subprocess skips it too.
os.environ.setdefault("CHARNN_STEP_SECONDS", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

from charnn.config import DataConfig, ModelConfig, TrainConfig

torch.set_num_threads(1)  # tiny models: threads only add contention

REPO = Path(__file__).resolve().parents[1]
# Where the `device`-marked tests run: the CPU, unless CHARNN_TEST_DEVICE names another device (cuda on the GPU
# machine: benchmarks/gpu_check.py sets it).
TEST_DEVICE = os.environ.get("CHARNN_TEST_DEVICE", "cpu")
TINY_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\n"
) * 20
PYTHON = sys.executable


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(TINY_TEXT, encoding="utf-8")
    return path


def tiny_configs(**train_overrides) -> tuple[ModelConfig, TrainConfig, DataConfig]:
    model = ModelConfig(model="lstm", layers=2, hidden=32, embed=16)
    train = dict(
        batch_size=4,
        seq_len=16,
        lr=1e-2,
        warmup_iters=0,
        max_iters=20,
        eval_every=10,
        sample_every=10,
        sample_length=20,
        log_every=5,
        device="cpu",
        seed=7,
    )
    train.update(train_overrides)
    return model, TrainConfig(**train), DataConfig()


def straight_and_resumed(tmp_path: Path, corpus: Path, **train_overrides) -> tuple[Path, Path]:
    """The same 12-step run twice: straight through into tmp_path/a, and stopped after 7 steps, then resumed, into
    tmp_path/b (evaluations at 6 and 12). Returns the two run directories."""
    import dataclasses

    from charnn.training.train import train

    model_cfg, cfg, data = tiny_configs(max_iters=12, min_lr=1e-2, eval_every=6, sample_length=0, **train_overrides)
    straight = train(corpus, model_cfg=model_cfg, train_cfg=cfg, data_cfg=data, out_dir=tmp_path / "a")
    first = dataclasses.replace(cfg, max_iters=7)
    train(corpus, model_cfg=model_cfg, train_cfg=first, data_cfg=data, out_dir=tmp_path / "b")
    resumed = train(corpus, model_cfg=model_cfg, train_cfg=cfg, data_cfg=data, out_dir=tmp_path / "b", resume=True)
    assert resumed.steps == straight.steps == 12
    return tmp_path / "a", tmp_path / "b"


@pytest.fixture
def tiny_run(tmp_path: Path, tiny_corpus: Path) -> Path:
    """A finished 20-step run directory on the tiny corpus."""
    from charnn.training.train import train

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


# --- a smaller run, trained once and copied per test ---------------------------------------------------

SMALL_MODEL = ModelConfig(model="lstm", layers=1, hidden=16, embed=8)
# the same model and a tiny batch as `charnn train` flags; each test adds its own schedule
TINY_FLAGS = ["--layers", "1", "--hidden", "16", "--embed", "8", "--batch-size", "4", "--seq-len", "16"]


def small_train(**over) -> TrainConfig:
    cfg = dict(
        batch_size=4,
        seq_len=16,
        lr=1e-2,
        warmup_iters=0,
        max_iters=20,
        eval_every=10,
        sample_every=None,
        sample_length=0,
        log_every=1,
        device="cpu",
        seed=7,
        threads=1,
    )
    cfg.update(over)
    return TrainConfig(**cfg)


@pytest.fixture(scope="session")
def base_run(tmp_path_factory) -> Path:
    """One finished 20-step run (checkpoints at 10 and 20), trained once per session; copy it before changing it."""
    from charnn.training.train import train

    root = tmp_path_factory.mktemp("base")
    corpus = root / "tiny.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    train(corpus, model_cfg=SMALL_MODEL, train_cfg=small_train(), data_cfg=DataConfig(), out_dir=root / "run")
    return root / "run"


@pytest.fixture
def run_dir(base_run: Path, tmp_path: Path) -> Path:
    """A copy of `base_run` this test may change."""
    dst = tmp_path / "run"
    shutil.copytree(base_run, dst)
    return dst


def corpus_of(run: Path) -> Path:
    return Path(json.loads((run / "config.json").read_text())["corpus"]["path"])


def snapshot(run: Path) -> dict[str, str]:
    """name -> sha256 of every checkpoint file in a run directory."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.iterdir())
        if ".safetensors" in p.name or p.name.endswith(".pt")
    }


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a model file."""
    from charnn.store.checkpoint import load_model

    return load_model(path).model.state_dict()


def flip_data_byte(path: Path, where: float = 0.5) -> None:
    """Flip one bit of a model file's tensor data, `where` of the way through it."""
    from charnn.store.checkpoint import read_header

    _, _, start, size = read_header(path)
    blob = bytearray(path.read_bytes())
    blob[start + int((size - start) * where)] ^= 0x01
    path.write_bytes(bytes(blob))


def torch_save_bytes(obj) -> bytes:
    """What torch.save writes for `obj`: a pickle, which loading must never unpickle."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# --- the CLI -------------------------------------------------------------------------------------------


def exit_code_in_child(body) -> int:
    """Run `body()` in a forked child, so that signals it sends itself touch only it; the code the child exits
    with: what `body` returns, or the code a handler ends it with first (1 if it raised)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        code = 1
        try:
            code = body()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def invoke(*args):
    """Run the CLI in-process on a wide terminal (Rich does not wrap); stdout and stderr apart."""
    from typer.testing import CliRunner

    from charnn.cli.commands import app

    return CliRunner().invoke(app, list(map(str, args)), env={"COLUMNS": "200"})


def one_error_line(result, code: int | None = 2, *, alone: bool = True) -> str:
    """The single `error: ...` line, last on stderr, with exit `code` (None: any); `alone`: nothing else on
    stderr (training's progress lines may precede it)."""
    if code is not None:
        assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert not alone or len(lines) == 1, result.stderr
    return errors[0]


def cli_env() -> dict[str, str]:
    """Environment for running `python -m charnn` in a subprocess from the repo."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "200"
    return env
