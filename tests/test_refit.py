"""The plan's length fitted again to the run's own speed (charnn.training.refit): longer where the run steps
faster than the plan measured, shorter where it steps slower, recorded for a resume, and never where the user
chose the length."""

import json
from pathlib import Path

import pytest

import charnn.training.refit as refit
from charnn.training.plan import PlanRequest
from charnn.training.resume import resume_configs
from charnn.training.setup import plan
from charnn.training.train import train
from tests.conftest import TINY_TEXT

SMALL = {"model": "lstm", "layers": 1, "hidden": 16, "embed": 8}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TINY_TEXT * 5, encoding="utf-8")  # about 14,000 characters: a few steps an epoch
    return path


@pytest.fixture
def quick_refit(monkeypatch):
    """Fit again from the first validation on (the run's first steps are enough to time a tiny model)."""
    monkeypatch.setattr(refit, "LEAST_STEPS", 1)
    monkeypatch.setattr(refit, "LEAST_SECONDS", 0.0)


def request(**train) -> PlanRequest:
    return PlanRequest(model=SMALL, train={"patience": 0, "threads": 1, "sample_length": 0, **train})


def refits(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line["kind"] == "refit"]


def test_a_run_faster_than_measured_trains_to_the_plans_uncut_length(corpus, tmp_path, monkeypatch, quick_refit):
    monkeypatch.setenv("CHARNN_STEP_SECONDS", "10")  # the plan believes a step takes 10 s: it cuts the schedule
    chosen = plan(corpus, request=request(), device="cpu")
    assert chosen.capped and chosen.longest is not None and chosen.train.max_iters < chosen.longest
    events = []
    result = train(corpus, request=request(), out_dir=tmp_path / "run", on_progress=events.append)
    assert result.steps == chosen.longest  # the tiny model's steps take milliseconds: the whole uncut length
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["max_iters"] == chosen.longest and config["plan"]["capped"] is True
    (record,) = refits(tmp_path / "run")
    assert record["max_iters"] == chosen.longest and record["step"] == chosen.train.eval_every
    fitted = [e.text for e in events if e.kind == "plan" and "fitted again" in e.text]
    assert len(fitted) == 1 and f"{chosen.longest:,} steps in all (was {chosen.train.max_iters:,})" in fitted[0]
    assert events[-1].total_steps == chosen.longest
    assert result.stop_reason == f"the plan's {chosen.longest:,} steps done"
    _, cfg, _, _ = resume_configs(tmp_path / "run", model_overrides={}, data_overrides={}, train_overrides={})
    assert cfg.max_iters == chosen.longest  # a resume continues with the length fitted again


def test_a_run_slower_than_measured_ends_sooner(corpus, tmp_path, monkeypatch, quick_refit):
    monkeypatch.setenv("CHARNN_STEP_SECONDS", "0.0001")  # measured as very fast: the whole length fits
    monkeypatch.setattr(refit, "TARGET_SECONDS", 0.0)  # ... but the run has already spent its time
    chosen = plan(corpus, request=request(), device="cpu")
    assert not chosen.capped and chosen.longest == chosen.train.max_iters
    result = train(corpus, request=request(), out_dir=tmp_path / "run")
    assert result.steps == chosen.train.eval_every  # it ends at the first validation, where it was fitted again
    assert result.stop_reason == f"the plan's cap of {result.steps:,} steps reached"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["max_iters"] == result.steps


@pytest.mark.parametrize("given", [{"max_iters": 30}, {"epochs": 3.0}])
def test_a_length_the_user_chose_is_never_fitted_again(corpus, tmp_path, monkeypatch, quick_refit, given):
    monkeypatch.setenv("CHARNN_STEP_SECONDS", "10")
    monkeypatch.setattr(refit, "TARGET_SECONDS", 0.0)
    result = train(corpus, request=request(**given), out_dir=tmp_path / "run")
    assert not refits(tmp_path / "run") and result.steps >= 20


def test_the_speed_is_timed_only_once_enough_was_done(monkeypatch):
    from charnn.training.runstate import LoopState

    s = LoopState(eval_seconds=2.0)
    monkeypatch.setattr(LoopState, "elapsed", lambda self: 32.0)
    assert refit.loop_speed(s, steps=50, validations=1) is None  # fewer steps than LEAST_STEPS
    assert refit.loop_speed(s, steps=1000, validations=0) is None  # no validation timed yet
    speed = refit.loop_speed(s, steps=1000, validations=2)
    assert speed.step_seconds == pytest.approx(30.0 / 1000 / refit.LOOP_OVERHEAD)
    assert speed.eval_seconds == pytest.approx(1.0 - refit.CHECKPOINT_SECONDS)
