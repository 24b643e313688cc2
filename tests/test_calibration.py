"""--calibrate: the logit scale fitted at each validation, folded into the saved weights (charnn.calibration)."""

from __future__ import annotations

import dataclasses
import io
import json
import math

import numpy as np
import pytest
import torch

from charnn.calibration import best_scale, can_fold, candidates, fold, scaled, unfold
from charnn.config import ModelConfig
from charnn.errors import CheckpointError
from charnn.evaluate import evaluate_ids, evaluate_validation
from charnn.model import CharRNN
from charnn.store.rundir import list_checkpoints, load_run
from charnn.store.trainstate import load_state, state_path
from charnn.training.train import train
from tests.conftest import tiny_configs

SHAPES = {
    "untied, layer norm": ModelConfig(layers=2, hidden=16, embed=8, layer_norm=True),
    "untied, no layer norm": ModelConfig(layers=1, hidden=16, embed=8),
    "tied, layer norm": ModelConfig(layers=2, hidden=16, embed=16, tie_weights=True, layer_norm=True),
}


def _model(cfg: ModelConfig, vocab: int = 11) -> CharRNN:
    torch.manual_seed(0)
    model = CharRNN(cfg, vocab).eval()
    with torch.no_grad():  # a non-trivial layer norm and head bias, as training leaves them
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize("name", SHAPES)
def test_folding_a_scale_multiplies_the_logits_and_scaled_puts_the_weights_back_exactly(name):
    model = _model(SHAPES[name])
    x = torch.randint(11, (3, 9))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = model(x)[0]
    with scaled(model, 0.8) as unscaled:
        assert torch.allclose(model(x)[0], 0.8 * plain, atol=1e-5)
        assert unscaled and all(torch.equal(before[k], v) for k, v in unscaled.items())
        assert torch.equal(model.state_dict()["embed.weight"], before["embed.weight"])  # the input is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unfold_restores_a_folded_model_and_refuses_tensors_that_do_not_fit():
    model = _model(SHAPES["untied, layer norm"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with scaled(model, 1.3) as unscaled:
        pass
    fold(model, 1.3)
    unfold(model, unscaled)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="head.weight"):
        unfold(model, {"head.weight": torch.zeros(3, 3)})


def test_a_tied_head_without_layer_norm_has_nowhere_to_hold_a_scale():
    cfg = ModelConfig(layers=1, hidden=16, embed=16, tie_weights=True)
    assert not can_fold(cfg) and all(can_fold(c) for c in SHAPES.values())
    with pytest.raises(ValueError, match="tied"):
        fold(_model(cfg), 0.9)


def test_candidates_are_around_the_last_scale_with_one_and_within_bounds():
    for last in (1.0, 0.88, 1.7, 0.01, 100.0):
        c = candidates(last)
        assert 1.0 in c and list(c) == sorted(set(c)) and all(0.25 <= s <= 4.0 for s in c)
    assert min(candidates(0.88)) < 0.8 < 0.95 < max(candidates(0.88))


def test_best_scale_takes_the_lowest_total_and_one_on_a_tie():
    assert best_scale({0.9: 10.0, 1.0: 11.0, 1.1: 12.0}) == 0.9
    assert best_scale({0.9: 10.0, 1.0: 10.0}) == 1.0
    assert best_scale({0.9: math.nan, 1.0: 12.0, 1.1: math.inf}) == 1.0


def test_the_totals_of_each_scale_are_the_scores_of_the_model_with_it_folded_in():
    model = _model(SHAPES["untied, layer norm"])
    ids = np.random.default_rng(0).integers(0, 11, 700)
    scales = (0.7, 1.0, 1.25)
    res = evaluate_ids(model, ids, segment=128, chunk=32, scales=scales)
    assert res.scaled_nats is not None and set(res.scaled_nats) == set(scales)
    assert math.isclose(res.scaled_nats[1.0], res.total_nats, rel_tol=1e-6)
    for s in scales:
        with scaled(model, s):
            alone = evaluate_ids(model, ids, segment=128, chunk=32)
        assert math.isclose(res.scaled_nats[s], alone.total_nats, rel_tol=1e-5)
    assert evaluate_ids(model, ids[:1], scales=scales).scaled_nats == dict.fromkeys(scales, 0.0)


def _evals(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]


def test_training_saves_the_calibrated_model_and_logs_both_figures(tmp_path, tiny_corpus):
    model_cfg, cfg, data = tiny_configs(max_iters=30, eval_every=10, sample_length=0)
    train(tiny_corpus, model_cfg=model_cfg, train_cfg=cfg, data_cfg=data, out_dir=tmp_path / "on")
    evals = _evals(tmp_path / "on")
    assert all(r["val_loss"] <= r["val_loss_uncalibrated"] for r in evals)
    assert any(r["calibrated_temperature"] != 1.0 for r in evals)
    by_step = {r["step"]: r for r in evals}
    for path in list_checkpoints(tmp_path / "on"):  # eval scores the saved model: the calibrated figure
        loaded = load_run(path)
        assert math.isclose(evaluate_validation(loaded).loss, by_step[loaded.step]["val_loss"], rel_tol=1e-6)
        scale = load_state(state_path(path))["logit_scale"]
        assert math.isclose(1 / scale, by_step[loaded.step]["calibrated_temperature"], rel_tol=1e-3)

    off = dataclasses.replace(cfg, calibrate=False)
    train(tiny_corpus, model_cfg=model_cfg, train_cfg=off, data_cfg=data, out_dir=tmp_path / "off")
    plain = _evals(tmp_path / "off")
    assert all("val_loss_uncalibrated" not in r for r in plain)
    assert [r["val_loss"] for r in plain] == pytest.approx([r["val_loss_uncalibrated"] for r in evals], rel=1e-6)


def test_a_resumed_calibrated_run_equals_an_uninterrupted_one(tmp_path, tiny_corpus):
    """The model file holds the scale; the training state the weights without it, and the scale the next
    validation fits around, so a resume trains and calibrates as the run would have gone on."""
    model_cfg, cfg, data = tiny_configs(max_iters=12, min_lr=1e-2, eval_every=3, sample_length=0, average=0.0)
    train(tiny_corpus, model_cfg=model_cfg, train_cfg=cfg, data_cfg=data, out_dir=tmp_path / "a")
    first = dataclasses.replace(cfg, max_iters=7)  # constant lr; ends between validations: one more at 7
    train(tiny_corpus, model_cfg=model_cfg, train_cfg=first, data_cfg=data, out_dir=tmp_path / "b")
    state = load_state(state_path(list_checkpoints(tmp_path / "b")[-1]))
    assert state["logit_scale"] != 1.0 and state["unscaled"]  # the resume has a scale to take out
    at_6 = next(r for r in _evals(tmp_path / "b") if r["step"] == 6)["calibrated_temperature"]
    assert math.isclose(1 / state["scale_centre"], at_6, rel_tol=1e-3)  # the extra step-7 fit does not move it
    assert state["scale_centre"] != state["logit_scale"]  # (which this run's fits show)
    train(tiny_corpus, model_cfg=model_cfg, train_cfg=cfg, data_cfg=data, out_dir=tmp_path / "b", resume=True)
    a, b = (load_run(tmp_path / d, which="latest").model.state_dict() for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    straight = [r["val_loss"] for r in _evals(tmp_path / "a")]
    assert straight == [r["val_loss"] for r in _evals(tmp_path / "b") if r["step"] != 7]


def test_a_resume_may_turn_it_off_and_then_saves_the_model_as_trained(tmp_path, tiny_corpus):
    model_cfg, cfg, data = tiny_configs(max_iters=10, eval_every=5, sample_length=0)
    train(tiny_corpus, model_cfg=model_cfg, train_cfg=cfg, data_cfg=data, out_dir=tmp_path / "r")
    assert load_state(state_path(list_checkpoints(tmp_path / "r")[-1]))["logit_scale"] != 1.0
    off = dataclasses.replace(cfg, max_iters=15, calibrate=False)
    train(tiny_corpus, model_cfg=model_cfg, train_cfg=off, data_cfg=data, out_dir=tmp_path / "r", resume=True)
    last = _evals(tmp_path / "r")[-1]
    loaded = load_run(tmp_path / "r", which="latest")
    assert loaded.step == last["step"] == 15 and "val_loss_uncalibrated" not in last
    assert math.isclose(evaluate_validation(loaded).loss, last["val_loss"], rel_tol=1e-6)
    assert load_state(state_path(loaded.path))["logit_scale"] == 1.0


def test_a_training_state_with_a_scale_that_is_not_positive_is_refused(tmp_path):
    state = {"step": 1, "elapsed": 1.0, "optimizer": {"state": {}, "param_groups": []}, "rng": {}}
    state["logit_scale"] = -1.0
    path = tmp_path / "s.state.pt"
    buf = io.BytesIO()
    torch.save(state, buf)
    path.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="logit_scale"):
        load_state(path)
