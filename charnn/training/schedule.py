"""When things happen in a training run: the learning rate at each step, how many steps the run takes, the
steps that draw a sample, and where a new run is written. Plain functions of the config; no torch.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from charnn.config import TrainConfig, final_lr

DEMO_SAMPLE_STEPS = (100, 300, 700)  # then every 1000: the char-rnn demo's "iteration 100, 300, 700, 2000"


def learning_rate(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over `warmup_iters` steps, then cosine decay to min_lr as `progress` goes 0 -> 1."""
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    low = final_lr(cfg)
    progress = min(max(progress, 0.0), 1.0)
    return low + 0.5 * (cfg.lr - low) * (1 + math.cos(math.pi * progress))


def total_steps(cfg: TrainConfig, batches_per_epoch: int) -> int | None:
    """The run's length in steps: --max-iters or --epochs, the first to come when both are given; None when only
    --time-budget ends it (with a step limit as well, the first of the two ends the run)."""
    rule = steps_rule(cfg, batches_per_epoch)
    if rule == "max_iters":
        return cfg.max_iters
    if rule == "epochs":
        return epoch_steps(cfg.epochs, batches_per_epoch)
    return None if cfg.time_budget is not None else batches_per_epoch  # no rule given: one epoch


def epoch_steps(epochs: float, batches_per_epoch: int) -> int:
    return max(1, math.ceil(epochs * batches_per_epoch))


def steps_rule(cfg: TrainConfig, batches_per_epoch: int) -> str | None:
    """The option that sets the run's length in steps: "max_iters", "epochs" (the sooner when both are given),
    or None (only --time-budget, or no rule at all: one epoch)."""
    if cfg.max_iters is not None and (
        cfg.epochs is None or cfg.max_iters <= epoch_steps(cfg.epochs, batches_per_epoch)
    ):
        return "max_iters"
    return "epochs" if cfg.epochs is not None else None


def is_sample_step(cfg: TrainConfig, step: int) -> bool:
    if cfg.sample_every is not None:
        return step % cfg.sample_every == 0
    return step in DEMO_SAMPLE_STEPS or (step >= 1000 and step % 1000 == 0)


def default_run_dir(corpus: str | os.PathLike, root: str | os.PathLike = "checkpoints") -> Path:
    """checkpoints/<corpus stem>-<date>-<time>, with -2, -3, ... when that exists already."""
    stem = Path(corpus).stem or "run"
    base = Path(root) / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path
