"""Gradient flow through time (charnn.memory) and its report panel: exact zeros where the recurrence is cut, the
analytic decay of a linear recurrence, agreement with autograd through the fused layers, and the cost."""

import json
import re
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from charnn.config import ModelConfig
from charnn.inspect import trace
from charnn.memory import log_spaced, memory, reach, window_gradients
from charnn.model import CharRNN
from charnn.report import build_report
from charnn.report.svg import ML, PW, Series, chart, fmt, log_ticks
from charnn.shapes import CELLS

E, H, V = 6, 8, 11  # embedding, hidden units, vocabulary


def _model(kind: str, layers: int) -> CharRNN:
    torch.manual_seed(0)
    return CharRNN(ModelConfig(model=kind, layers=layers, hidden=H, embed=E), V).eval()


def _ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, size=n)


# --- a linear recurrence: the analytic decay --------------------------------------------------------------


def _linear(a: torch.Tensor, u: torch.Tensor, k_max: int, batch: int = 3):
    """h_s = A h_{s-1} + x_s, L = u . h_t: dL/dx_{t-k} = dL/dh_{t-k} = (A^T)^k u."""

    def step(x, state):
        h = state[0] @ a.T + x
        return h, (h,)

    x = torch.randn(batch, k_max + 1, 2, dtype=torch.float64)
    state = (torch.randn(batch, 2, dtype=torch.float64),)
    return window_gradients(step, x, state, lambda out: out @ u)


def test_a_linear_recurrence_decays_as_the_powers_of_its_matrix():
    # A = rotation by 90 degrees times 1/2: |(A^T)^k u| = |u| / 2^k, exactly in binary floating point
    a = 0.5 * torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    u = torch.tensor([3.0, 4.0], dtype=torch.float64)
    grads = _linear(a, u, 40)
    expected = (5.0 * 0.5 ** torch.arange(41, dtype=torch.float64)).expand(3, -1)
    assert torch.equal(grads.inputs, expected)
    assert torch.equal(grads.states[0], expected)


def test_a_state_the_loss_never_reads_has_zero_gradient():
    def step(x, state):
        h = state[0] * 0.5 + x
        return h, (h, state[1], state[1] + x)  # a constant carried along, and a sum nobody reads

    x = torch.ones(2, 5, 3, dtype=torch.float64)
    grads = window_gradients(step, x, (torch.zeros(2, 3), torch.zeros(2, 3)), lambda out: out.sum(-1))
    assert torch.equal(grads.states[1], torch.zeros(2, 5)) and torch.equal(grads.states[2], torch.zeros(2, 5))
    assert torch.allclose(grads.inputs[0], 3**0.5 * 0.5 ** torch.arange(5.0, dtype=torch.float64))


def test_a_non_normal_recurrence_grows_before_it_decays():
    # A Jordan block: (A^T)^k has a^k on the diagonal and k a^(k-1) b off it, so the norm first rises
    a, b = 0.9, 1.0
    matrix = torch.tensor([[a, b], [0.0, a]], dtype=torch.float64)
    u = torch.tensor([1.0, 0.0], dtype=torch.float64)
    grads = _linear(matrix, u, 60)
    k = np.arange(61)
    expected = np.hypot(a**k, k * a ** np.maximum(k - 1, 0) * b)  # (A^T)^k u = (a^k, k a^(k-1) b)
    np.testing.assert_allclose(grads.inputs.numpy(), np.broadcast_to(expected, (3, 61)), rtol=1e-12)
    assert reach(grads.inputs[0].numpy()) > 0 and grads.inputs[0, 5] > grads.inputs[0, 0]


# --- planted models: exact zeros --------------------------------------------------------------------------


