"""The network, the loss, clipping, and the carried state."""

import math

import pytest
import torch

from charnn.config import MODEL_KINDS, ModelConfig
from charnn.errors import ConfigError
from charnn.model import (
    CharRNN,
    LockedDropout,
    detach_hidden,
    gate_values,
    gru_cell,
    layer_weights,
    lm_loss,
    lstm_cell,
    rnn_cell,
    zero_streams,
)
from charnn.shapes import CELLS, num_parameters, state_shapes
from charnn.training.plan import CorpusFacts, Hardware, PlanRequest, make_plan

# The AWD-LSTM style options (Merity et al. 2017), each alone and all together; tying needs embed == hidden.
OPTIONS = [
    {},
    {"tie_weights": True},
    {"layer_norm": True},
    {"locked_dropout": 0.3},
    {"tie_weights": True, "layer_norm": True, "locked_dropout": 0.3, "dropout": 0.2},
]


def test_forward_shapes_for_every_cell():
    B, T, V = 2, 3, 6
    for kind in ("lstm", "gru", "rnn"):
        model = CharRNN(ModelConfig(model=kind, layers=2, hidden=5, embed=4), V)
        logits, hidden = model(torch.randint(V, (B, T)))
        assert logits.shape == (B, T, V)
        first = hidden[0] if kind == "lstm" else hidden
        assert first.shape == (2, B, 5)
        assert isinstance(model.rnn, {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind])
    assert CharRNN(ModelConfig(model="rnn"), V).rnn.nonlinearity == "tanh"


def test_t_steps_at_once_equal_two_halves_with_carried_state():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(layers=2, hidden=8, embed=4), 6).eval()
    x = torch.randint(6, (2, 10))
    full, _ = model(x)
    a, h = model(x[:, :5])
    b, _ = model(x[:, 5:], h)
    assert torch.allclose(full, torch.cat([a, b], 1), atol=1e-6)


@pytest.mark.parametrize("options", OPTIONS)
def test_parameter_count_matches_config(options):
    for kind in ("lstm", "gru", "rnn"):
        embed = 7 if options.get("tie_weights") else 5
        cfg = ModelConfig(model=kind, layers=3, hidden=7, embed=embed, **options)
        model = CharRNN(cfg, 11)
        assert num_parameters(cfg, 11) == sum(p.numel() for p in model.parameters())


def test_detached_state_has_no_graph():
    model = CharRNN(ModelConfig(hidden=8, embed=4), 6)
    _, hidden = model(torch.randint(6, (2, 3)))
    assert hidden[0].grad_fn is not None
    assert all(h.grad_fn is None and not h.requires_grad for h in detach_hidden(hidden))


def test_zero_streams_zeroes_the_chosen_rows_of_every_layer_and_keeps_the_others():
    h, c = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    fresh = torch.tensor([False, True, False])
    for state in ((h, c), (h,)):  # an LSTM's (h, c), a GRU's or RNN's h
        out = zero_streams(state if len(state) == 2 else state[0], fresh)
        for before, after in zip(state, out if isinstance(out, tuple) else (out,), strict=True):
            assert torch.equal(after[:, 1], torch.zeros(2, 5))
            assert torch.equal(after[:, [0, 2]], before[:, [0, 2]])
    assert zero_streams((h, c), None) == (h, c) and zero_streams(None, fresh) is None


def test_uniform_logits_give_log_vocab_loss():
    V = 13
    logits = torch.zeros(2, 5, V)
    targets = torch.randint(V, (2, 5))
    assert math.isclose(lm_loss(logits, targets).item(), math.log(V), rel_tol=1e-6)


def test_gradient_clipping_bounds_the_global_norm():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(hidden=8, embed=4), 6)
    logits, _ = model(torch.randint(6, (2, 3)))
    (lm_loss(logits, torch.randint(6, (2, 3))) * 1e4).backward()
    params = list(model.parameters())
    before = torch.nn.utils.clip_grad_norm_(params, 0.5)
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    assert before > 0.5 and after <= 0.5 * (1 + 1e-5)


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize("layers", [1, 3])
def test_state_shapes_match_the_module(kind, layers, options):
    cfg = ModelConfig(model=kind, layers=layers, hidden=12, embed=12 if options.get("tie_weights") else 5, **options)
    actual = {k: tuple(v.shape) for k, v in CharRNN(cfg, 7).state_dict().items()}
    assert state_shapes(cfg, 7) == actual


