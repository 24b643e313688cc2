"""Beam search: width 1 is greedy; on a hand-built model where greedy decoding is provably not the most probable
text the beam finds the better one; the log-probabilities it reports are eval's."""

import itertools
import math

import numpy as np
import pytest
import torch

from charnn.config import ModelConfig, SampleConfig
from charnn.data import Vocab
from charnn.errors import ConfigError
from charnn.evaluate import evaluate_ids
from charnn.model import CharRNN
from charnn.sampling.beam import beam_search
from charnn.sampling.generate import sample_text
from charnn.store.rundir import load_run
from tests.conftest import invoke

# P(next | current) over the symbols a, b, c. From "a", greedy takes "b" (0.5499), whose next symbol is a near
# coin toss (best 0.34): "aba" has probability 0.187. "c" (0.45) is followed by "c" with 0.9: "acc" has 0.405.
TRANSITIONS = {
    "a": {"a": 0.0001, "b": 0.5499, "c": 0.45},
    "b": {"a": 0.34, "b": 0.33, "c": 0.33},
    "c": {"a": 0.05, "b": 0.05, "c": 0.9},
}
VOCAB = Vocab(tuple(map(ord, "abc")))


def markov_model() -> CharRNN:
    """A one-layer Elman RNN whose hidden state is tanh(3) times the one-hot of the last symbol and whose head
    turns that into log P(next | last): its log-softmax is exactly ln TRANSITIONS."""
    model = CharRNN(ModelConfig(model="rnn", layers=1, hidden=3, embed=3), 3)
    scale = math.tanh(3.0)
    table = torch.tensor([[math.log(TRANSITIONS[last][nxt]) for last in "abc"] for nxt in "abc"])  # (next, last)
    with torch.no_grad():
        model.embed.weight.copy_(3.0 * torch.eye(3))
        model.rnn.weight_ih_l0.copy_(torch.eye(3))
        model.rnn.weight_hh_l0.zero_()
        model.rnn.bias_ih_l0.zero_()
        model.rnn.bias_hh_l0.zero_()
        model.head.weight.copy_(table / scale)
        model.head.bias.zero_()
    return model.eval()


def exact_logprob(text: str) -> float:
    return sum(math.log(TRANSITIONS[a][b]) for a, b in itertools.pairwise(text))


def test_greedy_is_not_the_most_probable_text_and_the_beam_finds_the_best():
    model = markov_model()
    greedy = sample_text(model, VOCAB, SampleConfig(prime="a", length=2, greedy=True))[0]
    assert greedy == "aba"
    texts = ["a" + "".join(rest) for rest in itertools.product("abc", repeat=2)]
    assert max(texts, key=exact_logprob) == "acc" != greedy  # greedy is provably not the best

    (one,) = beam_search(model, VOCAB, "a", 1, 2)
    assert one.text == "aba" and one.logprob == pytest.approx(exact_logprob("aba"), abs=1e-5)
    beams = beam_search(model, VOCAB, "a", 2, 2)
    assert [b.text for b in beams] == ["acc", "aba"]
    assert beams[0].logprob == pytest.approx(math.log(0.45) + math.log(0.9), abs=1e-5)
    assert beams[0].per_char == pytest.approx(beams[0].logprob / 2)


def test_a_full_width_beam_ranks_every_text_exactly():
    """Width V^L keeps every text: the beam is the exhaustive ranking, best first."""
    model = markov_model()
    beams = beam_search(model, VOCAB, "a", 9, 2)
    texts = sorted(
        ("a" + "".join(rest) for rest in itertools.product("abc", repeat=2)), key=exact_logprob, reverse=True
    )
    assert [b.text for b in beams] == texts
    assert np.allclose([b.logprob for b in beams], [exact_logprob(t) for t in texts], atol=1e-5)
    assert len(beam_search(model, VOCAB, "a", 20, 2)) == 9  # no more texts than exist


def test_reported_logprob_is_evals(tiny_run):
    loaded = load_run(tiny_run)
    beams = beam_search(loaded.model, loaded.vocab, "First", 4, 25)
    assert len(beams) == 4 and [b.logprob for b in beams] == sorted((b.logprob for b in beams), reverse=True)
    assert len({b.text for b in beams}) == 4
    for beam in beams:
        ids = loaded.vocab.encode(beam.text)
        nats = evaluate_ids(loaded.model, ids, per_char=True, precision="fp32").per_char
        assert -nats[-25:].sum() == pytest.approx(beam.logprob, abs=1e-3)


def test_no_prime_and_zero_length(tiny_run):
    loaded = load_run(tiny_run)
    (empty,) = beam_search(loaded.model, loaded.vocab, "First", 3, 0)
    assert empty.text == "First" and empty.logprob == 0.0
    (beam,) = beam_search(loaded.model, loaded.vocab, None, 1, 10)[:1]
    assert len(beam.text) == 10 and beam.prime == ()  # the start symbol is not echoed


def test_cli_beam_one_is_greedy_and_scores_go_to_stderr(tiny_run):
    greedy = invoke("sample", tiny_run, "--prime", "First", "--length", "40", "--greedy")
    beam = invoke("sample", tiny_run, "--prime", "First", "--length", "40", "--beam", "1")
    assert greedy.exit_code == beam.exit_code == 0, beam.output
    assert beam.stdout == greedy.stdout
    assert beam.stderr.startswith("beam 1: log-probability -")

    res = invoke("sample", tiny_run, "--prime", "First", "--length", "20", "--beam", "4", "--num-samples", "3")
    assert res.exit_code == 0, res.output
    texts = res.stdout.split("\n---------------\n")
    assert len(texts) == 3 and all(t.rstrip("\n").startswith("First") for t in texts)
    lines = res.stderr.splitlines()
    assert [line.split(":")[0] for line in lines] == ["beam 1", "beam 2", "beam 3"]
    loaded = load_run(tiny_run)
    for text, line in zip(texts, lines, strict=True):
        reported = float(line.split("log-probability ")[1].split()[0])
        nats = evaluate_ids(loaded.model, loaded.vocab.encode(text.rstrip("\n")), per_char=True).per_char
        assert reported == pytest.approx(-nats[-20:].sum(), abs=1e-3)


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--beam", "2", "--num-samples", "3"],
            "error: --num-samples 3 must be at most --beam 2 (the beam holds 2 texts)",
        ),
        (
            ["--beam", "2", "--top-k", "3"],
            "error: --beam searches the model's own probabilities: drop --greedy "
            "(--beam 1 is greedy), --top-k and --top-p",
        ),
        (["--beam", "0"], "error: --beam must be at least 1, not 0"),
    ],
)
def test_cli_beam_errors_are_one_line(tiny_run, args, message):
    res = invoke("sample", tiny_run, *args)
    assert res.exit_code == 2 and res.stderr.strip() == message


def test_generate_refuses_a_beam_config():
    with pytest.raises(ConfigError):
        sample_text(markov_model(), VOCAB, SampleConfig(beam=2, length=3))
