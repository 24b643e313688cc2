"""ONNX export: the model as a step graph (ids (B, T) and the recurrent state in; logits (B, T, V) and the new state
out; batch and time dynamic) with the vocabulary and configs in its metadata, checked against PyTorch with
onnxruntime before it is written. Needs the optional `onnx` and `onnxruntime` packages (`charnn[onnx]`).
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from charnn.config import to_dict
from charnn.errors import CharnnError
from charnn.export.output import check_target, write_output
from charnn.export.spec import STATE_NAMES
from charnn.model import CharRNN
from charnn.store.checkpoint import LoadedModel

FORMAT = "charnn-onnx/1"
OPSET = 17
PARITY_TOLERANCE = 1e-4  # max absolute logit difference onnxruntime may show against PyTorch at export


class MissingExtraError(CharnnError):
    """An optional dependency of the asked-for feature is not installed."""


class ExportCheckError(CharnnError):
    """The exported graph does not reproduce the model's logits."""


def require_onnx():
    """The onnx and onnxruntime modules, or one line saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise MissingExtraError(
            f"ONNX export needs the {err.name or 'onnx'} package: pip install 'charnn[onnx]'"
        ) from None
    return onnx, onnxruntime


class StepModel(nn.Module):
    """`CharRNN` with its state as explicit tensors: (ids, h[, c]) -> (logits, h_out[, c_out]), each state
    tensor shaped (layers, B, hidden), named as STATE_NAMES says."""

    def __init__(self, model: CharRNN) -> None:
        super().__init__()
        self.model = model
        self.lstm = model.cfg.model == "lstm"

    def forward(self, ids: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None = None):
        logits, hidden = self.model(ids, (h, c) if self.lstm else h)  # (B, T, V)
        return (logits, *hidden) if self.lstm else (logits, hidden)


def _names(kind: str) -> tuple[list[str], list[str]]:
    state = STATE_NAMES[kind]
    return ["ids", *state], ["logits", *(f"{s}_out" for s in state)]


def _example(loaded: LoadedModel, batch: int, time: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random ids and a random state (zeros would hide a state input the graph ignored)."""
    gen = torch.Generator().manual_seed(seed)
    cfg = loaded.model_cfg
    ids = torch.randint(0, len(loaded.vocab), (batch, time), generator=gen)
    state = [torch.randn(cfg.layers, batch, cfg.hidden, generator=gen) * 0.5 for _ in STATE_NAMES[cfg.model]]
    return (ids, *state)


def onnx_bytes(loaded: LoadedModel) -> bytes:
    """The serialized ONNX step model with charnn's metadata (TorchScript exporter, opset 17)."""
    onnx, _ = require_onnx()
    step = StepModel(loaded.model).eval()
    inputs, outputs = _names(loaded.model_cfg.model)
    dynamic = {"ids": {0: "batch", 1: "time"}, "logits": {0: "batch", 1: "time"}}
    dynamic.update({name: {1: "batch"} for name in inputs[1:] + outputs[1:]})
    buf = io.BytesIO()
    # The TorchScript exporter: the dynamo one needs onnxscript, and exports nn.LSTM less reliably.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice and its batch-size advice for RNNs
        torch.onnx.export(
            step,
            _example(loaded, 2, 3),
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
        )
    graph = onnx.load_from_string(buf.getvalue())
    for key, value in metadata(loaded).items():
        graph.metadata_props.add(key=key, value=value)
    graph.doc_string = "charnn step model: (ids, state) -> (logits, new state); see metadata_props"
    return graph.SerializeToString()


def metadata(loaded: LoadedModel) -> dict[str, str]:
    """The ONNX model's metadata_props: what a program needs to encode text and carry the state."""
    return {
        "charnn.format": FORMAT,
        "charnn.vocab": loaded.vocab.to_json(),  # {"symbols": [code points or byte values], "bytes": bool}
        "charnn.model_config": json.dumps(to_dict(loaded.model_cfg)),
        "charnn.data_config": json.dumps(to_dict(loaded.data_cfg)),
        "charnn.state": json.dumps(STATE_NAMES[loaded.model_cfg.model]),
        "charnn.step": str(loaded.step),
        "charnn.val_loss": "none" if loaded.val_loss is None else repr(float(loaded.val_loss)),
        "charnn.source": loaded.path.name,
    }


def max_logit_error(loaded: LoadedModel, model_bytes: bytes, *, batch: int = 3, time: int = 5) -> float:
    """Max |logits| difference between onnxruntime and PyTorch over two calls with the state carried."""
    _, ort = require_onnx()
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    first = _example(loaded, batch, time, seed=1)
    second = _example(loaded, batch, time, seed=2)[0]
    worst, state_pt, state_ort = 0.0, first[1:], [t.numpy() for t in first[1:]]
    for ids in (first[0], second):
        with torch.no_grad():
            logits_pt, *state_pt = StepModel(loaded.model).eval()(ids, *state_pt)
        logits_ort, *state_ort = session.run(None, dict(zip(names, [ids.numpy(), *state_ort], strict=True)))
        worst = max(worst, float((torch.from_numpy(logits_ort) - logits_pt).abs().max()))
    return worst


def export_onnx(loaded: LoadedModel, path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write the ONNX step model of `loaded` to `path`, after checking onnxruntime reproduces PyTorch's logits."""
    check_target(path, force=force)
    require_onnx()
    data = onnx_bytes(loaded)
    error = max_logit_error(loaded, data)
    if not error <= PARITY_TOLERANCE:
        raise ExportCheckError(
            f"the ONNX graph's logits differ from the model's by {error:.2g} "
            f"(more than {PARITY_TOLERANCE:g}); not written"
        )
    return write_output(path, data, force=force)
