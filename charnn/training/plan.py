"""The training plan: model size, regularisation, batch shape, schedule, validation cadence and stopping rule,
chosen from the corpus (training characters, vocabulary) and the hardware, with the user's flags laid on top,
and the lines that explain it, with the run's estimated wall time.

A pure function of its inputs (no torch, no files): `make_plan(facts, hardware, request)`. Its rules are in
`charnn.training.choices`; the device's measured speed (`Hardware.speed`, from `charnn.training.speed`) fits a
default CPU schedule to about five minutes (`charnn.training.timing`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from charnn.config import PLANNED, STOPPING_RULES, ModelConfig, TrainConfig, check_fields, overlay_train
from charnn.errors import ConfigError
from charnn.fields import flag_text, to_dict
from charnn.presets import PRESETS
from charnn.shapes import num_parameters
from charnn.store.bundled import STARTER
from charnn.training.choices import (
    WIDE_CHARS,
    WIDTHS,
    affordable_passes,
    model_choice,
    run_shape,
    schedule_choice,
    steps_per_epoch,
    tier_of,
    width_choice,
)
from charnn.training.schedule import total_steps
from charnn.training.timing import START_SECONDS, TARGET_SECONDS, Speed, duration, eval_share, per_step, run_length

# Given options that change what the plan's lines describe (the others, such as --threads, are not listed).
SHAPING = frozenset(
    {"time_budget", "epochs", "tie_weights", "locked_dropout", "weight_drop", "min_lr", "grad_clip", "average"}
)
# Model options a fine-tuned run may change: no weight's shape or meaning depends on them.
FREE_ON_FINETUNE = ("dropout", "locked_dropout", "weight_drop")
# A new model on fewer training characters than this, most of them (STARTER_HINT_COVERAGE) known to the
# bundled starter: the plan's lines suggest fine-tuning it (docs/finetune.md measures why); it never switches.
STARTER_HINT_CHARS = 100_000
STARTER_HINT_COVERAGE = 0.95  # 96.8% of a slice of the Jargon File, which it helped (docs/finetune.md)


@dataclass(frozen=True)
class Hardware:
    """What the plan needs to know about where training runs."""

    device: str = "cpu"  # cpu | cuda | mps
    cores: int = 1
    native_bf16: bool = False
    speed: Speed | None = None  # measured on the plan's model and batch shape (None: not measured)


@dataclass(frozen=True)
class CorpusFacts:
    """What the plan needs to know about the corpus: its split sizes and its vocabulary; and, for a small one, the
    share of its training characters the bundled starter model knows (None: not looked at)."""

    train_chars: int
    val_chars: int
    vocab_size: int
    starter_coverage: float | None = None


@dataclass(frozen=True)
class PlanRequest:
    """What the user asked for: a preset (or none) and the flags given explicitly (None values are ignored);
    `init_model`: the model whose trained weights the run starts from (None: a new model)."""

    preset: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    init_model: ModelConfig | None = None

    def given(self) -> dict[str, Any]:
        return {k: v for k, v in {**self.model, **self.train}.items() if v is not None}


@dataclass(frozen=True)
class Plan:
    """The configs to train with, and why: `lines` is what `charnn train` prints at the start."""

    model: ModelConfig
    train: TrainConfig
    tier: str
    lines: tuple[str, ...]
    chosen: tuple[str, ...]  # the options the plan chose (the rest were given by the user or a preset)
    steps_per_epoch: int = 1
    estimated_seconds: float | None = None  # the run's wall time to the plan's end (None: speed not measured)
    speed: Speed | None = None
    # The length before the fit, where the length is fitted to this device's speed (a CPU's default schedule; the
    # loop fits it again to the run's own speed: charnn.training.refit); None where it is not.
    longest: int | None = None

    @property
    def capped(self) -> bool:
        """The default schedule was shortened to fit about TARGET_SECONDS on this device."""
        return self.longest is not None and self.train.max_iters is not None and self.train.max_iters < self.longest

    def as_dict(self) -> dict[str, Any]:
        """The record kept in the run's config.json."""
        return {
            "tier": self.tier,
            "lines": list(self.lines),
            "chosen": list(self.chosen),
            "estimated_seconds": _rounded(self.estimated_seconds),
            "measured_step_seconds": _rounded(self.speed.step_seconds if self.speed else None, 5),
            "measured_eval_seconds": _rounded(self.speed.eval_seconds if self.speed else None, 4),
            # where the plan's model is wider than the draft's that was timed: the figures above are estimated
            # from these, in proportion to the parameters (charnn.training.timing.Speed.for_parameters)
            "timed_parameters": self.speed.timed.parameters if self.speed and self.speed.timed else None,
            "timed_step_seconds": _rounded(
                self.speed.timed.step_seconds if self.speed and self.speed.timed else None, 5
            ),
            "capped": self.capped,
        }

    def to_json(self) -> dict[str, Any]:
        """The whole plan as one JSON object (`charnn train FILE --plan --json`): the record, the model, and the
        schedule, validation cadence and stopping rule it trains with."""
        cfg = self.train
        return {
            **self.as_dict(),
            "model": to_dict(self.model),
            "schedule": {
                "batch_size": cfg.batch_size,
                "seq_len": cfg.seq_len,
                "steps_per_epoch": self.steps_per_epoch,
                "steps": total_steps(cfg, self.steps_per_epoch),
                "lr": cfg.lr,
                "min_lr": cfg.min_lr,
                "warmup_iters": cfg.warmup_iters,
                "weight_decay": cfg.weight_decay,
                "precision": cfg.precision,
            },
            "cadence": {"eval_every": cfg.eval_every, "eval_segment": cfg.eval_segment, "log_every": cfg.log_every},
            "stopping": {
                "max_iters": cfg.max_iters,
                "epochs": cfg.epochs,
                "time_budget": cfg.time_budget,
                "patience": cfg.patience,
            },
        }