# --- the cells: one definition of the gate layout and the arithmetic --------------------------------------


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_the_readable_cells_step_like_the_module(kind):
    """lstm_cell / gru_cell / rnn_cell, stepped over each layer's weights in the table's block order, give
    nn.LSTM/GRU/RNN's outputs and final state; gate_values names the table's gates."""
    B, T, E, H, V, L = 3, 7, 4, 5, 6, 2
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(model=kind, layers=L, hidden=H, embed=E), V).eval()
    x = torch.randint(V, (B, T))
    with torch.no_grad():
        inputs = model.embed(x)  # (B, T, E)
        want, state = model.rnn(inputs)
        h_n, c_n = [], []
        for layer in range(L):
            w_ih, w_hh, b_ih, b_hh = layer_weights(model.rnn, layer)
            h = c = torch.zeros(B, H)
            outs = []
            for t in range(T):
                x_proj, h_proj = inputs[:, t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh  # (B, G*H)
                gates = gate_values(kind, x_proj, h_proj)
                assert list(gates) == list(CELLS[kind].gates) and all(g.shape == (B, H) for g in gates.values())
                if kind == "lstm":
                    h, c = lstm_cell(x_proj, h_proj, c)
                elif kind == "gru":
                    h = gru_cell(x_proj, h_proj, h)
                else:
                    h = rnn_cell(x_proj, h_proj)
                outs.append(h)
            inputs = torch.stack(outs, dim=1)  # (B, T, H)
            h_n.append(h)
            c_n.append(c)
    torch.testing.assert_close(inputs, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.stack(h_n), state[0] if kind == "lstm" else state, atol=1e-6, rtol=1e-5)
    if kind == "lstm":
        torch.testing.assert_close(torch.stack(c_n), state[1], atol=1e-6, rtol=1e-5)


def test_the_cell_table_covers_every_kind():
    assert set(CELLS) == set(MODEL_KINDS)
    for cell in CELLS.values():
        assert set(cell.gates) < set(cell.blocks) and cell.count == len(cell.blocks)
    assert [CELLS[k].count for k in ("lstm", "gru", "rnn")] == [4, 3, 1]  # nn.LSTM / nn.GRU / nn.RNN's G


# --- weight tying (Press & Wolf 2017; Inan et al. 2017) ---------------------------------------------------


def test_tied_model_has_one_shared_matrix_with_the_heads_init():
    B, T, H, V = 2, 3, 6, 9
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(layers=1, hidden=H, embed=H, tie_weights=True), V)
    assert model.head.weight is model.embed.weight
    params = list(model.parameters())
    assert len(params) == len({id(p) for p in params})  # the optimizer and the clipping see it once
    bound = 1 / math.sqrt(H)  # the output layer's init, not the untied embedding's std 1
    assert model.embed.weight.abs().max() <= bound
    logits, _ = model(torch.randint(V, (B, T)))
    assert lm_loss(logits, torch.randint(V, (B, T))).item() == pytest.approx(math.log(V), abs=0.2)
    assert model.to(torch.float64).head.weight is model.embed.weight  # moving the module keeps the tie


def test_tied_gradient_is_the_sum_of_both_uses():
    B, T, H, V = 2, 3, 6, 9
    torch.manual_seed(0)
    tied = CharRNN(ModelConfig(layers=1, hidden=H, embed=H, tie_weights=True), V)
    untied = CharRNN(ModelConfig(layers=1, hidden=H, embed=H), V)
    untied.load_state_dict(tied.state_dict())
    x, y = torch.randint(V, (B, T)), torch.randint(V, (B, T))
    for model in (tied, untied):
        lm_loss(model(x)[0], y).backward()
    torch.testing.assert_close(tied.embed.weight.grad, untied.embed.weight.grad + untied.head.weight.grad)


def test_tie_weights_needs_embed_equal_to_hidden():
    with pytest.raises(ConfigError, match=r"^--tie-weights needs --embed equal to --hidden \(--embed 5, --hidden 7\)"):
        ModelConfig(hidden=7, embed=5, tie_weights=True)


def test_tying_sets_embed_to_hidden_unless_embed_is_given():
    def resolve(preset, model):
        return make_plan(CorpusFacts(10**6, 10**5, 65), Hardware(), PlanRequest(preset, model)).model

    model = resolve("tiny", {"tie_weights": True})
    assert model.tie_weights and model.embed == model.hidden == 128
    model = resolve("small", {"tie_weights": True, "hidden": 64, "embed": None})
    assert model.embed == model.hidden == 64
    model = resolve("small", {"tie_weights": False})
    assert model.embed == 128 and model.hidden == 256  # untouched without the tie
    with pytest.raises(ConfigError, match="--tie-weights needs"):
        resolve("small", {"tie_weights": True, "embed": 32})


