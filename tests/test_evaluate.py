"""Evaluation: exact figures on analytic cases (a three-character text worked by hand), independence from the
batch size (library and CLI), and characters outside the vocabulary counted or refused."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from charnn.config import DataConfig, ModelConfig
from charnn.data import encode_file
from charnn.evaluate import _Scorer, evaluate_ids
from charnn.model import CharRNN
from charnn.store.checkpoint import load_model
from tests.conftest import TINY_TEXT, corpus_of, invoke, one_error_line


def test_uniform_model_has_perplexity_equal_to_vocab_size():
    V = 17
    model = CharRNN(ModelConfig(hidden=8, embed=4), V)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    res = evaluate_ids(model, np.random.default_rng(0).integers(0, V, 1000), segment=64)
    assert res.chars == 999
    assert math.isclose(res.perplexity, V, rel_tol=1e-5)
    assert math.isclose(res.bpc, math.log2(V), rel_tol=1e-5)


def test_result_does_not_depend_on_batch_size_or_chunk():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(hidden=16, embed=8), 9)
    ids = np.random.default_rng(1).integers(0, 9, 3001)
    ref = evaluate_ids(model, ids, segment=100, batch_size=1, chunk=100)
    for batch_size, chunk in ((7, 100), (64, 33), (3, 7)):
        res = evaluate_ids(model, ids, segment=100, batch_size=batch_size, chunk=chunk)
        assert res.chars == ref.chars and math.isclose(res.loss, ref.loss, rel_tol=1e-6)


def test_memory_follows_the_chunk_not_the_segment_or_the_batch_size():
    """A segment past the text (1e15: a (rows, segment) window would need petabytes) scores it as one stream;
    a budget of one row per pass, or a batch of a billion rows, changes nothing but speed."""
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(hidden=16, embed=8), 9)
    ids = np.random.default_rng(1).integers(0, 9, 1001)
    whole = evaluate_ids(model, ids, segment=1000, per_char=True)
    huge = evaluate_ids(model, ids, segment=10**15, per_char=True)
    assert huge.chars == whole.chars and math.isclose(huge.loss, whole.loss, rel_tol=1e-9)
    assert np.allclose(huge.per_char, whole.per_char)
    ref = evaluate_ids(model, ids, segment=50, per_char=True)
    for kw in ({"max_bytes": 1}, {"batch_size": 10**9}):
        res = evaluate_ids(model, ids, segment=50, per_char=True, **kw)
        assert math.isclose(res.loss, ref.loss, rel_tol=1e-6) and np.allclose(res.per_char, ref.per_char)


def test_per_char_losses_match_a_direct_forward():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(hidden=16, embed=8), 9).eval()
    ids = np.random.default_rng(2).integers(0, 9, 250)
    res = evaluate_ids(model, ids, segment=100, chunk=40, per_char=True)
    expected = []
    for s in range(0, 249, 100):
        x = torch.tensor(ids[s : min(s + 100, 249)])[None]
        y = torch.tensor(ids[s + 1 : min(s + 101, 250)])
        logits, _ = model(x)
        expected.append(torch.nn.functional.cross_entropy(logits[0], y, reduction="none"))
    assert np.allclose(res.per_char, torch.cat(expected).detach().numpy(), atol=1e-5)
    assert math.isclose(res.per_char.mean(), res.loss, rel_tol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 3])
def test_scoring_with_the_embedding_folded_in_matches_the_model(kind, layers):
    """Vocabulary narrower than the embedding: the scorer folds the embedding into layer 0 (one-hot inputs);
    its logits and carried state must be the model's own."""
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(model=kind, layers=layers, hidden=24, embed=32, layer_norm=True), 9).eval()
    scorer = _Scorer(model)
    assert scorer.split
    x = torch.randint(9, (3, 50))
    with torch.no_grad():
        want1, hidden = model(x[:, :20])
        want2, _ = model(x[:, 20:], hidden)
        got1, state = scorer(x[:, :20], None)
        got2, _ = scorer(x[:, 20:], state)
    torch.testing.assert_close(got1, want1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got2, want2, atol=1e-5, rtol=1e-5)
    ids = np.random.default_rng(0).integers(0, 9, 3000)
    wide = evaluate_ids(model, ids, segment=700, batch_size=2)
    assert not _Scorer(CharRNN(ModelConfig(model=kind, layers=layers, hidden=24, embed=8), 9)).split
    with torch.no_grad():  # the plain forward pass, summed by hand over the same segments
        total = 0.0
        for s0 in range(0, len(ids) - 1, 700):
            seg = torch.as_tensor(ids[s0 : s0 + 701])[None]
            logits, _ = model(seg[:, :-1])
            total += torch.nn.functional.cross_entropy(logits[0], seg[0, 1:], reduction="sum").item()
    assert wide.total_nats == pytest.approx(total, rel=1e-6)


