"""How far back a trained model looks: for a passage, the mean norm of the gradient of the loss at step t with
respect to the input at step t - k, against k, and the same for the cell path (an LSTM's cell state c, a GRU's
state h), by autograd over the model's own weights stepped with the readable cells of `charnn.model`. Numbers
only, and the weights are left alone: `charnn.report` draws the curves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from charnn.model import CharRNN, Hidden, LayerWeights, gru_cell, layer_weights, lstm_cell, rnn_cell, run_rnn

MAX_BACK = 256  # k runs from 0 to this many characters back
ANCHORS = 32  # losses whose gradients are averaged

State = tuple[torch.Tensor, ...]
# One time step: (x_t (B, I), the state before it) -> (the step's output (B, H), the state after it).
Step = Callable[[torch.Tensor, State], tuple[torch.Tensor, State]]


@dataclass(frozen=True)
class WindowGradients:
    """Gradient norms of B losses, one per window, each with respect to every step of its own window."""

    inputs: torch.Tensor  # (B, K+1): ||dL_b / dx_{t_b - k}||, column k
    states: list[torch.Tensor]  # per component of the state, (B, K+1): ||dL_b / state_{t_b - k}||


def window_gradients(
    step: Step, x: torch.Tensor, state: State, loss: Callable[[torch.Tensor], torch.Tensor]
) -> WindowGradients:
    """B windows at once. x (B, K+1, I): each window's inputs, its anchor step last; `state`: the state
    before each window's first step; `loss(out)` -> (B,): the loss at each anchor from the last output.

    One backward pass of the summed losses gives every number: the rows never mix, so row b of the gradient
    of the sum is the gradient of L_b alone (a vector-Jacobian product per anchor, all B in one pass). The
    gradient with respect to a state is that tensor's adjoint: what backpropagation carries through it,
    whichever way it leaves (for an LSTM's c_t: into c_{t+1} and into h_t).
    """
    x = x.detach().requires_grad_(True)
    state = tuple(s.detach() for s in state)
    states = []
    for s in range(x.shape[1]):
        out, state = step(x[:, s], state)
        states.append(state)
    flat = [v for st in states for v in st if v.requires_grad]  # a state that ignores x has no gradient
    # autograd.grad, not backward(): nothing accumulates in any parameter's .grad
    found = torch.autograd.grad(loss(out).sum(), [x, *flat], allow_unused=True)
    by_id = {id(v): g for v, g in zip(flat, found[1:], strict=True)}
    zeros = x.new_zeros(x.shape[0])
    per_state = []
    for j in range(len(state)):
        norms = [zeros if by_id.get(id(st[j])) is None else by_id[id(st[j])].norm(dim=-1) for st in states]
        per_state.append(torch.stack(norms, dim=1).flip(1))  # (B, K+1), column k = K - position
    return WindowGradients(found[0].norm(dim=-1).flip(1), per_state)


# --- a CharRNN ------------------------------------------------------------------------------------------


def model_step(model: CharRNN) -> Step:
    """All layers of `model` for one step with the readable cells; the state is (h, c) per layer for an LSTM,
    (h,) per layer otherwise, bottom layer first. The weights are detached: only the inputs and states need
    gradients, and the model's parameters are never touched."""
    kind = model.cfg.model
    weights = [
        LayerWeights(*(w.detach().float() for w in layer_weights(model.rnn, k))) for k in range(model.cfg.layers)
    ]
    per = 2 if kind == "lstm" else 1

    def step(x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        new: list[torch.Tensor] = []
        for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
            h = state[per * k]
            x_proj = torch.addmm(b_ih, x, w_ih.T)  # (B, G*H)
            h_proj = torch.addmm(b_hh, h, w_hh.T)  # (B, G*H)
            if kind == "lstm":
                x, c = lstm_cell(x_proj, h_proj, state[per * k + 1])
                new += [x, c]
            else:
                x = gru_cell(x_proj, h_proj, h) if kind == "gru" else rnn_cell(x_proj, h_proj)
                new.append(x)
        return x, tuple(new)

    return step


def path_names(model: CharRNN) -> dict[int, str]:
    """The state components whose curves are shown, by index in `model_step`'s state: an LSTM's cell c of
    each layer; a GRU's h of each layer (its one state, which is its cell: h = z * h + (1 - z) * n is the
    LSTM's c = f * c + i * g with the gates coupled); none for a plain RNN."""
    kind, layers = model.cfg.model, model.cfg.layers
    if kind == "lstm":
        return {2 * k + 1: f"cell c, layer {k + 1}" for k in range(layers)}
    if kind == "gru":
        return {k: f"state h, layer {k + 1}" for k in range(layers)}
    return {}


def _flat_state(model: CharRNN, hidden: Hidden | None, like: torch.Tensor) -> State:
    """nn.LSTM's (h, c) or nn.GRU's h, each (L, 1, H) (None: zeros) -> `model_step`'s state for one row."""
    if hidden is None:
        zeros = like.new_zeros(model.cfg.hidden)
        return (zeros,) * (model.cfg.layers * (2 if model.cfg.model == "lstm" else 1))
    parts = hidden if isinstance(hidden, tuple) else (hidden,)
    return tuple(p[k, 0].float() for k in range(model.cfg.layers) for p in parts)


@torch.no_grad()
def _states_before(model: CharRNN, inputs: torch.Tensor, starts: list[int]) -> State:
    """The model's state before reading inputs[s] (T, E), for each s of the ascending `starts`, stacked
    (B, H); read with the fused layers in one pass over the passage."""
    hidden, pos, rows = None, 0, []
    for s in starts:
        if s > pos:
            _, hidden = run_rnn(model.rnn, inputs[None, pos:s], hidden)
            pos = s
        rows.append(_flat_state(model, hidden, inputs))
    return tuple(torch.stack(parts) for parts in zip(*rows, strict=True))


@dataclass(frozen=True)
class Memory:
    """How the loss at a step depends on what came k steps before, averaged over `anchors` steps."""

    kind: str  # lstm, gru or rnn
    inputs: np.ndarray  # (K+1,): mean ||dL_t / dx_{t-k}|| over the anchors, x the embedding output
    paths: dict[str, np.ndarray]  # name -> (K+1,): mean ||dL_t / state_{t-k}|| (see `path_names`)
    steps: np.ndarray  # the anchors t

    @property
    def anchors(self) -> int:
        return len(self.steps)

    @property
    def max_back(self) -> int:
        return len(self.inputs) - 1


@contextmanager
def _quiet_cpu() -> Iterator[None]:
    """One thread, subnormal floats flushed to zero. The ops are small (B rows): on 2 shared cores a second
    thread made this 10x slower (as in charnn.inspect). Gradients far back decay into subnormals, which the
    CPU handles slowly (a GRU took 4x longer); below 1e-38, they change nothing a plot can show."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)  # the default; torch has no getter to restore another setting
        torch.set_num_threads(threads)


def memory(model: CharRNN, ids: np.ndarray, *, max_back: int = MAX_BACK, anchors: int = ANCHORS) -> Memory:
    """The curves of a passage `ids`. L_t is the loss of predicting ids[t+1] after reading ids[t]; k = 0 is
    ids[t] itself, which reaches L_t through every layer in the same step, so a model with no recurrence has
    gradient at k = 0 only. The anchors t are spread evenly over the passage where a whole window of
    `max_back` + 1 steps fits (a shorter passage shortens the window); the state before each window is the
    model's after reading the passage up to there."""
    model.eval()
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) < 2:
        raise ValueError("need at least 2 characters: one to read and one to predict")
    back = min(max_back, len(ids) - 2)
    ends = np.unique(np.linspace(back, len(ids) - 2, max(1, anchors)).round().astype(np.int64))
    starts = (ends - back).tolist()
    x_all = torch.as_tensor(ids, device=model.head.weight.device)
    targets = x_all[ends + 1]

    def loss(out: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model.output(out).float(), targets, reduction="none")

    with _quiet_cpu():
        with torch.no_grad():
            inputs = model.embed(x_all).float()  # (T, E)
        state = _states_before(model, inputs, starts)
        windows = torch.stack([inputs[s : s + back + 1] for s in starts])  # (B, K+1, E)
        grads = window_gradients(model_step(model), windows, state, loss)
    paths = {name: grads.states[j].mean(0).cpu().numpy() for j, name in path_names(model).items()}
    return Memory(model.cfg.model, grads.inputs.mean(0).cpu().numpy(), paths, ends)


def reach(curve: np.ndarray, *, fraction: float = 0.01) -> int:
    """The largest k at which `curve` is still at least `fraction` of its largest value."""
    above = np.nonzero(curve >= fraction * curve.max())[0] if curve.size and curve.max() > 0 else [0]
    return int(above[-1])


def log_spaced(max_back: int, *, per_decade: int = 24) -> np.ndarray:
    """k = 0, 1, 2, ... then about `per_decade` values per factor of ten up to `max_back`, for plotting."""
    if max_back < 1:
        return np.zeros(1, dtype=np.int64)
    ks = np.rint(np.logspace(0, np.log10(max_back), max(2, int(per_decade * np.log10(max_back)) + 1)))
    return np.unique(np.concatenate([[0], ks.astype(np.int64), [max_back]]))