# --- layer norm on the output -----------------------------------------------------------------------------


def test_layer_norm_sits_between_the_last_layer_and_the_head():
    B, T, E, H, V = 2, 3, 4, 5, 6
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(layers=2, hidden=H, embed=E, layer_norm=True), V).eval()
    with torch.no_grad():
        model.ln.weight.uniform_(0.5, 2.0)  # not the identity init, so a missing norm would show
        model.ln.bias.uniform_(-1.0, 1.0)
    x = torch.randint(V, (B, T))
    logits, _ = model(x)
    out, _ = model.rnn(model.embed(x))  # (B, T, H)
    expected = model.head(torch.nn.functional.layer_norm(out, (H,), model.ln.weight, model.ln.bias))
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(model.output(out), logits)
    assert isinstance(CharRNN(ModelConfig(hidden=H, embed=E), V).ln, torch.nn.Identity)


# --- locked (variational) dropout (Gal & Ghahramani 2016; Merity et al. 2017) ------------------------------


def test_locked_dropout_mask_is_constant_in_time_and_differs_across_rows():
    B, T, F, p = 8, 5, 64, 0.5
    torch.manual_seed(0)
    drop = LockedDropout(p).train()
    y = drop(torch.ones(B, T, F))
    assert torch.equal(y, y[:, :1].expand(B, T, F))  # the same mask at every time step
    assert set(y.unique().tolist()) == {0.0, 1 / (1 - p)}
    assert len({tuple(row[0].tolist()) for row in y}) == B  # one mask per sequence


def test_locked_dropout_is_the_identity_in_eval_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 7)
    drop = LockedDropout(0.4)
    assert drop.eval()(x) is x
    assert LockedDropout(0.0).train()(x) is x
    ones = torch.ones(4000, 2, 100)
    assert drop.train()(ones).mean().item() == pytest.approx(1.0, abs=0.02)  # 400,000 masks of 0 or 1/0.6
    with pytest.raises(ConfigError):
        ModelConfig(locked_dropout=0.95)


def test_locked_dropout_in_the_model_trains_only():
    B, T, H, V = 3, 6, 8, 7
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(layers=1, hidden=H, embed=4, locked_dropout=0.5), V)
    plain = CharRNN(ModelConfig(layers=1, hidden=H, embed=4), V)
    plain.load_state_dict(model.state_dict())  # no state of its own: the same keys
    x = torch.randint(V, (B, T))
    model.eval(), plain.eval()
    torch.testing.assert_close(model(x)[0], plain(x)[0])
    model.train()
    assert not torch.allclose(model(x)[0], plain(x)[0])


# --- weight drop (DropConnect on the recurrent weights; Wan et al. 2013, Merity et al. 2017) -----------------


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_weight_drop_masks_the_recurrent_weights_in_training_only(kind):
    B, T, H, V, p = 3, 6, 8, 7, 0.5
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(model=kind, layers=2, hidden=H, embed=4, weight_drop=p), V)
    plain = CharRNN(ModelConfig(model=kind, layers=2, hidden=H, embed=4), V)
    plain.load_state_dict(model.state_dict())  # no state of its own: the same keys
    x = torch.randint(V, (B, T))
    model.eval(), plain.eval()
    torch.testing.assert_close(model(x)[0], plain(x)[0])
    model.train(), plain.train()
    torch.manual_seed(1)
    dropped = model(x)[0]
    # The same forward by hand: each layer's weight_hh with the mask F.dropout draws from the same seed.
    torch.manual_seed(1)
    with torch.no_grad():
        for k in range(2):
            w = getattr(plain.rnn, f"weight_hh_l{k}")
            w.copy_(torch.nn.functional.dropout(w, p))
    torch.testing.assert_close(dropped, plain(x)[0])
    weights = {name: w.clone() for name, w in model.state_dict().items()}
    dropped.sum().backward()
    for name, w in model.state_dict().items():  # the forward leaves the weights themselves as they were
        assert torch.equal(w, weights[name]), name
    grad = model.rnn.weight_hh_l0.grad
    assert grad is not None and grad.abs().sum() > 0
    assert (grad == 0).float().mean() > 0.3  # the dropped entries get no gradient (about half at p 0.5)


def test_weight_drop_is_a_model_option_with_its_bounds():
    assert ModelConfig().weight_drop == 0.0
    with pytest.raises(ConfigError):
        ModelConfig(weight_drop=0.95)
    assert num_parameters(ModelConfig(weight_drop=0.3), 7) == num_parameters(ModelConfig(), 7)
