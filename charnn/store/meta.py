"""The typed metadata record of a model file (`CheckpointMeta`): what it holds, how it is written into the
safetensors header's strings, and how those strings are read back and checked. No file access:
`charnn.store.checkpoint` reads and writes the files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from charnn.config import DataConfig, ModelConfig, TrainConfig, default_of, from_dict, to_dict
from charnn.data import Vocab
from charnn.errors import CharnnError, CheckpointError
from charnn.version import __version__

MAX_EVAL_SEGMENT = 1 << 20  # scoring allocates (rows, segment) ids: a crafted value must not allocate or crash
FORMAT = "charnn-model/1"


# --- the metadata record --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointMeta:
    """What a model file records beside its weights. `meta_strings` writes it, `parse_meta` reads it back.

    On disk each field is one string of the safetensors metadata (configs and vocabulary as JSON) under the
    key files have always used, so files written before this record existed read the same.
    """

    model_cfg: ModelConfig
    data_cfg: DataConfig
    vocab: Vocab
    step: int = 0
    val_loss: float | None = None  # None: not evaluated (no validation split, or saved when interrupted)
    corpus_sha256: str = ""
    # Where training read and cached its corpus: provenance to show, never a path to open. Anyone can write a
    # model file; what eval reads is chosen by the run directory and the user (`charnn.evaluate.validation_ids`).
    corpus_path: str | None = None  # the training corpus, absolute
    corpus_cache: str | None = None  # the corpus cache directory training used ("": none)
    train_cfg: TrainConfig | None = None  # None in files saved without it: eval_segment takes its default
    state_sha256: str | None = None  # the resume state saved beside the file; None: nothing to resume from
    charnn_version: str = __version__
    torch_version: str = torch.__version__

    @property
    def eval_segment(self) -> int:
        """The validation segment length training scored with."""
        if self.train_cfg is None:
            return default_of(TrainConfig, "eval_segment")
        return self.train_cfg.eval_segment


def meta_strings(meta: CheckpointMeta) -> dict[str, str]:
    """The record as safetensors metadata: every value a string; optional fields only when set."""
    strings = {
        "format": FORMAT,
        "charnn_version": meta.charnn_version,
        "torch_version": meta.torch_version,
        "model_config": json.dumps(to_dict(meta.model_cfg)),
        "data_config": json.dumps(to_dict(meta.data_cfg)),
        "vocab": meta.vocab.to_json(),
        "corpus_sha256": meta.corpus_sha256,
        "step": str(meta.step),
        "val_loss": "none" if meta.val_loss is None else repr(float(meta.val_loss)),
    }
    optional = {
        "corpus_path": meta.corpus_path,
        "corpus_cache": meta.corpus_cache,
        "train_config": None if meta.train_cfg is None else json.dumps(to_dict(meta.train_cfg)),
        "state_sha256": meta.state_sha256,
    }
    strings.update({k: v for k, v in optional.items() if v is not None})
    return strings


def parse_meta(strings: dict[str, str], path: Path) -> CheckpointMeta:
    """The record from a file's metadata strings, each value checked; CheckpointError naming `path` for
    anything charnn would not have written (a crafted or damaged file)."""
    try:
        model_cfg = _typed(ModelConfig, meta_json(strings, "model_config", path), path)
        data_cfg = _typed(DataConfig, meta_json(strings, "data_config", path), path)
        vocab = Vocab.from_json(strings["vocab"])
        step = int(strings.get("step", "0"))
        val = strings.get("val_loss", "none")
        val_loss = None if val == "none" else float(val)
        train_cfg = _train_config(strings, path)
    except CheckpointError:
        raise
    except (CharnnError, KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: invalid checkpoint metadata ({err})") from None
    return CheckpointMeta(
        model_cfg,
        data_cfg,
        vocab,
        step=step,
        val_loss=val_loss,
        corpus_sha256=strings.get("corpus_sha256", ""),
        corpus_path=strings.get("corpus_path"),
        corpus_cache=strings.get("corpus_cache"),
        train_cfg=train_cfg,
        state_sha256=strings.get("state_sha256"),
        charnn_version=strings.get("charnn_version", ""),
        torch_version=strings.get("torch_version", ""),
    )


def meta_json(strings: dict[str, str], key: str, path: Path) -> Any:
    try:
        return json.loads(strings[key])
    except (KeyError, ValueError, RecursionError):
        raise CheckpointError(f"{path}: checkpoint metadata {key!r} is missing or unreadable") from None


def _train_config(strings: dict[str, str], path: Path) -> TrainConfig | None:
    """The training options, in files that record them (eval needs their eval_segment)."""
    if "train_config" not in strings:
        return None
    try:
        data = json.loads(strings["train_config"])
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: unreadable train_config in the checkpoint metadata")
    return _typed(TrainConfig, data, path)


def _typed(cls: type, data: Any, path: Path) -> Any:
    """`from_dict`, which checks each value's type as well as its bounds: a crafted `"hidden": "16"` or
    `"encoding": 5` would otherwise fail later with a traceback."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {cls.__name__} in the metadata is not a JSON object")
    return from_dict(cls, data, where=cls.__name__)
