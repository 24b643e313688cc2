"""What an exported model carries besides its graph: the model's cell layout table in the form the page's
JavaScript reads, the state names (also the ONNX graph's), a description of the model (config, vocabulary,
provenance) and its weights as one little-endian buffer. No HTML and no ONNX here.
"""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass
from typing import Any

import numpy as np

from charnn.config import DataConfig, ModelConfig, TrainConfig, to_dict
from charnn.errors import ConfigError
from charnn.shapes import CELLS, num_parameters
from charnn.store.checkpoint import LoadedModel

# The state each layer carries: nn.LSTM's (h, c), the others' h. Names of the ONNX graph's state inputs.
STATE_NAMES: dict[str, tuple[str, ...]] = {"lstm": ("h", "c"), "gru": ("h",), "rnn": ("h",)}

# The model's cell layout table (charnn.shapes.CELLS) as the page's JavaScript reads it: per kind, the gate blocks
# of weight_ih_l*/weight_hh_l* in row order, those squashed by a sigmoid (the others are tanh), the state names.
CELL_LAYOUT: dict[str, dict[str, list[str]]] = {
    kind: {"blocks": list(cell.blocks), "gates": list(cell.gates), "state": list(STATE_NAMES[kind])}
    for kind, cell in CELLS.items()
}

PRECISIONS = ("fp32", "fp16")
FP16_MAX = 65504.0
NOT_FLAGS = {"device", "threads", "eval_segment", "sample_temperature", "max_bad_steps"}  # not train options


@dataclass(frozen=True)
class Weights:
    """The model's tensors in one buffer: `entries` say where each one is, in elements of `dtype`."""

    entries: list[dict[str, Any]]  # {"name", "shape", "offset"}; a tied head.weight is absent
    dtype: str  # "float32" or "float16"
    data: bytes  # little-endian

    def base64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")


def model_weights(loaded: LoadedModel, precision: str = "fp32") -> Weights:
    """The state dict as one little-endian buffer; with tied weights, head.weight is stored once (as embed)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    dtype = np.dtype("<f4") if precision == "fp32" else np.dtype("<f2")
    entries, chunks, offset = [], [], 0
    for name, tensor in loaded.model.state_dict().items():
        if name == "head.weight" and loaded.model_cfg.tie_weights:
            continue
        array = tensor.detach().float().cpu().numpy()
        if precision == "fp16" and np.abs(array).max(initial=0.0) > FP16_MAX:
            raise ConfigError(
                f"--precision fp16: {name} holds values beyond fp16's range ({FP16_MAX:g}); export in fp32"
            )
        chunks.append(array.astype(dtype).tobytes())
        entries.append({"name": name, "shape": list(array.shape), "offset": offset})
        offset += array.size
    return Weights(entries, "float32" if precision == "fp32" else "float16", b"".join(chunks))


def symbol_names(loaded: LoadedModel) -> list[str]:
    """How each vocabulary symbol is shown: itself, or an escape for control characters and raw bytes."""
    out = []
    for s in loaded.vocab.symbols:
        if loaded.vocab.bytes_mode and not 32 <= s < 127:
            out.append({9: "\\t", 10: "\\n"}.get(s, f"\\x{s:02x}"))
            continue
        ch = chr(s)
        out.append(
            {"\n": "\\n", "\t": "\\t", " ": "␣"}.get(ch)
            or (ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii"))
        )
    return out


def trained_with(loaded: LoadedModel) -> str:
    """A `charnn train` command equivalent to the one that trained the model, from the checkpoint's configs:
    every option whose value differs from its field's default is spelled out, so the command does not depend
    on what the training plan would choose for another corpus."""
    corpus = loaded.meta.corpus_path or "CORPUS"
    args = ["charnn", "train", corpus.replace("\\", "/").rsplit("/", 1)[-1]]
    base_model, base_train = ModelConfig(), TrainConfig()
    pairs = [(base_model, loaded.model_cfg), (DataConfig(), loaded.data_cfg)]
    if loaded.meta.train_cfg is not None:
        pairs.append((base_train, loaded.meta.train_cfg))
    for base, cfg in pairs:
        defaults = to_dict(base)
        for key, value in to_dict(cfg).items():
            if key in NOT_FLAGS or value is None or value == defaults.get(key):
                continue
            flag = "--bytes" if key == "bytes_mode" else "--" + key.replace("_", "-")
            args += [flag] if value is True else [f"--no-{flag[2:]}"] if value is False else [flag, str(value)]
    return shlex.join(args)


def describe(loaded: LoadedModel, weights: Weights | None) -> dict[str, Any]:
    """Everything the page needs besides the weight bytes: config, layout, vocabulary and provenance (no
    `tensors` without `weights`: a page that asks a server)."""
    cfg = loaded.model_cfg
    return {
        "name": loaded.path.parent.name or loaded.path.name,
        "checkpoint": loaded.path.name,
        "step": loaded.step,
        "val_loss": loaded.val_loss,
        "parameters": num_parameters(cfg, len(loaded.vocab)),
        "config": to_dict(cfg),
        "layout": CELL_LAYOUT,
        "layer_norm_eps": getattr(loaded.model.ln, "eps", None),  # the model's nn.LayerNorm, when it has one
        "vocab": {
            "symbols": list(loaded.vocab.symbols),
            "bytes": loaded.vocab.bytes_mode,
            "names": symbol_names(loaded),
        },
        "trained_with": trained_with(loaded),
        "tensors": weights.entries if weights else [],
        "dtype": weights.dtype if weights else None,
    }
