"""Dynamic evaluation: it adapts to a text the model has partly seen, leaves the run's weights alone (in memory
and on disk), is deterministic, and reports apart from the static figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from charnn.config import DynamicConfig
from charnn.dynamic import evaluate_dynamic
from charnn.evaluate import evaluate_ids
from charnn.model import CharRNN
from tests.conftest import SMALL_MODEL, invoke, one_error_line, snapshot

ADAPT = DynamicConfig(dynamic=True, dynamic_lr=0.3, dynamic_segment=16)


def repeated_text_ids(n: int = 1200) -> np.ndarray:
    """A phrase the untrained model cannot know, repeated: adapting to its first copies pays on the later ones."""
    phrase = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7], dtype=np.int64)
    return np.resize(phrase, n)


def test_dynamic_evaluation_learns_the_text_it_reads():
    torch.manual_seed(0)
    model = CharRNN(SMALL_MODEL, 10)
    ids = repeated_text_ids()
    static = evaluate_ids(model, ids, segment=len(ids))
    adapted = evaluate_dynamic(model, ids, ADAPT)
    assert adapted.chars == static.chars == len(ids) - 1
    assert adapted.loss < static.loss - 0.3  # a phrase seen a few times is far cheaper


def test_without_steps_it_is_the_static_score_of_one_stream():
    torch.manual_seed(0)
    model = CharRNN(SMALL_MODEL, 10)
    ids = repeated_text_ids(300)
    still = DynamicConfig(dynamic=True, dynamic_lr=1e-30, dynamic_segment=16)
    assert evaluate_dynamic(model, ids, still).loss == pytest.approx(evaluate_ids(model, ids, segment=len(ids)).loss)


def test_the_model_is_untouched_and_the_result_deterministic():
    torch.manual_seed(0)
    model = CharRNN(SMALL_MODEL, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    first = evaluate_dynamic(model, repeated_text_ids(), ADAPT)
    second = evaluate_dynamic(model, repeated_text_ids(), ADAPT)
    assert first.total_nats == second.total_nats
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training == was_training
    assert first.extra_bytes > 3 * 4 * sum(p.numel() for p in model.parameters())


def test_decay_pulls_back_toward_the_trained_weights():
    torch.manual_seed(0)
    model = CharRNN(SMALL_MODEL, 10)
    ids = repeated_text_ids()

    def loss(decay: float, lr: float = ADAPT.dynamic_lr) -> float:
        return evaluate_dynamic(model, ids, DynamicConfig(True, lr, decay, ADAPT.dynamic_segment)).loss

    assert loss(1.0) == loss(0.0, lr=1e-30)  # decay 1: each step undone at once, the trained weights throughout
    assert loss(0.0) < loss(0.5) < loss(1.0)


def test_eval_dynamic_reports_apart_and_leaves_the_run(run_dir):
    before = snapshot(run_dir)
    res = invoke("eval", run_dir, "--dynamic", "--dynamic-segment", "32", "--json")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    static, dynamic = rows
    assert "nats_per_char" in static and "dynamic_nats_per_char" not in static
    assert dynamic["mode"] == "dynamic" and "nats_per_char" not in dynamic
    assert dynamic["chars"] == static["chars"] and dynamic["dynamic_segment"] == 32
    assert dynamic["seconds"] >= 0 and dynamic["extra_memory_bytes"] > 0
    assert snapshot(run_dir) == before  # nothing written into the run
    text = invoke("eval", run_dir, "--dynamic")
    assert "(dynamic evaluation)" in text.stdout and text.stdout.count("\n") == 2


def test_a_bad_dynamic_option_is_one_error_line(run_dir):
    res = invoke("eval", run_dir, "--dynamic", "--dynamic-lr", "-1")
    assert res.exit_code == 2 and "--dynamic-lr" in res.output


def test_a_diverging_dynamic_evaluation_is_one_error_line(run_dir):
    res = invoke("eval", run_dir, "--dynamic", "--dynamic-lr", "100", "--dynamic-segment", "2", "--json")
    if res.exit_code == 0:  # it may stay finite: then every figure is a number (RFC 8259: no NaN, no Infinity)
        for line in res.stdout.splitlines():
            json.loads(line, parse_constant=pytest.fail)
    else:
        assert "use a lower --dynamic-lr" in one_error_line(res, 2, alone=False)
