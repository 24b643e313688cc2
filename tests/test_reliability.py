"""Issue 3, reliability and security: loading never executes code, checkpoints survive crashes, resume is
exact, run-time failures end with their exit code, and text input is read the same way whatever its newlines.

Each test names the requirement it proves; each was checked once to fail with the requirement broken.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import pickle
import pty
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PYTHON, REPO, TINY_TEXT, cli_env
from typer.testing import CliRunner

import charnn.checkpoint as ckpt
import charnn.rundir as rundir
from charnn.checkpoint import load_model, load_state, model_bytes, read_header
from charnn.config import DataConfig, ModelConfig, SampleConfig, TrainConfig
from charnn.data import Vocab, encode_file
from charnn.errors import (
    CharnnWarning,
    CheckpointError,
    CheckpointWriteError,
    DataError,
    ResumeMismatchError,
)
from charnn.evaluate import evaluate_ids
from charnn.files import remove_stale_temps
from charnn.model import CharRNN
from charnn.rundir import save_checkpoint
from charnn.sample import sample_text
from charnn.train import train

train_mod = sys.modules["charnn.train"]  # `charnn.train` the attribute is the function
step_mod = sys.modules["charnn.trainstep"]  # where the training step calls lm_loss

SMALL_MODEL = ModelConfig(model="lstm", layers=1, hidden=16, embed=8)


def small_train(**over) -> TrainConfig:
    cfg = dict(batch_size=4, seq_len=16, lr=1e-2, warmup_iters=0, max_iters=20, eval_every=10,
               sample_every=None, sample_length=0, log_every=1, device="cpu", seed=7, threads=1)
    cfg.update(over)
    return TrainConfig(**cfg)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """One finished 20-step run (checkpoints at 10 and 20), trained once per module; copy it before changing it."""
    root = tmp_path_factory.mktemp("base")
    corpus = root / "tiny.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    train(corpus, model_cfg=SMALL_MODEL, train_cfg=small_train(), data_cfg=DataConfig(), out_dir=root / "run")
    return root / "run"


@pytest.fixture
def run_dir(base_run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(base_run, dst)
    return dst


def corpus_of(run: Path) -> Path:
    return Path(json.loads((run / "config.json").read_text())["corpus"]["path"])


def snapshot(run: Path) -> dict[str, str]:
    """name -> sha256 of every checkpoint file in a run directory."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.iterdir()) if ".safetensors" in p.name or p.name.endswith(".pt")}


def flip_data_byte(path: Path, where: float = 0.5) -> None:
    _, _, start, size = read_header(path)
    blob = bytearray(path.read_bytes())
    blob[start + int((size - start) * where)] ^= 0x01
    path.write_bytes(bytes(blob))


def invoke(*args: str):
    from charnn.cli import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def one_error_line(result, *, alone: bool = True) -> str:
    """The single `error: ...` line; `alone`: nothing else on stderr (training's progress lines may precede it)."""
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert not alone or len(lines) == 1, result.stderr
    return errors[0]


# --- loading never executes code -----------------------------------------------------------------------