def _rounded(value: float | None, digits: int = 1) -> float | None:
    """JSON's number, or null: never NaN or infinity (RFC 8259 has neither)."""
    return round(value, digits) if value is not None and math.isfinite(value) else None


def make_plan(facts: CorpusFacts, hardware: Hardware, request: PlanRequest | None = None) -> Plan:
    """Configs for `facts` on `hardware`; a preset's values, then the user's flags, win over the plan's."""
    request = request or PlanRequest()
    check_fields(ModelConfig, request.model)  # a bad flag is its own error, not a failure of the plan's arithmetic
    check_fields(TrainConfig, request.train)
    tier, dropout = tier_of(facts.train_chars)
    gpu = hardware.device == "cuda"
    base_model, base_train = model_choice(facts.train_chars, gpu, dropout), {}
    if request.init_model is not None:
        if request.preset is not None:
            raise ConfigError("--preset cannot be combined with --init-from (the run keeps its starting model)")
        base_model = {}  # the model is the starting one's, with the few options a fine-tune may change
    elif request.preset is not None:
        if request.preset not in PRESETS:
            raise ConfigError(f"unknown --preset {request.preset!r}; choose from {', '.join(PRESETS)}")
        preset = PRESETS[request.preset]
        base_model, base_train = dataclasses.asdict(preset.model), dict(preset.train)
    given = {**base_train, **{k: v for k, v in request.train.items() if v is not None}}
    if _may_widen(facts, hardware, request, given):
        base_model["hidden"] = _width(facts, hardware, given, base_model)
    if request.init_model is not None:
        model = finetune_model(request.init_model, request.model)
    else:
        model = _model(base_model, request.model)
    speed = hardware.speed.for_parameters(num_parameters(model, facts.vocab_size)) if hardware.speed else None
    schedule, longest = schedule_choice(
        facts.train_chars,
        facts.val_chars,
        given,
        gpu=gpu,
        speed=speed,
        finetune=request.init_model is not None,
    )
    train_cfg = TrainConfig(**overlay_train(schedule, given))
    chosen = tuple(
        sorted(
            ({k for k, v in base_model.items() if request.model.get(k) is None} if request.preset is None else set())
            | {k for k in schedule if k not in given}
        )
    )
    per_epoch = steps_per_epoch(facts.train_chars, train_cfg.batch_size, train_cfg.seq_len)
    estimate = estimate_seconds(facts, train_cfg, speed) if speed else None
    plan = Plan(model, train_cfg, tier, (), chosen, per_epoch, estimate, speed, longest)
    return dataclasses.replace(plan, lines=_explain(plan, facts, hardware, request))


