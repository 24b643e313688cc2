"""How logits become the next symbol (charnn.sampling.draw): exact checks against hand-computed distributions,
the three forms of the draw (batched, in a CUDA graph, one stream on the host) agreeing, and the temperature the
fast stepper folds into its head."""

import math

import pytest
import torch

from charnn.config import ModelConfig, SampleConfig
from charnn.errors import SamplingError
from charnn.model import CharRNN
from charnn.sampling.draw import (
    UNIFORM_BLOCK,
    choose,
    choose_in_graph,
    choose_one,
    filtered_cdf,
    scale,
    seeded_generator,
    uniforms,
)
from charnn.sampling.stepper import FastStepper

PROBS = torch.tensor([[0.1, 0.2, 0.3, 0.4]])  # (1, V): cdf 0.1, 0.3, 0.6, 1.0
LOGITS = PROBS.log()
OPTIONS = [{}, {"top_k": 2}, {"top_p": 0.5}, {"top_k": 3, "top_p": 0.8}, {"greedy": True}]


def every_form(logits: torch.Tensor, u: float, cfg: SampleConfig) -> int:
    """The id each form of the draw picks for one stream, checked to be the same."""
    uniform = torch.full((1, 1), u)
    batched = choose(logits.clone(), uniform, cfg).item()
    out = torch.empty(1, 1, dtype=torch.long)
    choose_in_graph(cfg, logits.clone(), uniform, out)
    host = choose_one(logits.clone(), u, cfg)
    assert batched == out.item() == host, (batched, out.item(), host)
    return host


@pytest.mark.parametrize("u", [0.0, 0.3, 0.999999])
def test_greedy_top_k_one_and_a_tiny_top_p_are_the_argmax(u):
    torch.manual_seed(0)
    logits = torch.randn(5, 11)
    want = logits.argmax(dim=-1, keepdim=True)
    for cfg in (SampleConfig(greedy=True), SampleConfig(top_k=1), SampleConfig(top_p=1e-6)):
        assert torch.equal(choose(logits, torch.full((5, 1), u), cfg), want)
        for row in range(5):
            assert every_form(logits[row : row + 1], u, cfg) == want[row].item()


@pytest.mark.parametrize(
    ("options", "u", "want"),
    [
        ({}, 0.05, 0),  # cdf 0.1, 0.3, 0.6, 1.0
        ({}, 0.25, 1),
        ({}, 0.59, 2),
        ({}, 0.65, 3),
        ({"top_k": 2}, 0.0, 2),  # ids 2, 3 kept: cdf 0, 0, 3/7, 1
        ({"top_k": 2}, 0.42, 2),
        ({"top_k": 2}, 0.44, 3),
        ({"top_p": 0.5}, 0.4, 2),  # 0.4 + 0.3 reach 0.5: cdf 0, 0, 0.3, 0.7; 0.4 * 0.7 = 0.28
        ({"top_p": 0.5}, 0.5, 3),  # 0.35
        ({"top_p": 0.75}, 0.1, 1),  # 0.4 + 0.3 + 0.2: cdf 0, 0.2, 0.5, 0.9; 0.09
        ({"temperature": 0.5}, 0.1, 1),  # p^2 / 0.3: cdf 1/30, 5/30, 14/30, 1
        ({"temperature": 0.5}, 0.4, 2),
        ({"temperature": 0.5}, 0.5, 3),
    ],
)
def test_a_fixed_uniform_picks_the_id_of_the_hand_computed_cdf(options, u, want):
    cfg = SampleConfig(**{"temperature": 1.0, **options})  # the default is 0.8
    assert every_form(scale(LOGITS, cfg.temperature), u, cfg) == want


def test_the_filtered_cdf_is_the_hand_computed_one():
    assert torch.allclose(filtered_cdf(LOGITS, SampleConfig()), torch.tensor([[0.1, 0.3, 0.6, 1.0]]))
    assert torch.allclose(filtered_cdf(LOGITS, SampleConfig(top_k=2)), torch.tensor([[0, 0, 3 / 7, 1.0]]))
    assert torch.allclose(filtered_cdf(LOGITS, SampleConfig(top_p=0.5)), torch.tensor([[0, 0, 0.3, 0.7]]))


def test_a_zero_uniform_never_draws_a_filtered_symbol():
    logits = torch.tensor([[0.0, 1.0, 5.0, 2.0]])
    for cfg in (SampleConfig(top_k=1), SampleConfig(top_p=0.5)):
        assert every_form(logits, 0.0, cfg) == 2
    assert every_form(logits, 0.999999, SampleConfig()) == 3


@pytest.mark.parametrize("options", OPTIONS)
def test_the_batched_graph_and_host_draws_agree(options):
    """The same logits and uniforms give the same ids in every form, row by row."""
    torch.manual_seed(1)
    cfg = SampleConfig(**options)
    logits = scale(torch.randn(64, 9) * 3, cfg.temperature)
    uniform = torch.rand(64, 1)
    batched = choose(logits, uniform, cfg)
    out = torch.empty(64, 1, dtype=torch.long)
    bad = choose_in_graph(cfg, logits, uniform, out)  # a flag of non-finite totals; None when greedy
    assert (bad is None) == cfg.greedy and not (bad is not None and bool(bad))
    assert torch.equal(out, batched)
    assert [choose_one(logits[b : b + 1], uniform[b].item(), cfg) for b in range(64)] == batched[:, 0].tolist()


def test_non_finite_probabilities_are_an_error_in_every_form():
    logits = torch.tensor([[0.0, math.nan, 1.0]])
    cfg = SampleConfig()
    with pytest.raises(SamplingError, match="non-finite"):
        choose(logits, torch.zeros(1, 1), cfg)
    with pytest.raises(SamplingError, match="non-finite"):
        choose_one(logits, 0.0, cfg)
    assert bool(choose_in_graph(cfg, logits, torch.zeros(1, 1), torch.empty(1, 1, dtype=torch.long)))


def test_a_seed_gives_the_same_uniforms_in_blocks():
    a, b = seeded_generator(5), seeded_generator(5)
    assert torch.equal(uniforms(a, 10, 3), uniforms(b, 10, 3))
    assert uniforms(a, UNIFORM_BLOCK + 7, 2).shape == (UNIFORM_BLOCK, 2)
    assert not torch.equal(uniforms(seeded_generator(None), 10, 1), uniforms(seeded_generator(None), 10, 1))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("temperature", [0.5, 1.7])
def test_the_steppers_pre_scaled_head_is_the_draws_temperature(kind, temperature):
    """The fast stepper folds the temperature into its head with `scale`: its logits are `scale` of the
    unscaled stepper's logits (to float rounding: the division moves before the sum)."""
    torch.manual_seed(2)
    model = CharRNN(ModelConfig(model=kind, layers=2, hidden=16, embed=8, layer_norm=True), 10)
    with torch.inference_mode():
        hot, plain = FastStepper(model, temperature, batch_size=3), FastStepper(model, 1.0, batch_size=3)
    assert torch.equal(hot.w_out, scale(model.head.weight.float().t(), temperature))
    assert torch.equal(hot.b_out, scale(model.head.bias.float(), temperature))
    for ids in torch.randint(0, 10, (20, 3)):
        with torch.inference_mode():
            assert torch.allclose(hot.step(ids), scale(plain.step(ids), temperature), rtol=1e-5, atol=1e-6)
