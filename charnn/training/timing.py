"""How long a planned run takes: its wall time estimated from this device's measured speed, the longest default
CPU schedule that fits about five minutes, the first validation within about a minute, and the words the plan
prints for times. Pure arithmetic, no torch: the measurement itself is `charnn.training.speed`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from charnn.config import TrainConfig
from charnn.training.schedule import DEMO_SAMPLE_STEPS

TARGET_SECONDS = 300.0  # a default CPU schedule ends within about five minutes, validations included
FIRST_EVAL_SECONDS = 60.0  # the first validation loss within about a minute
# Before the first step: Python and torch start, the corpus is read, the speed measured (about 3 s on a CPU).
START_SECONDS = 5.0
# The loop's own work around each step (the batch, the learning rate, log lines, the progress display): the
# default plan's runs stepped 15-17% slower than the bare steps timed before them, with bf16 and in fp32.
LOOP_OVERHEAD = 1.15
CHECKPOINT_SECONDS = 0.15  # writing a checkpoint of a 2x256 LSTM with its optimizer state, fsync included
SAMPLE_SECONDS = 0.15  # one training sample of 200 characters from a 2x256 LSTM on a CPU


@dataclass(frozen=True)
class Speed:
    """This device's speed on a planned run: seconds per optimisation step of its model and batch shape, and per
    validation of its split (None: estimated from the step's time)."""

    step_seconds: float
    eval_seconds: float | None = None
    # The parameters of the model timed (None: not known, as for a step time given instead of measured). A CPU's
    # step is bound by the multiply-adds of its matrices, one per parameter per character, so a model of another
    # size is estimated in proportion (`for_parameters`): 2x320 and 2x384 LSTMs stepped 1.51x and 2.03x as long
    # as a 2x256 one, for 1.51x and 2.12x its parameters (EPYC-BF16, docs/benchmarks.md).
    parameters: int | None = None
    timed: Speed | None = None  # the speed measured on another model that this one is estimated from

    def for_parameters(self, parameters: int) -> Speed:
        """This speed estimated for a model of `parameters` parameters (this one where the timed model's size is
        not known)."""
        timed = self.timed or self
        if timed.parameters is None or parameters == timed.parameters:
            return timed
        ratio = parameters / timed.parameters
        evals = timed.eval_seconds * ratio if timed.eval_seconds is not None else None
        return Speed(timed.step_seconds * ratio, evals, parameters, timed)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.step_seconds) and self.step_seconds > 0):
            raise ValueError(f"step_seconds must be a positive number of seconds, not {self.step_seconds}")
        if self.eval_seconds is not None and not (math.isfinite(self.eval_seconds) and self.eval_seconds >= 0):
            raise ValueError(f"eval_seconds must be a number of seconds or None, not {self.eval_seconds}")


def eval_cost_steps(val_chars: int, segment: int, *, rows: int = 64) -> float:
    """Rough cost of one validation and checkpoint, in training steps of a 2x256 LSTM at 16 x 64 on a CPU
    (measured: 2,000 characters of validation cost 1.5 steps, 20,000 cost 8 and 111,540 cost 43; a checkpoint
    half a step). Scoring runs up to `rows` segments side by side, each batch a pass of the segment length whose
    cost grows with the rows in it."""
    segments = max(1, math.ceil(val_chars / segment))
    length = min(val_chars, segment) / 1000
    cost = 0.5
    for first in range(0, segments, rows):
        cost += length * (0.4 + 0.36 * min(rows, segments - first))
    return cost


def eval_share(val_chars: int, eval_every: int, segment: int, speed: Speed | None = None) -> float:
    """Rough share of a run spent validating and checkpointing (the summary gives the measured share)."""
    if speed is None:
        cost = eval_cost_steps(val_chars, segment)
        return cost / (cost + eval_every)
    cost = validation_seconds(speed, val_chars, segment)
    return cost / (cost + eval_every * speed.step_seconds * LOOP_OVERHEAD)