def _may_widen(facts: CorpusFacts, hardware: Hardware, request: PlanRequest, given: dict[str, Any]) -> bool:
    """A new model of the plan's own shape on a CPU that trains in bf16, for a large corpus, with a measured
    speed, and a run that ends by time (the default schedule, fitted to about TARGET_SECONDS, or --time-budget).
    In fp32 the wider model did not pay even where the passes were there (docs/benchmarks.md)."""
    shaped = any(request.model.get(k) is not None for k in ("model", "layers", "hidden", "embed", "tie_weights"))
    return (
        hardware.device == "cpu"
        and hardware.native_bf16
        and given.get("precision") in (None, "auto", "bf16")
        and request.preset is None
        and request.init_model is None
        and not shaped
        and facts.train_chars >= WIDE_CHARS
        and hardware.speed is not None
        and hardware.speed.parameters is not None
        and not any(k in given for k in STOPPING_RULES if k != "time_budget")
    )


def _width(facts: CorpusFacts, hardware: Hardware, given: dict[str, Any], base: dict[str, Any]) -> int:
    """The hidden units for the passes a run of the `base` model would make in the run's time."""
    assert hardware.speed is not None
    budget = given.get("time_budget")
    seconds = START_SECONDS + budget if budget is not None else TARGET_SECONDS
    speed = hardware.speed.for_parameters(num_parameters(ModelConfig(**base), facts.vocab_size))
    passes = affordable_passes(facts.train_chars, facts.val_chars, given, speed, seconds)
    return width_choice(passes, base["hidden"])


def estimate_seconds(facts: CorpusFacts, cfg: TrainConfig, speed: Speed) -> float:
    """The wall time of a run of `cfg` on `facts` at `speed`, to its stopping rule (early stopping may end it
    sooner): the start, the steps, the validations with their checkpoints, the samples."""
    shape = run_shape(facts.val_chars, cfg, speed, cfg.eval_every)
    per_epoch = steps_per_epoch(facts.train_chars, cfg.batch_size, cfg.seq_len)
    steps = total_steps(cfg, per_epoch)
    if cfg.time_budget is None:
        return shape.seconds(steps or 1)
    budget = shape.budget_seconds(cfg.time_budget)
    return budget if steps is None else min(budget, shape.seconds(steps))  # the first rule to come ends it


def _model(base: dict[str, Any], overrides: dict[str, Any]) -> ModelConfig:
    kw = {**base, **{k: v for k, v in overrides.items() if v is not None}}
    if kw.get("tie_weights") and overrides.get("embed") is None:
        kw["embed"] = kw["hidden"]  # the tie needs them equal; an explicit --embed is checked by ModelConfig
    return ModelConfig(**kw)


def finetune_model(init: ModelConfig, given: dict[str, Any]) -> ModelConfig:
    """The model of a run that starts from `init`'s trained weights: `init` itself, with the options of
    FREE_ON_FINETUNE that were given; any other option given that differs from `init`'s is a ConfigError."""
    for key, value in given.items():
        if value is not None and key not in FREE_ON_FINETUNE and value != getattr(init, key):
            raise ConfigError(
                f"{flag_text(ModelConfig, key, value)} conflicts with the model of --init-from, trained with "
                f"{flag_text(ModelConfig, key, getattr(init, key))}; a fine-tuned run keeps its model"
            )
    return dataclasses.replace(init, **{k: given[k] for k in FREE_ON_FINETUNE if given.get(k) is not None})