def _cut_recurrence(model: CharRNN) -> None:
    """Every recurrent weight zero and the gates that carry the state shut: an LSTM's forget gate and a
    GRU's update gate get bias -1e4, so sigmoid gives exactly 0 and so does its derivative."""
    kind = model.cfg.model
    shut = {"lstm": "forget", "gru": "update"}.get(kind)
    with torch.no_grad():
        for k in range(model.cfg.layers):
            getattr(model.rnn, f"weight_hh_l{k}").zero_()
            if shut:
                row = CELLS[kind].blocks.index(shut) * H
                getattr(model.rnn, f"bias_ih_l{k}")[row : row + H] = -1e4
                getattr(model.rnn, f"bias_hh_l{k}")[row : row + H] = 0


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_without_recurrence_only_the_character_just_read_has_a_gradient(kind, layers):
    """k = 0 is the character read at the loss's own step: it reaches the loss through every layer in that
    step, so a model of any depth with its recurrence cut has gradient at k = 0 and exactly none beyond."""
    model = _model(kind, layers)
    _cut_recurrence(model)
    mem = memory(model, _ids(80), max_back=20, anchors=4)
    assert mem.inputs[0] > 0 and np.all(mem.inputs[1:] == 0), mem.inputs[:4]
    assert len(mem.paths) == (0 if kind == "rnn" else layers)
    for name, curve in mem.paths.items():
        assert curve[0] > 0 and np.all(curve[1:] == 0), (name, curve[:4])


@pytest.mark.parametrize("layers", [1, 2])
def test_a_one_step_memory_per_layer_reaches_one_step_back_per_layer(layers):
    """Each layer's recurrent matrix has a single entry, unit 0 reading unit 1, so W D W = 0 for any
    diagonal D (the tanh slopes): a layer carries its input exactly one step further. The delays of stacked
    layers add: a 1-layer model sees k <= 1, a 2-layer one k <= 2."""
    model = _model("rnn", layers)
    with torch.no_grad():
        for k in range(layers):
            w_hh = getattr(model.rnn, f"weight_hh_l{k}")
            w_hh.zero_()
            w_hh[0, 1] = 1.5
    mem = memory(model, _ids(80), max_back=20, anchors=4)
    assert np.all(mem.inputs[: layers + 1] > 0) and np.all(mem.inputs[layers + 1 :] == 0), mem.inputs[:5]


# --- the real thing: equal to autograd through nn.LSTM / nn.GRU / nn.RNN ---------------------------------


def _fused_input_norms(model: CharRNN, ids: np.ndarray, t: int, back: int) -> torch.Tensor:
    x = model.embed(torch.as_tensor(ids[: t + 1])).detach().requires_grad_(True)  # (t+1, E)
    out, _ = model.rnn(x[None])
    loss = F.cross_entropy(model.output(out[0, -1:]), torch.as_tensor(ids[t + 1 : t + 2]))
    return torch.autograd.grad(loss, x)[0].norm(dim=-1).flip(0)[: back + 1]


def _fused_top_state_norm(model: CharRNN, ids: np.ndarray, t: int, k: int) -> float:
    """|dL_t / (top layer's state at t-k)| for k >= 1 through nn.LSTM/GRU: hand the state over at t-k.
    The top layer's h_{t-k} only feeds the recurrence (and L_{t-k}), so the handed-over gradient is its whole
    adjoint; an LSTM's c_{t-k} also feeds h_{t-k} = o tanh(c), whose share the step-loop trace supplies."""
    embed = model.embed(torch.as_tensor(ids[: t + 1])).detach()
    with torch.no_grad():
        _, hidden = model.rnn(embed[None, : t - k + 1])
    parts = [p.clone().requires_grad_(True) for p in (hidden if isinstance(hidden, tuple) else (hidden,))]
    out, _ = model.rnn(embed[None, t - k + 1 :], tuple(parts) if len(parts) == 2 else parts[0])
    loss = F.cross_entropy(model.output(out[0, -1:]), torch.as_tensor(ids[t + 1 : t + 2]))
    grads = [g[-1, 0] for g in torch.autograd.grad(loss, parts)]
    if len(grads) == 1:
        return float(grads[0].norm())
    top = trace(model, ids[: t + 1]).layers[-1]
    o, c = torch.as_tensor(top.gates["output"][t - k]), torch.as_tensor(top.cell[t - k])
    return float((grads[1] + grads[0] * o * (1 - torch.tanh(c) ** 2)).norm())


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_curves_equal_autograd_through_the_fused_layers(kind):
    model = _model(kind, 2)
    ids = _ids(60, seed=1)
    back = 12
    mem = memory(model, ids, max_back=back, anchors=3)
    assert mem.anchors == 3 and mem.max_back == back and mem.steps[-1] == len(ids) - 2
    expected = torch.stack([_fused_input_norms(model, ids, int(t), back) for t in mem.steps]).mean(0)
    np.testing.assert_allclose(mem.inputs, expected.numpy(), rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())  # the model is left alone
    if kind == "rnn":
        assert mem.paths == {}
        return
    top = list(mem.paths.values())[-1]
    for k in (1, 4, back):
        want = np.mean([_fused_top_state_norm(model, ids, int(t), k) for t in mem.steps])
        assert top[k] == pytest.approx(want, rel=1e-4), k