def test_sample_and_eval_never_unpickle(run_dir: Path, tmp_path: Path, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("unpickling on a sample/eval path")

    class NoUnpickler:
        def __init__(self, *a, **k):
            refuse()

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", NoUnpickler)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    held_out = tmp_path / "held.txt"
    held_out.write_text(TINY_TEXT[:300], encoding="utf-8")
    res = invoke("sample", str(run_dir), "--length", "20", "--seed", "1", "--prime", "First")
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("First")
    res = invoke("eval", str(run_dir), str(held_out), "--json", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["chars"] == 299


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_pickle_payload_under_checkpoint_name_is_refused(tmp_path: Path, command: str):
    marker = tmp_path / "pwned"
    for name, writer in (("step-00000010.safetensors", pickle.dumps),
                         ("step-00000020.safetensors", lambda obj: _torch_save_bytes({"x": obj}))):
        evil = tmp_path / name
        evil.write_bytes(writer(_Payload(marker)))
        res = invoke(command, str(evil), *(["--length", "5"] if command == "sample" else ["--device", "cpu"]))
        assert res.exit_code == 2
        assert "not a charnn checkpoint" in one_error_line(res)
        assert not marker.exists()


def _torch_save_bytes(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_resume_state_with_payload_is_refused(run_dir: Path, tmp_path: Path):
    """The state file is read with weights_only=True: a payload whose sha256 the attacker also wrote is refused."""
    marker = tmp_path / "pwned"
    for model_path in sorted(run_dir.glob("step-*.safetensors")):
        state_path = model_path.with_name(model_path.stem + ".state.pt")
        blob = _torch_save_bytes({"step": 10, "x": _Payload(marker)})
        state_path.write_bytes(blob)
        _rewrite_meta(model_path, state_sha256=hashlib.sha256(blob).hexdigest())
        with pytest.raises(CheckpointError, match="unreadable training state"):
            load_state(state_path, hashlib.sha256(blob).hexdigest())
    with pytest.warns(CharnnWarning), pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        train(corpus_of(run_dir), model_cfg=SMALL_MODEL, train_cfg=small_train(max_iters=30), out_dir=run_dir,
              resume=True)
    assert not marker.exists()


def _rewrite_meta(path: Path, **changes: str) -> None:
    """Rewrite a model file's metadata (checksums stay those of the unchanged tensors)."""
    from safetensors.torch import load, save

    header, meta, _, _ = read_header(path)
    tensors = load(path.read_bytes())
    meta.update(changes)
    path.write_bytes(save(tensors, metadata=meta))


def test_every_torch_load_is_weights_only():
    """A scan of the package source: each torch.load call passes weights_only=True (no unsafe fallback)."""
    calls = 0
    for source in sorted((REPO / "charnn").rglob("*.py")):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "torch":
                assert all(a.name != "load" for a in node.names), f"{source}: imports torch.load by name"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                base = node.func.value
                if isinstance(base, ast.Name) and base.id == "torch":
                    calls += 1
                    kw = {k.arg: k.value for k in node.keywords}
                    assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
                        f"{source}:{node.lineno}: torch.load without weights_only=True"
    assert calls >= 1  # the resume state is read somewhere: the scan must have seen it


def test_torch_is_recent_enough_for_weights_only():
    major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
    assert (major, minor) >= (2, 10)
    assert '"torch>=2.10"' in (REPO / "pyproject.toml").read_text()


def test_resume_state_holds_only_tensors_and_primitives(run_dir: Path):
    path = sorted(run_dir.glob("*.state.pt"))[-1]
    state = load_state(path)

    def walk(obj, where="state"):
        if isinstance(obj, dict):
            for k, v in obj.items():
                assert isinstance(k, (str, int)), where
                walk(v, f"{where}[{k!r}]")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{where}[{i}]")
        else:
            assert obj is None or isinstance(obj, (torch.Tensor, int, float, str, bool)), \
                f"{where} is a {type(obj).__name__}"

    walk(state)
    assert {"step", "optimizer", "rng", "hidden"} <= set(state)
    assert {"python", "torch"} <= set(state["rng"]) and "numpy" not in state["rng"]


def _crafted_file(path: Path, *, hidden: int, layers: int = 1, embed: int = 8, vocab_size: int = 4) -> None:
    """A small file whose header claims a huge model with consistent shapes (the data is not there)."""
    cfg = {"model": "lstm", "layers": layers, "hidden": hidden, "embed": embed, "dropout": 0.0}
    shapes = {"embed.weight": [vocab_size, embed], "head.weight": [vocab_size, hidden], "head.bias": [vocab_size]}
    for layer in range(layers):
        inp = embed if layer == 0 else hidden
        shapes |= {f"rnn.weight_ih_l{layer}": [4 * hidden, inp], f"rnn.weight_hh_l{layer}": [4 * hidden, hidden],
                   f"rnn.bias_ih_l{layer}": [4 * hidden], f"rnn.bias_hh_l{layer}": [4 * hidden]}
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {
        "format": ckpt.FORMAT, "model_config": json.dumps(cfg), "data_config": json.dumps({}),
        "vocab": Vocab(tuple(range(97, 97 + vocab_size))).to_json(), "step": "1", "val_loss": "none",
        "checksums": json.dumps({k: "0" * 64 for k in shapes}), "corpus_sha256": ""}
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 64)


@pytest.mark.parametrize("hidden,layers", [(2**20, 1), (16384, 16)])
def test_crafted_huge_header_fails_fast_without_allocating(tmp_path: Path, hidden: int, layers: int):
    """2**20 is out of bounds; 16384 x 16 layers is in bounds (137 GB of weights): both fail before allocating."""
    path = tmp_path / "step-00000001.safetensors"
    _crafted_file(path, hidden=hidden, layers=layers, embed=16384 if layers > 1 else 8)
    import resource

    with torch.device("meta"):  # the first meta-device use imports torch's meta kernels (seconds, once)
        CharRNN(SMALL_MODEL, 2)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError):
        load_model(path)
    assert time.perf_counter() - t0 < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 200_000  # < 200 MB more at peak
    assert path.stat().st_size < 20_000


def test_one_flipped_data_byte_is_a_checksum_mismatch(run_dir: Path):
    path = sorted(run_dir.glob("*.safetensors"))[-1]
    load_model(path)
    for where in (0.0, 0.37, 0.999):
        blob = path.read_bytes()
        flip_data_byte(path, where)
        with pytest.raises(CheckpointError, match="checksum mismatch"):
            load_model(path)
        path.write_bytes(blob)
    res = invoke("sample", str(path), "--length", "5")  # the CLI says so too, exit 2
    assert res.exit_code == 0
    flip_data_byte(path)
    res = invoke("sample", str(path), "--length", "5")
    assert res.exit_code == 2 and "checksum mismatch" in one_error_line(res)


def test_non_finite_weights_with_valid_checksums_are_refused(tmp_path: Path):
    """A file that verifies but holds NaN weights would sample garbage (or crash): refused on load."""
    model = CharRNN(SMALL_MODEL, 3)
    with torch.no_grad():
        model.head.bias[1] = float("nan")
    path = tmp_path / "step-00000001.safetensors"
    path.write_bytes(model_bytes(model, Vocab((97, 98, 99)), DataConfig(), step=1, val_loss=None,
                                 corpus_sha256=""))
    with pytest.raises(CheckpointError, match="non-finite"):
        load_model(path)


def test_mistyped_config_in_metadata_is_a_checkpoint_error(run_dir: Path):
    path = sorted(run_dir.glob("*.safetensors"))[-1]
    header, meta, _, _ = read_header(path)
    for field, bad in (("hidden", "16"), ("hidden", 16.0), ("layers", True), ("model", 3), ("dropout", "0")):
        cfg = json.loads(meta["model_config"])
        cfg[field] = bad
        copy = path.with_name("step-00000099.safetensors")
        shutil.copy(path, copy)
        _rewrite_meta(copy, model_config=json.dumps(cfg))
        with pytest.raises(CheckpointError):
            load_model(copy)
    data_cfg = json.loads(meta["data_config"]) | {"encoding": 5}
    _rewrite_meta(copy, model_config=meta["model_config"], data_config=json.dumps(data_cfg))
    with pytest.raises(CheckpointError):
        load_model(copy)


def _tty_sample(args: list[str]) -> bytes:
    """Run `charnn sample` in-process with stdout on a pseudo-terminal; returns what the terminal got."""
    from charnn.cli import app

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


# --- checkpoints survive crashes -----------------------------------------------------------------------

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
        state = {"step": step, "optimizer": {"m": torch.randn(200_000)}, "rng": {"torch": torch.get_rng_state()}}
        save_checkpoint(run, model, vocab, DataConfig(), step=step, val_loss=1.0 / step, corpus_sha256="x",
                        state=state, keep_last=2)


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


def test_resume_falls_back_when_newest_checkpoint_is_corrupt(run_dir: Path):
    newest = run_dir / "step-00000020.safetensors"
    flip_data_byte(newest)
    stale = run_dir / ".step-00000030.safetensors.999.tmp"
    stale.write_bytes(b"half a checkpoint")
    events = []
    with pytest.warns(CharnnWarning, match="checksum mismatch.*falling back"):
        result = train(corpus_of(run_dir), model_cfg=SMALL_MODEL, train_cfg=small_train(max_iters=22),
                       out_dir=run_dir, resume=True, on_progress=events.append)
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
        train(corpus_of(run_dir), model_cfg=SMALL_MODEL, train_cfg=small_train(max_iters=21), out_dir=run_dir,
              resume=True, on_progress=events.append)
    assert next(e for e in events if e.kind == "start").step == 10


def test_keep_last_two_plus_best_never_nan(tmp_path: Path):
    vocab = Vocab((97, 98))
    model = CharRNN(ModelConfig(model="gru", layers=1, hidden=4, embed=2), len(vocab))
    expected = [{1}, {1, 2}, {2, 3}, {3, 4}, {3, 4, 5}, {5, 6}]
    for step, (val, keep) in enumerate(zip([math.nan, 3, 2, 5, 4, 1], expected, strict=True), start=1):
        save_checkpoint(tmp_path, model, vocab, DataConfig(), step=step, val_loss=val, corpus_sha256="",
                        state={"step": step}, keep_last=2)
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == sorted([f"step-{s:08d}.safetensors" for s in keep] +
                               [f"step-{s:08d}.state.pt" for s in keep]), f"after step {step}"


def test_failed_save_prunes_nothing(tmp_path: Path, monkeypatch):
    """Pruning happens only after the new file is durable: a failed write removes no older checkpoint."""
    vocab = Vocab((97, 98))
    model = CharRNN(ModelConfig(model="gru", layers=1, hidden=4, embed=2), len(vocab))
    for step in (1, 2):
        save_checkpoint(tmp_path, model, vocab, DataConfig(), step=step, val_loss=None, corpus_sha256="",
                        state={"step": step}, keep_last=1)
    before = snapshot(tmp_path)
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("00000003.safetensors"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(CheckpointWriteError, match=r"checkpoint write failed \(disk full\?\)"):
        save_checkpoint(tmp_path, model, vocab, DataConfig(), step=3, val_loss=None, corpus_sha256="",
                        state={"step": 3}, keep_last=1)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if "00000003" not in k} == before
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_file_size_limit_leaves_previous_checkpoint_intact(run_dir: Path):
    """RLIMIT_FSIZE in a subprocess: the save fails with EFBIG, exit 4, old files untouched, no temp left."""
    import resource

    before = snapshot(run_dir)
    limit = max(p.stat().st_size for p in run_dir.iterdir() if p.name.endswith(".jsonl")) + 4096

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([PYTHON, "-m", "charnn", "train", "--resume", str(run_dir), "--max-iters", "21",
                           "--quiet"], env=cli_env(), capture_output=True, text=True, preexec_fn=cap, timeout=120)
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "checkpoint write failed (disk full?)" in errors[0]
    assert snapshot(run_dir) == before
    assert not list(run_dir.glob(".*.tmp"))
    load_model(run_dir / "step-00000020.safetensors")


# --- exact resume --------------------------------------------------------------------------------------

RESUME_MODEL = ModelConfig(model="lstm", layers=2, hidden=16, embed=8, dropout=0.2)  # dropout: RNG matters


def resume_train(**over) -> TrainConfig:
    # A constant learning rate (min_lr == lr, no warmup): the schedule does not depend on max_iters, so a
    # 13-step run continued to 30 follows the same schedule as 30 steps straight.
    return small_train(**{"min_lr": 1e-2, "eval_every": 100, "max_iters": 30} | over)


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in rows if r["kind"] == "train"}


