"""What a trained model does on a passage: per-character surprise and top-5 predictions, every layer's
hidden and cell activations and gate values (a step loop over the model's own weights), gate saturation, and
the units whose activation follows simple properties of the text (Karpathy, Johnson & Fei-Fei 2015,
"Visualizing and Understanding Recurrent Networks"). Numbers only: `charnn.report` draws them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from charnn.model import CharRNN, gate_values, gru_cell, layer_weights, lstm_cell, rnn_cell
from charnn.runtime import wide_float
from charnn.shapes import CELLS

LEFT, RIGHT = 0.1, 0.9  # saturation thresholds of the 2015 paper's gate plots


@dataclass(frozen=True)
class LayerTrace:
    """One layer's states after reading each character: T positions, H units."""

    hidden: np.ndarray  # (T, H) h_t
    cell: np.ndarray | None  # (T, H) c_t for an LSTM, else None
    gates: dict[str, np.ndarray]  # gate name -> (T, H) values in (0, 1)


@dataclass(frozen=True)
class Trace:
    """A passage run through the model one character at a time.

    Position t holds the state after reading ids[t] and `logits[t]` predicts ids[t + 1]. The state is reset
    to zero every `segment` characters, exactly as `charnn.evaluate` scores text, so the losses agree.
    """

    ids: np.ndarray  # (T,)
    logits: torch.Tensor  # (T, V)
    layers: list[LayerTrace]
    segment: int


@torch.inference_mode()
def trace(model: CharRNN, ids: np.ndarray, *, segment: int = 4096) -> Trace:
    """Run `model` over `ids` layer by layer with the readable cells of `charnn.model`, keeping every state
    and gate.

    nn.LSTM returns only the top layer's outputs and never its gates, so each layer is stepped here from its
    `weight_ih_l{k}`/`weight_hh_l{k}`/biases. The input projection of a whole layer is one matmul; only the
    recurrent part loops over time. `tests/test_report.py` checks the logits equal the model's own.
    """
    model.eval()
    x = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=model.head.weight.device)
    inputs = model.embed(x).float()  # (T, E)
    layers = []
    for k in range(model.cfg.layers):
        threads = torch.get_num_threads()
        # One-row ops gain nothing from worker threads, and on a busy CPU their synchronisation made
        # this loop 40x slower (80 s instead of 2 s for 5,000 characters on 2 shared cores).
        torch.set_num_threads(1)
        try:
            inputs, cells, gates = _run_layer(model, k, inputs, segment)  # dropout between layers is off in eval
        finally:
            torch.set_num_threads(threads)
        layers.append(
            LayerTrace(
                inputs.cpu().numpy(),
                None if cells is None else cells.cpu().numpy(),
                {name: g.cpu().numpy() for name, g in gates.items()},
            )
        )
    logits = model.output(inputs)  # (T, V): layer norm (if on) and the head; the dropouts are off in eval
    return Trace(np.asarray(ids), logits, layers, segment)