def validation_seconds(speed: Speed, val_chars: int, segment: int) -> float:
    """Seconds of one validation with its checkpoint (none without a validation split: the checkpoint alone)."""
    if val_chars < 2:
        return CHECKPOINT_SECONDS
    if speed.eval_seconds is not None:
        return speed.eval_seconds + CHECKPOINT_SECONDS
    return speed.step_seconds * eval_cost_steps(val_chars, segment)


def samples_drawn(steps: int, sample_every: int | None, sample_length: int) -> int:
    """Training samples a run of `steps` steps draws (charnn.training.schedule.is_sample_step), the last one
    included."""
    if not sample_length:
        return 0
    if sample_every is not None:
        return steps // sample_every + 1
    return sum(s <= steps for s in DEMO_SAMPLE_STEPS) + steps // 1000 + 1


@dataclass(frozen=True)
class RunShape:
    """What a run's wall time depends on besides its steps: the speed and what happens along the way."""

    speed: Speed
    val_chars: int
    eval_segment: int
    eval_every: int
    sample_every: int | None = None
    sample_length: int = 200

    def seconds(self, steps: int) -> float:
        """The wall time of `steps` steps: start, steps, validations (every eval_every, and the last), samples."""
        evals = math.ceil(steps / min(self.eval_every, max(steps, 1)))
        return (
            START_SECONDS
            + steps * self.speed.step_seconds * LOOP_OVERHEAD
            + evals * validation_seconds(self.speed, self.val_chars, self.eval_segment)
            + samples_drawn(steps, self.sample_every, self.sample_length) * SAMPLE_SECONDS
        )

    def budget_seconds(self, time_budget: float) -> float:
        """The wall time of a run that steps for `time_budget` seconds (validations included), then validates."""
        return START_SECONDS + time_budget + validation_seconds(self.speed, self.val_chars, self.eval_segment)

    def fit(self, steps: int, seconds: float = TARGET_SECONDS) -> int:
        """The most steps, at most `steps`, that end within `seconds` (at least 1)."""
        low, high = 1, steps
        while low < high:
            middle = (low + high + 1) // 2
            if self.seconds(middle) <= seconds:
                low = middle
            else:
                high = middle - 1
        return low


def first_eval_steps(speed: Speed) -> int:
    """The most steps between validations that keep the first one within about FIRST_EVAL_SECONDS."""
    return max(1, math.floor(FIRST_EVAL_SECONDS / (speed.step_seconds * LOOP_OVERHEAD)))


def duration(seconds: float) -> str:
    """ "45 s", "3 min 40 s" (to 10 s), "1 h 05 min"."""
    if seconds < 59.5:
        return f"{max(1, round(seconds))} s"
    if seconds < 3595:
        minutes, rest = divmod(round(seconds / 10) * 10, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"


def per_step(seconds: float) -> str:
    """ "41 ms", "4.1 ms", "1.2 s"."""
    if seconds >= 0.995:
        return f"{seconds:.2g} s"
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.00995 else f"{seconds * 1000:.2g} ms"


def run_length(cfg: TrainConfig, per_epoch: int) -> str:
    """How long the run trains, by the rules it has: "up to 120 steps (2.3 epochs)", "for 3 epochs", "for 60 s",
    or, with several, "until 120 steps (2.3 epochs), 3 epochs or 60 s, whichever comes first"."""
    rules = []
    if cfg.max_iters is not None or (cfg.epochs is None and cfg.time_budget is None):
        steps = cfg.max_iters or per_epoch  # no rule: one epoch
        epochs = steps / per_epoch
        rules.append(
            f"{steps:,} steps ({epochs:.1f} epochs)" if epochs >= 0.1 else f"{steps:,} steps ({epochs:.2g} epochs)"
        )
    if cfg.epochs is not None:
        rules.append(f"{cfg.epochs:g} epochs")
    if cfg.time_budget is not None:
        rules.append(f"{cfg.time_budget:g} s")
    if len(rules) == 1:
        return ("up to " if cfg.epochs is None and cfg.time_budget is None else "for ") + rules[0]
    return f"until {', '.join(rules[:-1])} or {rules[-1]}, whichever comes first"