def _explain(plan: Plan, facts: CorpusFacts, hardware: Hardware, request: PlanRequest) -> tuple[str, ...]:
    """A few lines: what was chosen and why, naming the options that came from the user or a preset."""
    model, cfg, per_epoch = plan.model, plan.train, plan.steps_per_epoch
    source = f"preset {request.preset}" if request.preset else "plan"
    kind = f"{model.model.upper()} {model.layers}x{model.hidden}" + (" with layer norm" if model.layer_norm else "")
    if request.init_model is not None:
        kind = f"fine-tuning the trained {kind}"
    lines = [
        f"{facts.train_chars:,} training characters, {facts.vocab_size} symbols, {hardware.device}: {plan.tier} -> "
        f"{kind}, dropout {model.dropout:g}, weight decay {cfg.weight_decay:g} ({source})"
    ]
    least = dict(WIDTHS).get(model.hidden)
    if least is not None and "hidden" in plan.chosen:  # chosen by the plan: no preset, no --hidden
        narrow = model_choice(facts.train_chars, gpu=False, dropout=model.dropout)["hidden"]  # what it widened
        lines.append(
            f"{model.hidden} units rather than {narrow}: a {model.layers}x{narrow} model would read the text "
            f"{least:g} times or more in the time; a wider one learns more from fewer passes (--hidden {narrow} "
            f"keeps {narrow})"
        )
    length = run_length(cfg, per_epoch)
    order = f"; a new order of {cfg.reshuffle:,}-character chunks each epoch" if cfg.reshuffle else ""
    lines.append(
        f"batch {cfg.batch_size} x {cfg.seq_len} ({per_epoch:,} steps an epoch), lr {cfg.lr:g} with "
        f"cosine decay, {length}{order}"
    )
    n = cfg.patience
    stop = f"stops after {n} validation{'s' if n != 1 else ''} without a new best" if n else "no early stopping"
    share = eval_share(facts.val_chars, cfg.eval_every, cfg.eval_segment, plan.speed)
    if facts.val_chars < 2:  # --val-frac 0 (a split too short to score is refused before training)
        lines.append(
            f"no validation split (--val-frac 0): a checkpoint every {cfg.eval_every:,} steps, the newest kept; "
            f"no early stopping"
        )
    else:
        lines.append(
            f"validation every {cfg.eval_every:,} steps (~{cfg.eval_every / per_epoch:.2g} epoch, "
            f"{facts.val_chars:,} characters, about {share:.0%} of the time); {stop}; the best checkpoint "
            f"is kept"
        )
    if plan.speed is not None and plan.estimated_seconds is not None:
        lines.append(_timing(plan, hardware, request))
    given = sorted(k for k in request.given() if k in PLANNED or k in SHAPING)
    if given:
        lines.append("given: " + ", ".join("--" + k.replace("_", "-") for k in given))
    if _suggest_starter(facts, request):
        known = math.floor(facts.starter_coverage * 1000) / 10  # 99.97% is not all: never round up to 100
        lines.append(
            f"hint: the bundled starter knows {known:g}% of these characters; fine-tuning it (--init-from {STARTER}) "
            f"ended 0.16-0.27 nats/char lower than a new model on small English corpora (docs/finetune.md)"
        )
    return tuple(lines)


def _suggest_starter(facts: CorpusFacts, request: PlanRequest) -> bool:
    """A new model of the plan's own shape, on a small corpus written mostly in the starter's characters."""
    coverage = facts.starter_coverage
    given_model = any(v is not None for v in request.model.values())
    new_model = request.init_model is None and request.preset is None and not given_model
    return (
        new_model
        and coverage is not None
        and coverage >= STARTER_HINT_COVERAGE
        and facts.train_chars < STARTER_HINT_CHARS
    )


def _timing(plan: Plan, hardware: Hardware, request: PlanRequest) -> str:
    """ "about 3 min 40 s on this CPU (measured 41 ms a step)", and whether the schedule was cut to fit."""
    assert plan.speed is not None and plan.estimated_seconds is not None
    where = "this CPU" if hardware.device == "cpu" else "this GPU"
    step = per_step(plan.speed.step_seconds)
    timed = plan.speed.timed
    if timed is None:
        line = f"about {duration(plan.estimated_seconds)} on {where} (measured {step} a step)"
    else:  # measured on the draft's smaller model; a step's time grows with the parameters
        line = (
            f"about {duration(plan.estimated_seconds)} on {where} (about {step} a step: measured "
            f"{per_step(timed.step_seconds)} for {timed.parameters:,} parameters)"
        )
    target = duration(TARGET_SECONDS)
    if plan.capped:
        return (
            f"{line}; capped at {plan.train.max_iters:,} steps to fit about {target}; --max-iters or --epochs to choose"
        )
    rule = next((k for k in STOPPING_RULES if request.train.get(k) is not None), None)
    if hardware.device == "cuda":
        return line
    if rule is not None:
        return f"{line}; not capped to {target}: --{rule.replace('_', '-')} given"
    if request.preset is not None:
        return f"{line}; not capped to {target}: preset {request.preset}'s schedule"
    return line