def test_scoring_leaves_the_global_rng_alone():
    torch.manual_seed(1)
    want = torch.rand(3)
    torch.manual_seed(1)
    model = CharRNN(ModelConfig(hidden=8, embed=16), 5)  # vocabulary narrower than the embedding: _Scorer
    torch.manual_seed(1)
    evaluate_ids(model, np.arange(200) % 5, segment=50)
    assert torch.equal(torch.rand(3), want)


def test_eval_batch_size_does_not_change_the_numbers(run_dir: Path, tmp_path: Path):
    loaded = load_model(run_dir / "step-00000020.safetensors")
    ids = encode_file(corpus_of(run_dir), DataConfig()).ids[:1000]
    one = evaluate_ids(loaded.model, ids, segment=37, batch_size=1)
    seven = evaluate_ids(loaded.model, ids, segment=37, batch_size=7)
    assert one.chars == seven.chars == 999
    assert abs(one.loss - seven.loss) < 1e-6
    held = tmp_path / "held.txt"
    held.write_text(TINY_TEXT[:500], encoding="utf-8")
    rows = [
        json.loads(
            invoke(
                "eval", str(run_dir), str(held), "--json", "--device", "cpu", "--segment", "50", "--batch-size", b
            ).stdout
        )
        for b in ("1", "7")
    ]
    assert abs(rows[0]["nats_per_char"] - rows[1]["nats_per_char"]) < 1e-6


def test_eval_three_characters_by_hand():
    """A 1-unit Elman RNN on "aba", computed with pencil and paper (and math.tanh), one character per chunk."""
    model = CharRNN(ModelConfig(model="rnn", layers=1, hidden=1, embed=1), 2)
    with torch.no_grad():
        model.embed.weight.copy_(torch.tensor([[1.0], [-2.0]]))  # a -> 1, b -> -2
        model.rnn.weight_ih_l0.fill_(0.5)
        model.rnn.weight_hh_l0.fill_(0.8)
        model.rnn.bias_ih_l0.fill_(0.1)
        model.rnn.bias_hh_l0.fill_(0.0)
        model.head.weight.copy_(torch.tensor([[2.0], [-1.0]]))
        model.head.bias.copy_(torch.tensor([0.0, 0.3]))

    def nll(h, target):
        logits = [2.0 * h, -1.0 * h + 0.3]
        return math.log(sum(math.exp(z) for z in logits)) - logits[target]

    h1 = math.tanh(0.5 * 1 + 0.1)  # after "a"
    h2 = math.tanh(0.5 * -2 + 0.1 + 0.8 * h1)  # after "ab"
    expected = (nll(h1, 1) + nll(h2, 0)) / 2  # predict "b" from "a", then "a" from "ab"
    ids = np.array([0, 1, 0])
    for chunk, batch in ((1, 1), (256, 7)):
        res = evaluate_ids(model, ids, segment=4096, batch_size=batch, chunk=chunk)
        assert res.chars == 2
        assert abs(res.loss - expected) < 1e-6


def test_eval_counts_unknown_characters(run_dir: Path, tmp_path: Path):
    held = tmp_path / "held.txt"
    held.write_text("First \u00e9\u00e9 Citizen\u2603", encoding="utf-8")
    res = invoke("eval", str(run_dir), str(held), "--device", "cpu")
    assert res.exit_code == 2 and "2 characters (3 occurrences) not in the model's vocabulary" in one_error_line(res)
    res = invoke("eval", str(run_dir), str(held), "--device", "cpu", "--skip-unknown", "--json")
    assert res.exit_code == 0
    assert json.loads(res.stdout)["unknown_chars"] == 3
    assert "skipped 2 characters (3 occurrences) not in" in res.stderr