def _run_layer(
    model: CharRNN, k: int, inputs: torch.Tensor, segment: int
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
    """Layer k over inputs (T, I), one step at a time from a zero state at the start of every segment
    -> h (T, H), c (T, H) for an LSTM (else None), and the gates by name, each (T, H)."""
    kind, cell = model.cfg.model, CELLS[model.cfg.model]
    w_ih, w_hh, b_ih, b_hh = (w.float() for w in layer_weights(model.rnn, k))
    x_proj = inputs @ w_ih.T + b_ih  # (T, G*H)
    if not cell.hh_bias_apart:  # only x_proj + h_proj counts: b_hh joins the input side, outside the loop
        x_proj, b_hh = x_proj + b_hh, None
    steps, size = x_proj.shape[0], w_hh.shape[1]
    h_proj = torch.empty_like(x_proj)  # (T, G*H): W_hh h (+ b_hh) of every step, kept for the gates
    hs, cs = [], []
    for t in range(steps):
        if t % segment == 0:  # a new evaluation segment starts from a zero state
            h = c = x_proj.new_zeros(size)
        if b_hh is None:
            torch.mv(w_hh, h, out=h_proj[t])
        else:
            torch.addmv(b_hh, w_hh, h, out=h_proj[t])
        if kind == "lstm":
            h, c = lstm_cell(x_proj[t], h_proj[t], c)
            cs.append(c)
        elif kind == "gru":
            h = gru_cell(x_proj[t], h_proj[t], h)
        else:
            h = rnn_cell(x_proj[t], h_proj[t])
        hs.append(h)
    return torch.stack(hs), torch.stack(cs) if cs else None, gate_values(kind, x_proj, h_proj)  # gates at once


# --- surprise -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Surprise:
    """Loss of each character given its left context, and what the model expected there.

    `loss[t]` (nats) scores ids[t + 1]; `top_ids[t]`/`top_probs[t]` are the k likeliest next characters after
    reading ids[t]. Their mean is `charnn eval`'s nats/char on the same text with the same segment length.
    """

    loss: np.ndarray  # (T-1,)
    top_ids: np.ndarray  # (T-1, k)
    top_probs: np.ndarray  # (T-1, k)

    @property
    def mean(self) -> float:
        return float(self.loss.mean()) if len(self.loss) else math.nan


def surprise(tr: Trace, *, k: int = 5) -> Surprise:
    logp = torch.log_softmax(tr.logits[:-1].to(wide_float(tr.logits.device)), dim=-1)  # (T-1, V)
    targets = torch.as_tensor(tr.ids[1:].astype(np.int64), device=logp.device)
    loss = -logp.gather(1, targets[:, None])[:, 0]
    top = logp.topk(min(k, logp.shape[1]), dim=-1)
    return Surprise(loss.cpu().numpy(), top.indices.cpu().numpy(), top.values.exp().cpu().numpy())


# --- gate saturation ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateStats:
    """How often a gate is left-saturated (< 0.1), right-saturated (> 0.9) or in between."""

    layer: int
    gate: str
    left: float  # fraction of all (time, unit) values
    right: float
    middle: float
    unit_left: np.ndarray  # (H,) per-unit fractions, the paper's scatter
    unit_right: np.ndarray  # (H,)


def gate_stats(tr: Trace) -> list[GateStats]:
    out = []
    for k, layer in enumerate(tr.layers):
        for name, values in layer.gates.items():
            left, right = values < LEFT, values > RIGHT  # (T, H)
            lo, hi = float(left.mean()), float(right.mean())
            out.append(GateStats(k, name, lo, hi, 1 - lo - hi, left.mean(axis=0), right.mean(axis=0)))
    return out


# --- the correlation finder -----------------------------------------------------------------------------


def text_properties(text: str) -> dict[str, np.ndarray]:
    """Simple properties of each position of `text`, each known from the text up to and including it.

    - inside quotes: an odd number of `"` read so far (the opening quote counts as inside);
    - position in line: characters since the last newline before this one;
    - inside brackets: more `([{` than `)]}` read so far;
    - after a newline: this character is a newline, so the next one starts a line.
    """
    n = len(text)
    quotes = np.zeros(n)
    column = np.zeros(n)
    brackets = np.zeros(n)
    newline = np.zeros(n)
    inside, col, depth = False, 0, 0
    for t, ch in enumerate(text):
        if ch == '"':
            inside = not inside
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(depth - 1, 0)
        quotes[t], column[t], brackets[t], newline[t] = inside, col, depth > 0, ch == "\n"
        col = 0 if ch == "\n" else col + 1
    return {
        "inside quotes": quotes,
        "position in line": column,
        "inside brackets": brackets,
        "after a newline": newline,
    }


@dataclass(frozen=True)
class UnitCorrelation:
    prop: str
    layer: int
    kind: str  # "hidden" or "cell"
    unit: int
    r: float  # Pearson correlation over the passage


@dataclass(frozen=True)
class Correlations:
    by_property: dict[str, list[UnitCorrelation]]  # strongest |r| first
    constant: list[str] = field(default_factory=list)  # properties with no variation in this passage


def unit_series(tr: Trace) -> list[tuple[int, str, np.ndarray]]:
    """Every (layer, kind, (T, H) activations) the explorer offers: h, and c for an LSTM."""
    out = []
    for k, layer in enumerate(tr.layers):
        out.append((k, "hidden", layer.hidden))
        if layer.cell is not None:
            out.append((k, "cell", layer.cell))
    return out


def pearson(acts: np.ndarray, prop: np.ndarray) -> np.ndarray:
    """Pearson r of each column of acts (T, H) with prop (T,); 0 for a constant column."""
    a = acts - acts.mean(axis=0)
    p = prop - prop.mean()
    denom = np.sqrt((a * a).sum(axis=0) * (p * p).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * p[:, None]).sum(axis=0) / denom
    return np.nan_to_num(r)


def find_correlated(
    series: list[tuple[int, str, np.ndarray]], props: dict[str, np.ndarray], *, top: int = 5
) -> Correlations:
    """The `top` units (of all layers and kinds) whose activation correlates most with each property."""
    by_property, constant = {}, []
    for name, prop in props.items():
        if prop.std() == 0:
            constant.append(name)
            continue
        found = []
        for layer, kind, acts in series:
            r = pearson(acts.astype(np.float64), prop.astype(np.float64))
            for unit in np.argsort(-np.abs(r))[:top]:
                found.append(UnitCorrelation(name, layer, kind, int(unit), float(r[unit])))
        found.sort(key=lambda u: -abs(u.r))
        by_property[name] = found[:top]
    return Correlations(by_property, constant)
