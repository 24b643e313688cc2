"""Checkpoints: the model file users share (safetensors + validated metadata + per-tensor sha256), the
training state for resuming (`torch.load(weights_only=True)` only), atomic writes, and the run directory.

Loading a model never unpickles: the safetensors header is parsed and checked against the shapes the config
implies before a single weight byte is allocated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from charnn import __version__
from charnn.config import DataConfig, ModelConfig, TrainConfig, default_of, from_dict, to_dict
from charnn.data import Vocab
from charnn.errors import CharnnError, CheckpointError
from charnn.files import atomic_write, remove_stale_temps  # noqa: F401 (the run directory's API)
from charnn.model import CharRNN, state_shapes

FORMAT = "charnn-model/1"
MAX_HEADER_BYTES = 64 << 20
CKPT_RE = re.compile(r"^step-(\d{8,})\.safetensors$")
STATE_SUFFIX = ".state.pt"


class CharnnWarning(UserWarning):
    """Something the user should hear about that did not stop the work (shown as `warning: ...`)."""


# --- the model file -------------------------------------------------------------------------------------

@dataclass
class LoadedModel:
    """A model ready to use, with everything needed to interpret it."""

    model: CharRNN
    vocab: Vocab
    model_cfg: ModelConfig
    data_cfg: DataConfig
    path: Path
    step: int
    val_loss: float | None
    corpus_sha256: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def eval_segment(self) -> int:
        """The validation segment length training used, checked: a crafted value must not allocate or crash."""
        try:
            value = json.loads(self.meta.get("train_config", "{}")).get(
                "eval_segment", default_of(TrainConfig, "eval_segment"))
        except (ValueError, AttributeError, RecursionError):
            raise CheckpointError(f"{self.path}: unreadable train_config in the checkpoint metadata") from None
        if not isinstance(value, int) or isinstance(value, bool) or not 2 <= value <= 1 << 20:
            raise CheckpointError(f"{self.path}: implausible eval_segment {value!r} in the checkpoint metadata")
        return value


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()


def model_bytes(model: CharRNN, vocab: Vocab, data_cfg: DataConfig, *, step: int, val_loss: float | None,
                corpus_sha256: str, extra: dict[str, str] | None = None) -> bytes:
    """The safetensors file for `model`: fp32 weights, their sha256, and the metadata to rebuild it."""
    from safetensors.torch import save

    tensors, stored = {}, set()
    for k, v in model.state_dict().items():
        t = v.detach().float().contiguous().cpu()
        if t.untyped_storage().data_ptr() in stored:  # tied weights: safetensors refuses shared storage
            t = t.clone()
        stored.add(t.untyped_storage().data_ptr())
        tensors[k] = t
    checksums = {k: hashlib.sha256(_tensor_bytes(v)).hexdigest() for k, v in tensors.items()}
    meta = {
        "format": FORMAT,
        "charnn_version": __version__,
        "torch_version": torch.__version__,
        "model_config": json.dumps(to_dict(model.cfg)),
        "data_config": json.dumps(to_dict(data_cfg)),
        "vocab": vocab.to_json(),
        "corpus_sha256": corpus_sha256,
        "step": str(step),
        "val_loss": "none" if val_loss is None else repr(float(val_loss)),
        "checksums": json.dumps(checksums),
        **(extra or {}),
    }
    return save(tensors, metadata=meta)


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str], int, int]:
    """Parse and bound-check a safetensors header without reading the weights.

    Returns (tensor entries, metadata, data offset, file size). Raises CheckpointError for anything that is
    not a well-formed safetensors file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a charnn checkpoint (file too short)")
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > min(MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(f"{path}: not a charnn checkpoint (no safetensors header)")
            raw = f.read(n)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CheckpointError(f"{path}: not a charnn checkpoint (unreadable header)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a charnn checkpoint (bad header)")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path}: not a charnn checkpoint (no metadata)")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a charnn checkpoint (format {meta.get('format')!r})")
    return header, meta, 8 + n, size


def _meta_json(meta: dict[str, str], key: str, path: Path) -> Any:
    try:
        return json.loads(meta[key])
    except (KeyError, ValueError, RecursionError):
        raise CheckpointError(f"{path}: checkpoint metadata {key!r} is missing or unreadable") from None


