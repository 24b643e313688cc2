"""The network, the loss, clipping, and the carried state."""

import math

import pytest
import torch

from charnn.config import MODEL_KINDS, ModelConfig
from charnn.model import CharRNN, detach_hidden, lm_loss, state_shapes


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


def test_parameter_count_matches_config():
    for kind in ("lstm", "gru", "rnn"):
        cfg = ModelConfig(model=kind, layers=3, hidden=7, embed=5)
        model = CharRNN(cfg, 11)
        assert cfg.num_parameters(11) == sum(p.numel() for p in model.parameters())


def test_detached_state_has_no_graph():
    model = CharRNN(ModelConfig(hidden=8, embed=4), 6)
    _, hidden = model(torch.randint(6, (2, 3)))
    assert hidden[0].grad_fn is not None
    assert all(h.grad_fn is None and not h.requires_grad for h in detach_hidden(hidden))


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


@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize("layers", [1, 3])
def test_state_shapes_match_the_module(kind, layers):
    cfg = ModelConfig(model=kind, layers=layers, hidden=12, embed=5)
    actual = {k: tuple(v.shape) for k, v in CharRNN(cfg, 7).state_dict().items()}
    assert state_shapes(cfg, 7) == actual
