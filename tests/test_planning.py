"""The training plan: a pure function of (corpus facts, hardware, request); explicit flags always win."""

import dataclasses
import json
import math

import pytest

from charnn.config import ModelConfig, TrainConfig
from charnn.errors import ConfigError
from charnn.presets import PRESETS
from charnn.shapes import num_parameters
from charnn.training.choices import (
    CPU_MAX_STEPS,
    MAX_EVAL_EVERY,
    MIN_EVAL_EVERY,
    RESHUFFLE,
    WIDTHS,
    batch_shape,
    run_shape,
    tier_of,
    width_choice,
)
from charnn.training.plan import CorpusFacts, Hardware, PlanRequest, make_plan
from charnn.training.timing import (
    CHECKPOINT_SECONDS,
    LOOP_OVERHEAD,
    SAMPLE_SECONDS,
    START_SECONDS,
    TARGET_SECONDS,
    Speed,
    duration,
    eval_cost_steps,
    per_step,
)

CPU = Hardware("cpu", cores=2)
GPU = Hardware("cuda", cores=16)


def facts(train_chars: int, vocab: int = 65) -> CorpusFacts:
    return CorpusFacts(train_chars, train_chars // 9, vocab)


def per_epoch(plan, train_chars: int) -> int:
    return (train_chars // plan.train.batch_size - 1) // plan.train.seq_len


def test_small_corpus_gets_dropout_frequent_validation_and_patience():
    plan = make_plan(facts(45_000), CPU)
    assert plan.tier == "small corpus"
    assert plan.model.dropout == 0.5
    steps = per_epoch(plan, 45_000)
    assert MIN_EVAL_EVERY <= plan.train.eval_every <= max(steps, MIN_EVAL_EVERY)  # at least once per epoch
    assert plan.train.patience is not None and plan.train.patience >= 1
    assert "45,000 training characters" in plan.lines[0] and "dropout 0.5" in plan.lines[0]


def test_dropout_falls_as_the_corpus_grows():
    drops = [make_plan(facts(n), CPU).model.dropout for n in (20_000, 200_000, 1_000_000, 50_000_000)]
    assert drops == sorted(drops, reverse=True)
    assert drops[0] > drops[-1]


def test_the_text_is_reordered_each_epoch_whatever_its_size():
    for n, gpu in ((20_000, False), (99_999, False), (100_000, False), (1_000_000, False), (1_000_000, True)):
        plan = make_plan(facts(n), GPU if gpu else CPU)
        assert plan.train.reshuffle == RESHUFFLE > 0, n
        assert any(f"{RESHUFFLE:,}-character chunks each epoch" in line for line in plan.lines), n
    assert make_plan(facts(1_000_000), CPU, PlanRequest(train={"reshuffle": 0})).train.reshuffle == 0
    assert TrainConfig().reshuffle == 0  # the library's own config keeps the order


def test_validation_at_least_once_an_epoch_and_within_the_first_minute():
    for n in (5_000, 45_000, 200_000, 1_000_000, 100_000_000):
        plan = make_plan(facts(n), CPU)
        assert plan.train.eval_every <= max(per_epoch(plan, n), MIN_EVAL_EVERY)
        assert plan.train.eval_every <= MAX_EVAL_EVERY


@pytest.mark.parametrize(
    "flag,value",
    [("dropout", 0.1), ("hidden", 64), ("layers", 3), ("model", "gru"), ("embed", 32), ("layer_norm", False)],
)
def test_explicit_model_flags_win(flag, value):
    plan = make_plan(facts(45_000), CPU, PlanRequest(model={flag: value}))
    assert getattr(plan.model, flag) == value
    assert flag not in plan.chosen
    assert f"--{flag.replace('_', '-')}" in plan.lines[-1]


@pytest.mark.parametrize(
    "flag,value",
    [
        ("batch_size", 8),
        ("seq_len", 32),
        ("lr", 1e-3),
        ("eval_every", 7),
        ("patience", 3),
        ("weight_decay", 0.0),
        ("max_iters", 123),
        ("warmup_iters", 0),
        ("reshuffle", 512),
    ],
)
def test_explicit_train_flags_win(flag, value):
    plan = make_plan(facts(45_000), CPU, PlanRequest(train={flag: value}))
    assert getattr(plan.train, flag) == value
    assert flag not in plan.chosen


def test_an_explicit_stopping_rule_replaces_the_plans():
    plan = make_plan(facts(45_000), CPU, PlanRequest(train={"time_budget": 60.0}))
    assert plan.train.time_budget == 60.0 and plan.train.max_iters is None
    plan = make_plan(facts(45_000), CPU, PlanRequest(train={"epochs": 3.0}))
    assert plan.train.epochs == 3.0 and plan.train.max_iters is None


def test_patience_zero_turns_early_stopping_off():
    plan = make_plan(facts(45_000), CPU, PlanRequest(train={"patience": 0}))
    assert not plan.train.patience
    assert "no early stopping" in " ".join(plan.lines)


def test_a_preset_gives_its_model_and_schedule_and_flags_still_win():
    plan = make_plan(facts(45_000), CPU, PlanRequest(preset="tiny"))
    assert plan.model == PRESETS["tiny"].model
    assert plan.train.max_iters == PRESETS["tiny"].train["max_iters"]
    assert plan.train.patience is not None  # the overfitting guard stays on
    plan = make_plan(facts(45_000), CPU, PlanRequest(preset="tiny", model={"dropout": 0.3}))
    assert plan.model == dataclasses.replace(PRESETS["tiny"].model, dropout=0.3)
    with pytest.raises(ConfigError):
        make_plan(facts(45_000), CPU, PlanRequest(preset="huge"))


def test_tie_weights_takes_the_hidden_size_as_embedding():
    plan = make_plan(facts(45_000), CPU, PlanRequest(model={"tie_weights": True}))
    assert plan.model.embed == plan.model.hidden


def test_gpu_gets_more_streams_than_cpu():
    assert make_plan(facts(1_000_000), GPU).train.batch_size > make_plan(facts(1_000_000), CPU).train.batch_size


def test_batch_shape_fits_a_tiny_corpus():
    for n in (200, 1_000, 3_000, 20_000):
        b, t = batch_shape(n, 16, 64)
        assert b * (t + 1) <= n
        assert (n // b - 1) // t >= 4 or (b == 1 and t == 8)
    assert batch_shape(10_000_000, 16, 64) == (16, 64)


def test_plan_configs_are_valid_and_deterministic():
    for n in (300, 20_000, 45_000, 200_000, 1_000_000, 10**9):
        a, b = make_plan(facts(n), CPU), make_plan(facts(n), CPU)
        assert a == b
        assert isinstance(a.model, ModelConfig) and isinstance(a.train, TrainConfig)
        assert a.train.warmup_iters <= (a.train.max_iters or 10**9)
    assert tier_of(10)[0] == "small corpus"


# --- the plan in a run ----------------------------------------------------------------------------------


def _memorisable(tmp_path):
    """One repeated pattern to train on, a random tail to validate on: as training succeeds, validation
    gets worse, so a run must stop on its own and keep its best checkpoint."""
    import random

    rng = random.Random(0)
    corpus = tmp_path / "shift.txt"
    corpus.write_text("abcdefgh" * 2250 + "".join(rng.choice("abcdefgh") for _ in range(2000)))
    return corpus


def test_a_memorisable_corpus_stops_early_on_its_own_and_keeps_the_best(tmp_path):
    import json

    from charnn.store.rundir import load_run
    from charnn.training.train import train

    events = []
    request = PlanRequest(
        model={"layers": 1, "hidden": 32, "embed": 8, "dropout": 0.0},
        # calibrate off: the warning follows the saved model's loss, whose temperature holds this short rise off
        train={"lr": 1e-2, "sample_length": 0, "device": "cpu", "seed": 0, "calibrate": False},
    )
    result = train(_memorisable(tmp_path), request=request, out_dir=tmp_path / "run", on_progress=events.append)
    assert events[0].kind == "plan" and "training characters" in events[0].text
    assert result.stopped_early and "no new best validation loss" in result.stop_reason
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["plan"]["lines"] == events[0].text.splitlines()
    assert result.steps < config["train"]["max_iters"]
    kept = load_run(tmp_path / "run")
    assert kept.step == result.best_step < result.steps and kept.val_loss == result.best_val_loss
    assert any(e.kind == "warning" and "memorising" in e.text for e in events)


def test_overfitting_warning_fires_on_rising_validation_only():
    from charnn.training.loop import overfitting

    rising = [(2.0, 1.50), (1.8, 1.45), (1.6, 1.48), (1.4, 1.55), (1.3, 1.60)]
    assert overfitting(rising)
    assert not overfitting(rising[:4])  # two rises can be noise
    falling = [(2.0, 1.9), (1.8, 1.7), (1.6, 1.6), (1.4, 1.5)]
    assert not overfitting(falling)
    both_rising = [(1.4, 1.50), (1.5, 1.55), (1.6, 1.60), (1.7, 1.65)]  # training diverges too: not memorising
    assert not overfitting(both_rising)


def test_plan_flag_prints_the_plan_and_writes_nothing(tmp_path):
    import os
    import subprocess

    from tests.conftest import PYTHON, TINY_TEXT, cli_env

    (tmp_path / "notes.txt").write_text(TINY_TEXT * 5, encoding="utf-8")
    before = sorted(os.listdir(tmp_path))
    out = subprocess.run(
        [PYTHON, "-m", "charnn", "train", "notes.txt", "--plan", "--dropout", "0.2"],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "training characters" in out.stdout and "dropout 0.2" in out.stdout and "given: --dropout" in out.stdout
    assert sorted(os.listdir(tmp_path)) == before  # no checkpoints/, no cache


def test_library_plan_matches_what_train_would_use(tmp_path):
    import charnn

    plan = charnn.plan  # the package exports the plan beside train
    corpus = _memorisable(tmp_path)
    p = plan(corpus, device="cpu")
    assert p.tier == "small corpus" and p.train.device == "auto"
    assert p == plan(corpus, device="cpu")
    given = plan(corpus, device="cpu", step_seconds=0.05)  # given, not measured
    assert given.speed == Speed(0.05) and given.estimated_seconds > given.train.max_iters * 0.05
    assert given.to_json()["measured_step_seconds"] == 0.05 and p.estimated_seconds is None


# --- the plan at the device's measured speed ------------------------------------------------------------


def test_a_slow_cpu_gets_a_default_schedule_capped_to_about_five_minutes():
    slow = make_plan(facts(1_000_000), Hardware("cpu", cores=2, speed=Speed(0.08, 2.0)))
    cfg = slow.train
    assert slow.capped and cfg.max_iters < CPU_MAX_STEPS and slow.longest == CPU_MAX_STEPS  # the loop may refit
    shape = run_shape(100_000, cfg, slow.speed, cfg.eval_every)  # the same arithmetic the plan used
    assert slow.estimated_seconds == shape.seconds(cfg.max_iters) <= TARGET_SECONDS < shape.seconds(cfg.max_iters + 1)
    assert cfg.warmup_iters <= cfg.max_iters // 10 and cfg.eval_every <= cfg.max_iters
    line = next(line for line in slow.lines if line.startswith("about "))
    assert f"capped at {cfg.max_iters:,} steps to fit about 5 min" in line and "measured 80 ms a step" in line
    fast = make_plan(facts(1_000_000), Hardware("cpu", cores=2, speed=Speed(0.02, 1.0)))
    assert not fast.capped and fast.train.max_iters == CPU_MAX_STEPS == fast.longest  # fitted, not cut
    assert fast.estimated_seconds < TARGET_SECONDS and "capped" not in " ".join(fast.lines)


def test_the_estimate_adds_steps_validations_checkpoints_and_samples():
    speed = Speed(step_seconds=0.05, eval_seconds=1.0)
    plan = make_plan(facts(45_000), Hardware("cpu", cores=2, speed=speed))
    steps, evals = plan.train.max_iters, math.ceil(plan.train.max_iters / plan.train.eval_every)
    samples = sum(s <= steps for s in (100, 300, 700)) + steps // 1000 + 1
    rest = START_SECONDS + steps * 0.05 * LOOP_OVERHEAD + samples * SAMPLE_SECONDS
    assert plan.estimated_seconds == pytest.approx(rest + evals * (1.0 + CHECKPOINT_SECONDS))
    assert plan.speed == speed and not plan.capped
    # without a measured validation the step time prices it: eval_cost_steps steps for this split
    rough = make_plan(facts(45_000), Hardware("cpu", cores=2, speed=Speed(0.05)))
    assert rough.estimated_seconds == pytest.approx(rest + evals * 0.05 * eval_cost_steps(5_000, 4096))


def test_validation_comes_within_a_minute_at_the_measured_speed():
    for step in (0.03, 0.2, 0.9, 5.0):
        for n in (45_000, 1_000_000, 100_000_000):
            plan = make_plan(facts(n), Hardware("cpu", cores=2, speed=Speed(step)))
            assert plan.train.eval_every * step <= 60 or plan.train.eval_every == 1


@pytest.mark.parametrize(
    "train,flag",
    [({"max_iters": 20_000}, "--max-iters"), ({"epochs": 30.0}, "--epochs"), ({"time_budget": 900.0}, "--time-budget")],
)
def test_a_given_stopping_rule_is_not_capped_and_the_plan_says_so(train, flag):
    plan = make_plan(facts(1_000_000), Hardware("cpu", cores=2, speed=Speed(0.08, 2.0)), PlanRequest(train=train))
    assert not plan.capped and plan.longest is None and plan.estimated_seconds > TARGET_SECONDS
    assert f"not capped to 5 min: {flag} given" in " ".join(plan.lines)
    for key, value in train.items():
        assert getattr(plan.train, key) == value
    if "time_budget" in train:  # the budget spans the validations; one more after it, and the start
        assert plan.estimated_seconds == pytest.approx(START_SECONDS + 900 + 2.0 + CHECKPOINT_SECONDS)
    preset = make_plan(facts(1_000_000), Hardware("cpu", cores=2, speed=Speed(0.08)), PlanRequest(preset="small"))
    assert not preset.capped and preset.longest is None
    assert preset.train.max_iters == PRESETS["small"].train["max_iters"]
    assert "not capped to 5 min: preset small's schedule" in " ".join(preset.lines)


# --- a wider model where a large corpus's run affords many passes ---------------------------------------

BASE = 947_137  # parameters of the plan's 2x256 LSTM with layer norm over 65 symbols


def timed(step_seconds: float, eval_seconds: float = 1.0, parameters: int | None = BASE, bf16: bool = True) -> Hardware:
    return Hardware("cpu", cores=2, native_bf16=bf16, speed=Speed(step_seconds, eval_seconds, parameters))


def test_a_fast_cpu_widens_the_model_where_the_time_affords_many_passes():
    base = make_plan(facts(1_000_000), CPU).model
    assert base.hidden == 256 and num_parameters(base, 65) == BASE
    for request in (PlanRequest(), PlanRequest(train={"time_budget": 240.0})):
        fast, slow = (
            make_plan(facts(1_000_000), timed(0.03), request),
            make_plan(facts(1_000_000), timed(0.06), request),
        )
        assert slow.model == base and slow.speed == Speed(0.06, 1.0, BASE)  # too few passes: as measured
        wide = fast.model
        assert wide.hidden == WIDTHS[0][0] > 256 and dataclasses.replace(wide, hidden=256) == base
        # the wider model's step is estimated from the one timed, in proportion to the parameters
        ratio = num_parameters(wide, 65) / BASE
        assert fast.speed.step_seconds == pytest.approx(0.03 * ratio) and fast.speed.timed == Speed(0.03, 1.0, BASE)
        assert fast.speed.eval_seconds == pytest.approx(ratio)
        line = next(line for line in fast.lines if line.startswith("about "))
        assert f"measured 30 ms for {BASE:,} parameters" in line and "LSTM 2x384" in fast.lines[0]
        assert fast.lines[1].startswith("384 units rather than 256") and "--hidden 256" in fast.lines[1]
        assert fast.to_json()["timed_parameters"] == BASE
    # the default schedule is fitted to about five minutes at the wider model's estimated speed
    default = make_plan(facts(1_000_000), timed(0.03))
    assert default.capped and default.estimated_seconds <= TARGET_SECONDS


@pytest.mark.parametrize(
    "n,request_,hardware",
    [
        (300_000, PlanRequest(), timed(0.001)),  # a medium corpus keeps its model (and its dropout)
        (1_000_000, PlanRequest(model={"hidden": 256}), timed(0.001)),  # the model's shape given
        (1_000_000, PlanRequest(model={"layers": 3}), timed(0.001)),
        (1_000_000, PlanRequest(train={"max_iters": 2000}), timed(0.001)),  # steps given, not time
        (1_000_000, PlanRequest(preset="small"), timed(0.001)),
        (1_000_000, PlanRequest(), timed(0.001, parameters=None)),  # a step time given, its model's size unknown
        (1_000_000, PlanRequest(), timed(0.001, bf16=False)),  # fp32 on a CPU without native bf16
        (1_000_000, PlanRequest(train={"precision": "fp32"}), timed(0.001)),
        (1_000_000, PlanRequest(), Hardware("cuda", cores=16, speed=Speed(0.001, 1.0, BASE))),
    ],
)
def test_the_model_is_widened_only_for_a_new_default_shape_on_a_cpu_run_that_ends_by_time(n, request_, hardware):
    plan = make_plan(facts(n), hardware, request_)
    assert plan.model.hidden not in {hidden for hidden, _ in WIDTHS}


def test_width_follows_the_passes():
    assert width_choice(100.0, 256) == WIDTHS[0][0] and width_choice(WIDTHS[-1][1] - 0.01, 256) == 256


def test_without_a_measured_speed_the_plan_neither_estimates_nor_caps():
    plan = make_plan(facts(1_000_000), CPU)
    assert plan.estimated_seconds is None and plan.speed is None and not plan.capped
    assert plan.train.max_iters == CPU_MAX_STEPS and not any(line.startswith("about ") for line in plan.lines)


def test_a_gpu_plan_is_estimated_but_not_capped():
    plan = make_plan(facts(10_000_000), Hardware("cuda", cores=16, speed=Speed(0.2, 3.0)))
    assert not plan.capped and plan.train.max_iters == 5000 and plan.estimated_seconds > TARGET_SECONDS
    assert plan.longest is None  # a GPU's schedule is not fitted to a time, before the start or during the run
    assert any(line.startswith("about ") and "on this GPU" in line for line in plan.lines)


def test_the_plan_as_json_is_one_rfc_8259_object():
    plan = make_plan(facts(45_000), Hardware("cpu", cores=2, speed=Speed(0.05, 0.5)))
    got = json.loads(json.dumps(plan.to_json(), allow_nan=False))  # dumps raises on NaN or infinity
    assert got["lines"] == list(plan.lines) and got["model"]["hidden"] == plan.model.hidden
    assert got["schedule"]["steps"] == plan.train.max_iters and got["cadence"]["eval_every"] == plan.train.eval_every
    assert got["stopping"]["patience"] == plan.train.patience and got["capped"] is False
    assert got["measured_step_seconds"] == 0.05 and got["estimated_seconds"] == round(plan.estimated_seconds, 1)
    unmeasured = json.loads(json.dumps(make_plan(facts(45_000), CPU).to_json(), allow_nan=False))
    assert unmeasured["estimated_seconds"] is None and unmeasured["measured_step_seconds"] is None
    with pytest.raises(ValueError):
        Speed(0.05, math.nan)  # a speed is a number of seconds: no NaN reaches the plan
    with pytest.raises(ValueError):
        Speed(math.inf)


@pytest.mark.parametrize(
    "seconds,text",
    [(12.4, "12 s"), (59, "59 s"), (220, "3 min 40 s"), (300, "5 min"), (3600, "1 h 00 min"), (5000, "1 h 23 min")],
)
def test_durations_read_as_a_person_says_them(seconds, text):
    assert duration(seconds) == text


def test_step_times_read_in_milliseconds_or_seconds():
    assert [per_step(s) for s in (0.0412, 0.0041, 0.5, 0.999, 1.24)] == ["41 ms", "4.1 ms", "500 ms", "1 s", "1.2 s"]