def _typed(cls: type, data: Any, path: Path) -> Any:
    """`from_dict`, after checking each value has its field's JSON type: a crafted `"hidden": "16"` or
    `"encoding": 5` would otherwise pass the range checks and fail later with a traceback."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {cls.__name__} in the metadata is not a JSON object")
    for f in dataclasses.fields(cls):
        if f.name not in data or f.default is None:
            continue
        value, default = data[f.name], f.default
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise CheckpointError(f"{path}: invalid checkpoint metadata ({cls.__name__}.{f.name} = {value!r})")
    return from_dict(cls, data)


def _parse_meta(path: Path, meta: dict[str, str]) -> tuple[ModelConfig, DataConfig, Vocab, int, float | None]:
    try:
        model_cfg = _typed(ModelConfig, _meta_json(meta, "model_config", path), path)
        data_cfg = _typed(DataConfig, _meta_json(meta, "data_config", path), path)
        vocab = Vocab.from_json(meta["vocab"])
        step = int(meta.get("step", "0"))
        val = meta.get("val_loss", "none")
        val_loss = None if val == "none" else float(val)
    except CheckpointError:
        raise
    except (CharnnError, KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: invalid checkpoint metadata ({err})") from None
    return model_cfg, data_cfg, vocab, step, val_loss


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """Header-only summary of a checkpoint (step, val_loss, ...) for choosing among several."""
    path = Path(path)
    _, meta, _, _ = read_header(path)
    _, _, _, step, val_loss = _parse_meta(path, meta)
    return {"path": path, "step": step, "val_loss": val_loss, "meta": meta}


def load_model(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> LoadedModel:
    """Load and verify a model file. Never unpickles; validates before allocating; checks every checksum."""
    from safetensors.torch import load as st_load

    path = Path(path)
    header, meta, data_start, size = read_header(path)
    model_cfg, data_cfg, vocab, step, val_loss = _parse_meta(path, meta)
    if len(vocab) > 1 << 21:
        raise CheckpointError(f"{path}: vocabulary of {len(vocab)} symbols is implausible")
    expected = state_shapes(model_cfg, len(vocab))  # arithmetic: a crafted huge config costs nothing here
    if set(header) != set(expected):
        raise CheckpointError(f"{path}: tensors do not match the model config in the metadata")
    data_len = size - data_start
    spans = []
    for name, shape in expected.items():
        entry = header[name]
        if (not isinstance(entry, dict) or entry.get("dtype") != "F32" or not isinstance(entry.get("shape"), list)
                or tuple(entry["shape"]) != shape):
            raise CheckpointError(f"{path}: tensor {name!r} does not match the model config (shape/dtype)")
        offsets = entry.get("data_offsets")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_len
                or offsets[1] - offsets[0] != 4 * math.prod(shape)):
            raise CheckpointError(
                f"{path}: tensor {name!r} has bad data offsets (the file is truncated or corrupt)")
        spans.append((offsets[0], offsets[1], name))
    checksums = _meta_json(meta, "checksums", path)
    if not isinstance(checksums, dict) or set(checksums) != set(expected):
        raise CheckpointError(f"{path}: checksums missing from metadata")
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror})") from None
    if len(blob) != size:
        raise CheckpointError(f"{path}: file changed while being read")
    view = memoryview(blob)[data_start:]
    for start, end, name in spans:
        if hashlib.sha256(view[start:end]).hexdigest() != checksums[name]:
            raise CheckpointError(f"{path}: checksum mismatch in tensor {name!r}: the file is corrupt")
    try:
        tensors = st_load(blob)
    except Exception as err:  # the library's own parse errors: still a bad file, not a bug of ours
        raise CheckpointError(f"{path}: unreadable safetensors data ({err})") from None
    for name, tensor in tensors.items():  # verified bytes can still be NaN: they would sample garbage
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: tensor {name!r} holds non-finite values (NaN or inf)")
    if model_cfg.tie_weights and not torch.equal(tensors["embed.weight"], tensors["head.weight"]):
        # Both copies load into the one shared Parameter, the last silently winning: refuse instead.
        raise CheckpointError(f"{path}: the tied embedding and output weights differ (the file was altered)")
    model = CharRNN(model_cfg, len(vocab))
    model.load_state_dict(tensors, strict=True)  # with tie_weights the module keeps its one shared Parameter
    model.to(device).eval()
    return LoadedModel(model, vocab, model_cfg, data_cfg, path, step, val_loss,
                       meta.get("corpus_sha256", ""), meta)


# --- the training state ---------------------------------------------------------------------------------

def state_bytes(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def load_state(path: str | os.PathLike, expected_sha256: str | None = None) -> dict[str, Any]:
    """Resume state: tensors and primitives only, loaded with weights_only=True and no fallback."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read training state ({err.strerror})") from None
    if expected_sha256 is not None and hashlib.sha256(blob).hexdigest() != expected_sha256:
        raise CheckpointError(f"{path}: checksum mismatch in training state: the file is corrupt")
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses anything but tensors and plain containers
        raise CheckpointError(f"{path}: unreadable training state ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: training state is not a dictionary")
    return state