def _params(path: Path) -> dict[str, torch.Tensor]:
    return load_model(path).model.state_dict()


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
    pa, pb = _params(a / "step-00000030.safetensors"), _params(b / "step-00000030.safetensors")
    return _losses(a) == _losses(b) and all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.mark.slow
def test_resume_in_a_new_process_is_bit_exact(straight_run: Path, tmp_path: Path):
    """30 steps straight == 13 steps, then `charnn train --resume` in a new process for 17 more."""
    corpus = corpus_of(straight_run)
    run = tmp_path / "split"
    train(corpus, model_cfg=RESUME_MODEL, train_cfg=resume_train(max_iters=13), out_dir=run)
    assert max(_losses(run)) == 13
    proc = subprocess.run([PYTHON, "-m", "charnn", "train", "--resume", str(run), "--max-iters", "30", "--quiet"],
                          env=cli_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    losses = _losses(run)
    assert sorted(losses) == list(range(1, 31))
    assert losses == _losses(straight_run)  # exact float equality, every step
    a, b = _params(run / "step-00000030.safetensors"), _params(straight_run / "step-00000030.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_in_process_is_bit_exact(straight_run: Path, tmp_path: Path):
    assert _same_run(_split_run_in_process(tmp_path, straight_run), straight_run)


def test_dropping_rng_restore_breaks_exact_resume(straight_run: Path, tmp_path: Path, monkeypatch):
    """The resume test is sensitive: without the RNG restore (dropout draws differ) it fails."""
    monkeypatch.setattr(train_mod, "set_rng_state", lambda state: None)
    assert not _same_run(_split_run_in_process(tmp_path, straight_run), straight_run)


def test_dropping_optimizer_restore_breaks_exact_resume(straight_run: Path, tmp_path: Path, monkeypatch):
    real = train_mod.make_optimizer

    def fresh_optimizer(*a, **k):
        opt = real(*a, **k)
        opt.load_state_dict = lambda state: None
        return opt

    monkeypatch.setattr(train_mod, "make_optimizer", fresh_optimizer)
    assert not _same_run(_split_run_in_process(tmp_path, straight_run), straight_run)


@pytest.mark.slow
def test_sigint_then_resume_equals_uninterrupted(straight_run: Path, tmp_path: Path):
    """SIGINT mid-run: the step finishes, a checkpoint is saved, exit 130; resuming reaches the same weights."""
    corpus = corpus_of(straight_run)
    run = tmp_path / "interrupted"
    args = [PYTHON, "-m", "charnn", "train", str(corpus), "--out", str(run), "--model", "lstm", "--layers", "2",
            "--hidden", "16", "--embed", "8", "--dropout", "0.2", "--no-layer-norm", "--weight-decay", "0",
            "--batch-size", "4", "--seq-len", "16",
            "--lr", "0.01", "--min-lr", "0.01", "--warmup-iters", "0", "--eval-every", "100",
            "--sample-length", "0", "--log-every", "1", "--seed", "7", "--threads", "1", "--device", "cpu",
            "--quiet"]
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
    a, b = _params(run / name), _params(ref / name)
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
        train(corpus_of(run_dir), model_cfg=SMALL_MODEL, train_cfg=small_train(max_iters=40), out_dir=run_dir,
              resume=True, should_stop=stop_at_23)
    assert err.value.exit_code == 143 and "--resume" in str(err.value)
    assert load_model(run_dir / "step-00000023.safetensors").step == 23


def test_second_sigint_exits_at_once():
    """In a forked child: the first SIGINT only sets the flag, the second ends the process with 130."""
    from charnn.cli import _StopFlag

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            with _StopFlag() as stop:
                os.kill(os.getpid(), signal.SIGINT)
                if stop() == signal.SIGINT:
                    code = 2
                    os.kill(os.getpid(), signal.SIGINT)  # never returns
                    code = 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 130


def test_non_finite_parameters_are_never_saved(tmp_path: Path):
    vocab = Vocab((97, 98))
    model = CharRNN(ModelConfig(model="gru", layers=1, hidden=4, embed=2), len(vocab))
    with torch.no_grad():
        model.head.weight[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match="non-finite"):
        save_checkpoint(tmp_path, model, vocab, DataConfig(), step=1, val_loss=None, corpus_sha256="",
                        state={"step": 1}, keep_last=2)
    assert list(tmp_path.iterdir()) == []


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
        rundir.check_same_run(loaded, SMALL_MODEL, other.vocab, loaded.corpus_sha256)
    # Through the CLI: exit 2, one line; training options may change.
    res = invoke("train", "--resume", str(run_dir), "--hidden", "64")
    assert res.exit_code == 2 and "cannot change on resume" in one_error_line(res)
    res = invoke("train", str(changed), "--resume", str(run_dir))
    assert res.exit_code == 2 and "corpus differs" in one_error_line(res)
    res = invoke("train", "--resume", str(run_dir), "--max-iters", "22", "--lr", "0.005", "--quiet")
    assert res.exit_code == 0, res.output


# --- failures at run time ------------------------------------------------------------------------------

def test_nan_loss_skips_steps_then_exits_3_leaving_checkpoints(run_dir: Path, monkeypatch):
    before = snapshot(run_dir)
    weights_before = _params(run_dir / "step-00000020.safetensors")
    calls = []
    real = step_mod.lm_loss

    def nan_loss(logits, targets, **kw):
        calls.append(1)
        return real(logits, targets, **kw) * float("nan")

    monkeypatch.setattr(step_mod, "lm_loss", nan_loss)
    res = invoke("train", "--resume", str(run_dir), "--max-iters", "100", "--eval-every", "5")
    assert res.exit_code == 3
    line = one_error_line(res, alone=False)
    assert "not finite for 10 steps" in line
    assert len(calls) == 10  # ten skipped steps, then the stop
    assert snapshot(run_dir) == before  # no new checkpoint, none rewritten
    after = _params(run_dir / "step-00000020.safetensors")
    assert all(torch.equal(after[k], weights_before[k]) for k in after)


def test_a_few_nan_losses_are_skipped_without_touching_the_weights(run_dir: Path, monkeypatch):
    real = step_mod.lm_loss
    calls = []

    def some_nan(logits, targets, **kw):
        calls.append(1)
        loss = real(logits, targets, **kw)
        return loss * float("nan") if len(calls) <= 3 else loss

    seen = []

    def record(p):
        if p.kind == "warning":
            seen.append(p.step)

    monkeypatch.setattr(step_mod, "lm_loss", some_nan)
    stepped_after = []  # how many losses had been computed when the optimizer stepped
    real_make = train_mod.make_optimizer

    def counting_optimizer(*a, **k):
        opt = real_make(*a, **k)
        real_step = opt.step
        opt.step = lambda *sa, **sk: (stepped_after.append(len(calls)), real_step(*sa, **sk))[1]
        return opt

    monkeypatch.setattr(train_mod, "make_optimizer", counting_optimizer)
    train(corpus_of(run_dir), model_cfg=SMALL_MODEL, train_cfg=small_train(max_iters=25), out_dir=run_dir,
          resume=True, on_progress=record)
    assert seen == [20, 21, 22]
    assert stepped_after == [4, 5]  # the optimizer never stepped on a NaN loss


def test_out_of_memory_exits_5_with_the_batch_shape(run_dir: Path, monkeypatch):
    before = snapshot(run_dir)

    def oom(self, x, hidden=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(CharRNN, "forward", oom)
    res = invoke("train", "--resume", str(run_dir), "--max-iters", "30")
    assert res.exit_code == 5
    line = one_error_line(res, alone=False)
    assert "batch size 4" in line and "sequence length 16" in line and "lower --batch-size" in line
    assert snapshot(run_dir) == before


# --- text input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [None, 1, 2, 3])
def test_lf_crlf_cr_encode_identically(tmp_path: Path, monkeypatch, chunk):
    import charnn.data as data_mod

    if chunk:
        monkeypatch.setattr(data_mod, "CHUNK_BYTES", chunk)  # a CR at a chunk end must wait for its LF
    text = "ab\ncd\n\nx\u00e9\n"
    encoded = []
    for nl in ("\n", "\r\n", "\r"):
        path = tmp_path / f"nl{len(encoded)}.txt"
        path.write_bytes(text.replace("\n", nl).encode("utf-8"))
        corpus = encode_file(path, DataConfig())
        encoded.append((corpus.vocab, corpus.ids.tolist()))
    assert encoded[0] == encoded[1] == encoded[2]
    assert 13 not in encoded[0][0].symbols
    kept = encode_file(tmp_path / "nl1.txt", DataConfig(keep_newlines=True))
    assert 13 in kept.vocab.symbols


def test_bom_is_never_in_the_vocabulary(tmp_path: Path, monkeypatch):
    import charnn.data as data_mod

    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf" + b"hello\r\nworld\n")
    for chunk in (None, 1, 2):
        if chunk:
            monkeypatch.setattr(data_mod, "CHUNK_BYTES", chunk)
        corpus = encode_file(path, DataConfig())
        assert 0xFEFF not in corpus.vocab.symbols
        assert corpus.vocab.decode(corpus.ids.tolist()) == "hello\nworld\n"
    path.write_bytes("\ufeff".encode("utf-16-le") + "hi there\n".encode("utf-16-le"))
    assert 0xFEFF not in encode_file(path, DataConfig(encoding="utf-16-le")).vocab.symbols


@pytest.mark.parametrize("size", [0, 1, 16, 17])
def test_too_short_corpus_names_the_counts(tmp_path: Path, size: int):
    path = tmp_path / "short.txt"
    path.write_text(("abcdefgh" * 10)[:size], encoding="utf-8")
    with pytest.raises(DataError) as err:
        train(path, model_cfg=SMALL_MODEL, train_cfg=small_train(batch_size=1, seq_len=16), out_dir=tmp_path / "r")
    assert re.search(r"\d", str(err.value))
    assert "empty" in str(err.value) if size == 0 else "character" in str(err.value)


def test_smallest_corpus_that_fits_one_window_trains(tmp_path: Path):
    path = tmp_path / "fits.txt"
    path.write_text(("abcdefgh" * 10)[:17], encoding="utf-8")
    result = train(path, model_cfg=SMALL_MODEL, data_cfg=DataConfig(val_frac=0.0),
                   train_cfg=small_train(batch_size=1, seq_len=16, max_iters=2), out_dir=tmp_path / "r")
    assert result.steps == 2


def test_vocabulary_without_space_or_newline_samples_unprimed(tmp_path: Path):
    vocab = Vocab(tuple(map(ord, "abc")))
    model = CharRNN(SMALL_MODEL, len(vocab))
    text = sample_text(model, vocab, SampleConfig(length=30, seed=1))[0]
    assert len(text) == 30 and set(text) <= set("abc")
    path = tmp_path / "step-00000001.safetensors"
    path.write_bytes(model_bytes(model, vocab, DataConfig(), step=1, val_loss=None, corpus_sha256=""))
    res = invoke("sample", str(path), "--length", "30", "--seed", "1")
    assert res.exit_code == 0 and res.stdout == text + "\n"


def test_eval_batch_size_does_not_change_the_numbers(run_dir: Path, tmp_path: Path):
    loaded = load_model(run_dir / "step-00000020.safetensors")
    ids = encode_file(corpus_of(run_dir), DataConfig()).ids[:1000]
    one = evaluate_ids(loaded.model, ids, segment=37, batch_size=1)
    seven = evaluate_ids(loaded.model, ids, segment=37, batch_size=7)
    assert one.chars == seven.chars == 999
    assert abs(one.loss - seven.loss) < 1e-6
    held = tmp_path / "held.txt"
    held.write_text(TINY_TEXT[:500], encoding="utf-8")
    rows = [json.loads(invoke("eval", str(run_dir), str(held), "--json", "--device", "cpu", "--segment", "50",
                              "--batch-size", b).stdout) for b in ("1", "7")]
    assert abs(rows[0]["nats_per_char"] - rows[1]["nats_per_char"]) < 1e-6


def test_eval_three_characters_by_hand():
    """A 1-unit Elman RNN on "aba", computed with pencil and paper (and math.tanh), one character per chunk."""
    model = CharRNN(ModelConfig(model="rnn", layers=1, hidden=1, embed=1), 2)
    with torch.no_grad():
        model.embed.weight.copy_(torch.tensor([[1.0], [-2.0]]))  # a -> 1, b -> -2
        model.rnn.weight_ih_l0.fill_(0.5)
        model.rnn.weight_hh_l0.fill_(0.8)
        model.rnn.bias_ih_l0.fill_(0.1)
        model.rnn.bias_hh_l0.fill_(0.0)
        model.head.weight.copy_(torch.tensor([[2.0], [-1.0]]))
        model.head.bias.copy_(torch.tensor([0.0, 0.3]))

    def nll(h, target):
        logits = [2.0 * h, -1.0 * h + 0.3]
        return math.log(sum(math.exp(z) for z in logits)) - logits[target]

    h1 = math.tanh(0.5 * 1 + 0.1)  # after "a"
    h2 = math.tanh(0.5 * -2 + 0.1 + 0.8 * h1)  # after "ab"
    expected = (nll(h1, 1) + nll(h2, 0)) / 2  # predict "b" from "a", then "a" from "ab"
    ids = np.array([0, 1, 0])
    for chunk, batch in ((1, 1), (256, 7)):
        res = evaluate_ids(model, ids, segment=4096, batch_size=batch, chunk=chunk)
        assert res.chars == 2
        assert abs(res.loss - expected) < 1e-6


def test_eval_counts_unknown_characters(run_dir: Path, tmp_path: Path):
    held = tmp_path / "held.txt"
    held.write_text("First \u00e9\u00e9 Citizen\u2603", encoding="utf-8")
    res = invoke("eval", str(run_dir), str(held), "--device", "cpu")
    assert res.exit_code == 2 and "3 character(s) not in the model's vocabulary" in one_error_line(res)
    res = invoke("eval", str(run_dir), str(held), "--device", "cpu", "--skip-unknown", "--json")
    assert res.exit_code == 0
    assert json.loads(res.stdout)["unknown_chars"] == 3
    assert "skipped 3 unknown" in res.stderr
