"""How fast this device trains a planned run: a few real optimisation steps of the planned model at its batch
shape and precision, on random ids and a throwaway copy of the model, timed after a warm-up step, and the cost of
one validation of the run's split (its passes timed the same way). The plan reads both to estimate the run's
wall time and to fit a CPU schedule to about five minutes (`charnn.training.plan`).

Not the plan's arithmetic. The random state is put back: a run with an explicit schedule trains as it would
without the measurement.
"""

from __future__ import annotations

import math
import os
import statistics
import time

import numpy as np
import torch

from charnn.config import ModelConfig, TrainConfig
from charnn.distributed import DistInfo, broadcast_object
from charnn.errors import ConfigError
from charnn.evaluate import evaluate_ids
from charnn.model import CharRNN
from charnn.shapes import num_parameters
from charnn.training.plan import CorpusFacts
from charnn.training.step import StepStats, make_optimizer, make_scaler, optimisation_step
from charnn.training.timing import Speed

# Seconds an optimisation step takes, given instead of measured (a plan that is the same on every machine, and
# fast tests); 0 or "off": not measured, and the plan neither estimates the run's time nor fits a schedule to it.
STEP_SECONDS_ENV = "CHARNN_STEP_SECONDS"
MEASURE_SECONDS = 2.0  # the whole measurement, at least a warm-up step and a timed one
EVAL_SECONDS = 0.4  # of which the validation's passes take about this much
MOST_STEPS = 40  # timed steps at most
EVAL_ROWS, EVAL_CHUNK = 64, 256  # charnn.evaluate.evaluate_ids's defaults: the rows and length of one pass


def step_seconds_from_env() -> float | None:
    """CHARNN_STEP_SECONDS: seconds per step to use instead of measuring (0 or "off": not measured); None: unset."""
    text = os.environ.get(STEP_SECONDS_ENV, "").strip()
    if not text:
        return None
    return _checked(0.0 if text.lower() == "off" else _number(text), f"{STEP_SECONDS_ENV}={text!r}")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _checked(seconds: float, what: str) -> float:
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ConfigError(f"{what}: give seconds per step (a positive number), or 0 for none")
    return seconds


def run_speed(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    facts: CorpusFacts,
    device: torch.device,
    dist: DistInfo | None = None,
    *,
    step_seconds: float | None = None,
) -> Speed | None:
    """The speed the plan reads: `step_seconds` when given, else CHARNN_STEP_SECONDS's, else measured (0 or
    "off", or a corpus too short for one batch, which the run then reports: None). Under torchrun each process
    measures its share of the streams and all take rank 0's figures, so that they make the same plan."""
    if step_seconds is None:
        step_seconds = step_seconds_from_env()
    if step_seconds is not None:
        return Speed(step_seconds) if _checked(step_seconds, "step_seconds") > 0 else None
    if facts.train_chars < cfg.batch_size * (cfg.seq_len + 1):
        return None
    world = dist.world if dist is not None else 1
    rows = max(1, cfg.batch_size // world)
    speed = measure_speed(model_cfg, cfg, facts.vocab_size, device, val_chars=facts.val_chars, rows=rows)
    return broadcast_object(dist, speed) if dist is not None else speed


def measure_speed(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    vocab_size: int,
    device: torch.device,
    *,
    val_chars: int = 0,
    rows: int | None = None,
    seconds: float = MEASURE_SECONDS,
) -> Speed:
    """Time `cfg`'s optimisation step of `model_cfg` (`rows` streams, default cfg.batch_size, x cfg.seq_len)
    and one validation of `val_chars` characters, within about `seconds` (at least a warm-up step and a timed
    one; the validation is left to the plan's rough rule when no time is left). The random state of torch
    (CPU and `device`) is as it was before."""
    deadline = time.perf_counter() + seconds
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = CharRNN(model_cfg, vocab_size).to(device)
        step = _step_seconds(model, cfg, device, rows or cfg.batch_size, until=deadline - EVAL_SECONDS)
        eval_seconds = None
        if val_chars and time.perf_counter() < deadline:
            eval_seconds = validation_seconds(model, val_chars, cfg.eval_segment, cfg.precision)
    return Speed(step, eval_seconds, num_parameters(model_cfg, vocab_size))


def _step_seconds(model: CharRNN, cfg: TrainConfig, device: torch.device, rows: int, *, until: float) -> float:
    """Seconds per step: a warm-up step (allocations, kernels chosen, the optimizer's state), then steps timed
    one by one until `until` (at least one, at most MOST_STEPS); their median, so that a step the machine's other
    work or the first steps' late allocations slowed does not set the estimate."""
    optimizer, scaler, stats = make_optimizer(model, cfg, device), make_scaler(cfg, device), StepStats.on(device)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(model.vocab_size, (rows, cfg.seq_len + 1), generator=generator).to(device)
    batch, hidden = (ids[:, :-1], ids[:, 1:]), None
    model.train()
    times: list[float] = []
    started = None
    while len(times) < 1 or (len(times) < MOST_STEPS and time.perf_counter() < until):
        step = len(times) + (started is not None)  # 0 for the warm-up, then 1, 2, ...
        _, hidden = optimisation_step(
            model, optimizer, batch, hidden, stats, cfg=cfg, device=device, step=step, scaler=scaler
        )
        _sync(device)
        now = time.perf_counter()
        if started is not None:  # the first step is the warm-up
            times.append(now - started)
        started = now
    return statistics.median(times)


def validation_seconds(model: CharRNN, val_chars: int, segment: int, precision: str = "auto") -> float:
    """Seconds to score `val_chars` characters as the loop's validation does (`evaluate_ids`: segments of
    `segment` characters, up to EVAL_ROWS of them side by side, EVAL_CHUNK characters a pass): one pass of each
    group's rows timed (after a warm-up pass), times the passes of a segment."""
    n = val_chars - 1  # predictions
    if n < 1:
        return 0.0
    segment = min(segment, n)
    segments = math.ceil(n / segment)
    rows = min(EVAL_ROWS, segments)
    full, rest = divmod(segments, rows)
    length = min(EVAL_CHUNK, segment)
    _pass_seconds(model, rows, length, precision)  # warm-up
    seconds = full * _pass_seconds(model, rows, length, precision)
    if rest:
        seconds += _pass_seconds(model, rest, length, precision)
    return math.ceil(segment / length) * seconds


def _pass_seconds(model: CharRNN, rows: int, length: int, precision: str) -> float:
    """One evaluation pass of (rows, length) random ids."""
    ids = np.random.default_rng(0).integers(0, model.vocab_size, rows * length + 1).astype(np.int64)
    started = time.perf_counter()
    evaluate_ids(model, ids, segment=length, batch_size=rows, chunk=length, precision=precision)
    _sync(model.head.weight.device)
    return time.perf_counter() - started


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
