"""The model file users share (safetensors weights, a sha256 per tensor, one typed metadata record,
`CheckpointMeta`) and the training-state blob for resuming (`torch.load(weights_only=True)` only).
Loading never unpickles: the header is checked against the shapes the config implies before a weight byte is
allocated. Where the files live in a run directory, and which to load or prune, is `charnn.store.rundir`'s work.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from charnn.config import DataConfig, ModelConfig, TrainConfig
from charnn.data import Vocab
from charnn.errors import CheckpointError
from charnn.model import CharRNN, state_shapes
from charnn.store.meta import FORMAT, MAX_EVAL_SEGMENT, CheckpointMeta, meta_json, meta_strings, parse_meta

MAX_HEADER_BYTES = 64 << 20


def read_meta(path: str | os.PathLike) -> CheckpointMeta:
    """The metadata record of a model file, from its header alone (for choosing among several)."""
    path = Path(path)
    return parse_meta(read_header(path)[1], path)


# --- the model file -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to use, with the record that says how to interpret it."""

    model: CharRNN
    path: Path
    meta: CheckpointMeta

    @property
    def vocab(self) -> Vocab:
        return self.meta.vocab

    @property
    def model_cfg(self) -> ModelConfig:
        return self.meta.model_cfg

    @property
    def data_cfg(self) -> DataConfig:
        return self.meta.data_cfg

    @property
    def step(self) -> int:
        return self.meta.step

    @property
    def val_loss(self) -> float | None:
        return self.meta.val_loss

    @property
    def corpus_sha256(self) -> str:
        return self.meta.corpus_sha256

    @property
    def eval_segment(self) -> int:
        """The validation segment length training used, bounded: scoring allocates a row of that length."""
        value = self.meta.eval_segment
        if value > MAX_EVAL_SEGMENT:
            raise CheckpointError(f"{self.path}: implausible eval_segment {value!r} in the checkpoint metadata")
        return value


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()


def model_bytes(
    model: CharRNN,
    vocab: Vocab,
    data_cfg: DataConfig,
    *,
    step: int,
    val_loss: float | None,
    corpus_sha256: str,
    corpus_path: str | None = None,
    corpus_cache: str | None = None,
    train_cfg: TrainConfig | None = None,
    state_sha256: str | None = None,
) -> bytes:
    """The safetensors file for `model`: fp32 weights, their sha256, and the `CheckpointMeta` made of the
    arguments and `model.cfg`."""
    from safetensors.torch import save

    meta = CheckpointMeta(
        model.cfg,
        data_cfg,
        vocab,
        step=step,
        val_loss=val_loss,
        corpus_sha256=corpus_sha256,
        corpus_path=corpus_path,
        corpus_cache=corpus_cache,
        train_cfg=train_cfg,
        state_sha256=state_sha256,
    )

    tensors, stored = {}, set()
    for k, v in model.state_dict().items():
        t = v.detach().float().contiguous().cpu()
        if t.untyped_storage().data_ptr() in stored:  # tied weights: safetensors refuses shared storage
            t = t.clone()
        stored.add(t.untyped_storage().data_ptr())
        tensors[k] = t
    checksums = {k: hashlib.sha256(_tensor_bytes(v)).hexdigest() for k, v in tensors.items()}
    return save(tensors, metadata={**meta_strings(meta), "checksums": json.dumps(checksums)})


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


def load_model(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> LoadedModel:
    """Load and verify a model file. Never unpickles; validates before allocating; checks every checksum."""
    from safetensors.torch import load as st_load

    path = Path(path)
    header, strings, data_start, size = read_header(path)
    meta = parse_meta(strings, path)
    model_cfg, vocab = meta.model_cfg, meta.vocab
    if len(vocab) > 1 << 21:
        raise CheckpointError(f"{path}: vocabulary of {len(vocab)} symbols is implausible")
    expected = state_shapes(model_cfg, len(vocab))  # arithmetic: a crafted huge config costs nothing here
    if set(header) != set(expected):
        raise CheckpointError(f"{path}: tensors do not match the model config in the metadata")
    data_len = size - data_start
    spans = []
    for name, shape in expected.items():
        entry = header[name]
        if (
            not isinstance(entry, dict)
            or entry.get("dtype") != "F32"
            or not isinstance(entry.get("shape"), list)
            or tuple(entry["shape"]) != shape
        ):
            raise CheckpointError(f"{path}: tensor {name!r} does not match the model config (shape/dtype)")
        offsets = entry.get("data_offsets")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len
            or offsets[1] - offsets[0] != 4 * math.prod(shape)
        ):
            raise CheckpointError(f"{path}: tensor {name!r} has bad data offsets (the file is truncated or corrupt)")
        spans.append((offsets[0], offsets[1], name))
    checksums = meta_json(strings, "checksums", path)
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
    return LoadedModel(model, path, meta)


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
    problem = _state_problem(state)
    if problem:
        raise CheckpointError(f"{path}: unusable training state ({problem})")
    return state


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _state_problem(state: dict[str, Any]) -> str | None:
    """What is wrong with the structure of a training state (None: nothing), checked before any of it is applied:
    a state whose checksum matches can still have been written by hand or by another program. Whether its
    tensors fit the model is checked where they are applied (`charnn.training.train`)."""
    for key in ("step", "elapsed", "optimizer", "rng"):
        if key not in state:
            return f"no {key!r}"
    if not _count(state["step"]):
        return f"step {state['step']!r} is not a step number"
    for key in ("elapsed", "best_val"):
        if key in state and not (_real(state[key]) and not math.isnan(state[key]) and state[key] >= 0):
            return f"{key} {state[key]!r} is not a number of seconds or nats"
    if not math.isfinite(state["elapsed"]):  # best_val may be inf (no validation yet); a clock may not
        return f"elapsed {state['elapsed']!r} is not a number of seconds"
    if "evals_since_best" in state and not _count(state["evals_since_best"]):
        return f"evals_since_best {state['evals_since_best']!r} is not a count"
    if state.get("best_step") is not None and not _count(state["best_step"]):
        return f"best_step {state['best_step']!r} is not a step number"
    optimizer = state["optimizer"]
    if (
        not isinstance(optimizer, dict)
        or not isinstance(optimizer.get("state"), dict)
        or not isinstance(optimizer.get("param_groups"), list)
        or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in optimizer["param_groups"])
    ):
        return "the optimizer state is not an optimizer's"
    rng = state["rng"]
    python = rng.get("python") if isinstance(rng, dict) else None
    if (
        not isinstance(python, (list, tuple))
        or len(python) != 3
        or not isinstance(python[1], (list, tuple))
        or not torch.is_tensor(rng.get("torch"))
        or rng["torch"].dtype != torch.uint8
    ):
        return "the RNG state is not charnn's"
    hidden = state.get("hidden")
    tensors = list(hidden) if isinstance(hidden, (list, tuple)) else [] if hidden is None else [hidden]
    if (hidden is not None and not tensors) or not all(
        torch.is_tensor(t) and t.is_floating_point() and t.dim() == 3 for t in tensors
    ):
        return "the hidden state is not (layers, streams, hidden) tensors"
    for key in ("train_config", "scaler"):
        if state.get(key) is not None and not isinstance(state[key], dict):
            return f"{key} is not a dictionary"
    return None