# --- the run directory ----------------------------------------------------------------------------------

def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.safetensors"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint files of a run, oldest step first (temp files never match)."""
    run_dir = Path(run_dir)
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(run_dir: str | os.PathLike, model: CharRNN, vocab: Vocab, data_cfg: DataConfig, *,
                    step: int, val_loss: float | None, corpus_sha256: str, state: dict[str, Any] | None,
                    keep_last: int, extra: dict[str, str] | None = None) -> Path:
    """Write state then model (the model file is the commit record: it holds the state's sha256), then prune."""
    run_dir = Path(run_dir)
    for p in model.parameters():
        if not torch.isfinite(p).all():
            raise CheckpointError("refusing to save a checkpoint with non-finite parameters")
    path = run_dir / checkpoint_name(step)
    meta = dict(extra or {})
    if state is not None:
        blob = state_bytes(state)
        atomic_write(path.with_name(path.stem + STATE_SUFFIX), blob)
        meta["state_sha256"] = hashlib.sha256(blob).hexdigest()
    atomic_write(path, model_bytes(model, vocab, data_cfg, step=step, val_loss=val_loss,
                                   corpus_sha256=corpus_sha256, extra=meta))
    prune(run_dir, keep_last=keep_last)
    return path


def prune(run_dir: str | os.PathLike, *, keep_last: int) -> list[Path]:
    """Keep the newest `keep_last` checkpoints plus the best by validation loss (never a NaN); delete the rest."""
    ckpts = list_checkpoints(run_dir)
    keep = set(ckpts[-keep_last:])
    best = best_checkpoint(ckpts)
    if best is not None:
        keep.add(best)
    removed = []
    for p in ckpts:
        if p not in keep:
            for victim in (p, p.with_name(p.stem + STATE_SUFFIX)):
                try:
                    victim.unlink(missing_ok=True)
                except OSError:
                    pass
            removed.append(p)
    return removed


def best_checkpoint(ckpts: list[Path]) -> Path | None:
    best, best_val = None, math.inf
    for p in ckpts:
        try:
            val = describe(p)["val_loss"]
        except CheckpointError:
            continue
        if val is not None and math.isfinite(val) and val < best_val:
            best, best_val = p, val
    return best


def find_runs(root: str | os.PathLike = "checkpoints") -> list[Path]:
    """Run directories under `root`, most recently written first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [d for d in root.iterdir() if d.is_dir() and list_checkpoints(d)]
    return sorted(runs, key=lambda d: max(p.stat().st_mtime for p in list_checkpoints(d)), reverse=True)


def candidates(target: str | os.PathLike | None, which: str = "best") -> list[Path]:
    """Model files to try, in order of preference, for a run directory, a file, or (None) the newest run."""
    if target is None:
        runs = find_runs()
        if not runs:
            raise CheckpointError("no runs found under checkpoints/; train one first or pass a run directory")
        target = runs[0]
    target = Path(target)
    if not target.exists():
        raise CheckpointError(f"{target}: no such run directory or checkpoint file")
    if target.is_file():
        return [target]
    ckpts = list_checkpoints(target)
    if not ckpts:
        raise CheckpointError(f"{target}: no checkpoints in this directory (is it a charnn run?)")
    newest_first = ckpts[::-1]
    if which == "latest":
        return newest_first
    if which != "best":
        raise CheckpointError(f"--which must be best or latest, not {which!r}")
    best = best_checkpoint(ckpts)
    return ([best] if best else []) + [p for p in newest_first if p != best]


def load_run(target: str | os.PathLike | None = None, *, which: str = "best",
             device: torch.device | str = "cpu") -> LoadedModel:
    """Load the preferred checkpoint of a run; one that fails to verify is skipped with a warning."""
    tried = candidates(target, which)
    errors = []
    for path in tried:
        try:
            loaded = load_model(path, device=device)
        except CheckpointError as err:
            if len(tried) == 1:
                raise
            errors.append(str(err))
            warnings.warn(f"{err}; trying an earlier checkpoint", CharnnWarning, stacklevel=2)
            continue
        return loaded
    raise CheckpointError(f"no usable checkpoint: {errors[-1] if errors else 'none found'}")