def test_a_short_passage_shortens_the_window():
    mem = memory(_model("lstm", 1), _ids(10), max_back=256, anchors=32)
    assert mem.max_back == 8 and mem.anchors == 1 and list(mem.steps) == [8]
    assert memory(_model("gru", 1), _ids(2)).max_back == 0


def test_cost_of_a_2x256_model_over_1000_characters(record_property):
    """The report's budget: a few seconds on a CPU (0.7 s measured on 2 shared cores for 32 anchors x 257
    steps); bounded here only loosely, so a busy machine does not fail it."""
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(model="lstm", layers=2, hidden=256, embed=128), 65).eval()
    ids = np.random.default_rng(0).integers(0, 65, size=1000)
    start = time.perf_counter()
    mem = memory(model, ids)
    seconds = time.perf_counter() - start
    record_property("memory_seconds_2x256_1000_chars", round(seconds, 3))
    print(f"memory(): 2x256 LSTM, 1,000 characters, {mem.anchors} anchors x {mem.max_back + 1} steps: {seconds:.2f} s")
    assert mem.max_back == 256 and mem.anchors == 32 and len(mem.paths) == 2
    assert np.all(np.isfinite(mem.inputs)) and mem.inputs[0] > 0
    assert seconds < 60


# --- the chart and the panel ----------------------------------------------------------------------------


def test_log_ticks_and_log_axes():
    assert log_ticks(0.0, 2.0) == [(0, 1.0), (1, 10.0), (2, 100.0)]
    assert [v for _, v in log_ticks(0.0, 0.8)] == [1.0, 2.0, 5.0]
    assert len(log_ticks(-30.0, 0.0)) <= 8  # every n-th decade over many
    svg, hover = chart(
        "c",
        "t",
        [Series("s", [(1, 1e-3, "a"), (10, 1e-2, "b"), (100, 1e-1, "c"), (1000, 0.0, "zero: left out")], "#000")],
        x_label="k",
        y_label="g",
        log_x=True,
        log_y=True,
    )
    assert [tip for _, _, tip, _ in hover] == ["a", "b", "c"]
    assert hover[1][0] == pytest.approx(ML + PW / 2, abs=0.1)  # 10 halfway between 1 and 100
    ys = [py for _, py, _, _ in hover]
    assert ys[0] - ys[1] == pytest.approx(ys[1] - ys[2], abs=0.2)  # equal ratios, equal steps
    assert ">100<" in svg and ">0.01<" in svg
    _, wider = chart(
        "c",
        "t",
        [Series("s", [(1, 1.0, "a"), (10, 0.1, "b")], "#000")],
        x_label="k",
        y_label="g",
        log_x=True,
        log_y=True,
        x_range=(1, 100),
    )
    assert wider[1][0] == pytest.approx(ML + PW / 2, abs=0.1)  # the axis runs to 100 with no point there
    assert [fmt(v) for v in (1e-12, 1e-4, 0.001, 1e4, 12345.0, 0.0)] == [
        "1e-12",
        "1e-4",
        "0.001",
        "1e4",
        "1.234e+04",
        "0",
    ]


def test_log_spaced_ks():
    ks = log_spaced(256)
    assert ks[0] == 0 and ks[-1] == 256 and np.all(np.diff(ks) > 0) and set(range(6)) <= set(ks.tolist())
    assert log_spaced(0).tolist() == [0]


def test_the_report_shows_how_far_back_the_model_looks(tiny_run):
    page = build_report(tiny_run)
    section = re.search(r'<section id="memory">(.*?)</section>', page, re.S).group(1)
    assert "How far back does it look?" in section and 'id="memory"' in section
    assert "cell c, layer 1" in section and "cell c, layer 2" in section and "within 1% of its peak" in section
    data = json.loads(
        re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S).group(1)
    )
    assert len(data["charts"]["memory"]) > 10 and data["charts"]["loss-steps"]
