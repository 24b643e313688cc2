"""A checkpoint: the model file users share (safetensors weights, a sha256 per tensor, one typed metadata record,
`CheckpointMeta`) and, beside it, the training state for resuming (`charnn.store.trainstate`). `write_checkpoint`
writes the pair; `load_model` reads the model file back and never unpickles: the header is checked against the
shapes the config implies before a weight byte is allocated. Weights are stored in fp32, or in 16 bits for a
model shipped small (`charnn.store.bundled`), and are fp32 once loaded. Where checkpoints live in a run
directory, and which to load or prune, is `charnn.store.rundir`'s work.
"""

from __future__ import annotations

import hashlib
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
from charnn.errors import CheckpointError, CheckpointWriteError
from charnn.model import CharRNN
from charnn.shapes import state_shapes
from charnn.store.files import atomic_write
from charnn.store.meta import FORMAT, MAX_EVAL_SEGMENT, CheckpointMeta, meta_json, meta_strings, parse_meta
from charnn.textfile import remember_input

MAX_HEADER_BYTES = 64 << 20
# safetensors' dtype names of the weights a model file may hold; training writes F32
WEIGHT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


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
    dtype: torch.dtype = torch.float32,
) -> bytes:
    """The safetensors file for `model`: its weights in `dtype` (one of WEIGHT_DTYPES), their sha256, and the
    `CheckpointMeta` made of the arguments and `model.cfg`."""
    from safetensors.torch import save

    if dtype not in WEIGHT_DTYPES.values():
        raise ValueError(f"model files store weights as {', '.join(map(str, WEIGHT_DTYPES.values()))}, not {dtype}")
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
        t = v.detach().to(dtype).contiguous().cpu()
        if t.untyped_storage().data_ptr() in stored:  # tied weights: safetensors refuses shared storage
            t = t.clone()
        stored.add(t.untyped_storage().data_ptr())
        tensors[k] = t
    checksums = {k: hashlib.sha256(_tensor_bytes(v)).hexdigest() for k, v in tensors.items()}
    return save(tensors, metadata={**meta_strings(meta), "checksums": json.dumps(checksums)})


def write_checkpoint(
    path: str | os.PathLike,
    model: CharRNN,
    vocab: Vocab,
    data_cfg: DataConfig,
    *,
    step: int,
    val_loss: float | None,
    corpus_sha256: str,
    state: dict[str, Any] | None,
    corpus_path: str | None = None,
    corpus_cache: str | None = None,
    train_cfg: TrainConfig | None = None,
    owner: str | os.PathLike | None = None,
) -> None:
    """Write a checkpoint at `path`: the training state `state` (when given) beside it first, then the model
    file, which is the commit record: it holds the state's sha256. Each write is atomic (`atomic_write`; `owner`:
    the run directory whose training this is, the only writer allowed inside a run).

    The keywords are the model file's `CheckpointMeta` fields (`model_bytes`). Non-finite weights are refused
    before anything is written; a model file that fails to write takes its new state file with it.
    """
    from charnn.store.trainstate import state_bytes, state_path  # writing only: loading does without it

    path = Path(path)
    for p in model.parameters():
        if not torch.isfinite(p).all():
            raise CheckpointError("refusing to save a checkpoint with non-finite parameters")
    state_sha256 = None
    if state is not None:
        blob = state_bytes(state)
        atomic_write(state_path(path), blob, owner=owner)
        state_sha256 = hashlib.sha256(blob).hexdigest()
    try:
        atomic_write(
            path,
            model_bytes(
                model,
                vocab,
                data_cfg,
                step=step,
                val_loss=val_loss,
                corpus_sha256=corpus_sha256,
                corpus_path=corpus_path,
                corpus_cache=corpus_cache,
                train_cfg=train_cfg,
                state_sha256=state_sha256,
            ),
            owner=owner,
        )
    except CheckpointWriteError:
        if state is not None:  # a state without its model file is no checkpoint: give the full disk its space back
            state_path(path).unlink(missing_ok=True)
        raise


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str], int, int]:
    """Parse and bound-check a safetensors header without reading the weights.

    Returns (tensor entries, metadata, data offset, file size). Raises CheckpointError for anything that is
    not a well-formed safetensors file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            remember_input(path, os.fstat(f.fileno()))  # no output of this command may land on it
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
    path = Path(path)
    header, strings, data_start, size = read_header(path)
    meta = parse_meta(strings, path)
    model_cfg, vocab = meta.model_cfg, meta.vocab
    if len(vocab) > 1 << 21:
        raise CheckpointError(f"{path}: vocabulary of {len(vocab)} symbols is implausible")
    expected = state_shapes(model_cfg, len(vocab))  # arithmetic: a crafted huge config costs nothing here
    spans = _tensor_spans(header, expected, size - data_start, path)
    blob = _verified_bytes(path, strings, spans, data_start, size)
    tensors = _weights(blob, model_cfg, path)
    model = CharRNN(model_cfg, len(vocab))
    model.load_state_dict(tensors, strict=True)  # with tie_weights the module keeps its one shared Parameter
    model.to(device).eval()
    return LoadedModel(model, path, meta)


def _tensor_spans(
    header: dict[str, Any], expected: dict[str, tuple[int, ...]], data_len: int, path: Path
) -> list[tuple[int, int, str]]:
    """(start, end, name) of each tensor's bytes after the header, once its entry matches the shape the config
    implies, its dtype is one of WEIGHT_DTYPES and its offsets lie inside the file."""
    if set(header) != set(expected):
        raise CheckpointError(f"{path}: tensors do not match the model config in the metadata")
    spans = []
    for name, shape in expected.items():
        entry = header[name]
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("dtype"), str)  # a list or an object is no dtype name (and not hashable)
            or entry["dtype"] not in WEIGHT_DTYPES
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
            or offsets[1] - offsets[0] != WEIGHT_DTYPES[entry["dtype"]].itemsize * math.prod(shape)
        ):
            raise CheckpointError(f"{path}: tensor {name!r} has bad data offsets (the file is truncated or corrupt)")
        spans.append((offsets[0], offsets[1], name))
    return spans


def _verified_bytes(
    path: Path, strings: dict[str, str], spans: list[tuple[int, int, str]], data_start: int, size: int
) -> bytes:
    """The whole file, read once, after every tensor's bytes matched the sha256 its metadata records."""
    checksums = meta_json(strings, "checksums", path)
    if not isinstance(checksums, dict) or set(checksums) != {name for _, _, name in spans}:
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
    return blob


def _weights(blob: bytes, model_cfg: ModelConfig, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of verified bytes in fp32, refused if any holds NaN or inf or the tied copies differ."""
    from safetensors.torch import load as st_load

    try:
        tensors = st_load(blob)
    except Exception as err:  # the library's own parse errors: still a bad file, not a bug of ours
        raise CheckpointError(f"{path}: unreadable safetensors data ({err})") from None
    tensors = {name: tensor.float() for name, tensor in tensors.items()}  # 16-bit weights compute in fp32
    for name, tensor in tensors.items():  # verified bytes can still be NaN: they would sample garbage
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: tensor {name!r} holds non-finite values (NaN or inf)")
    if model_cfg.tie_weights and not torch.equal(tensors["embed.weight"], tensors["head.weight"]):
        # Both copies load into the one shared Parameter, the last silently winning: refuse instead.
        raise CheckpointError(f"{path}: the tied embedding and output weights differ (the file was altered)")
    return tensors
