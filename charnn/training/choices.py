"""The plan's rules: corpus tiers, model size, batch shape, schedule length, validation cadence and patience,
chosen from numbers (training and validation characters, the device, its measured speed). Pure functions; the
plan (`charnn.training.plan`) lays a preset's and the user's options over them and explains the result. The
numbers come from the corpus matrix measured in docs/benchmarks.md ("Fitting the corpus").
"""

from __future__ import annotations

import math
from typing import Any

from charnn.config import STOPPING_RULES, TrainConfig
from charnn.fields import default_of
from charnn.training.timing import RunShape, Speed, first_eval_steps

# Corpus tiers by training characters: (upper bound, name, dropout). Dropout is the strongest lever on small
# text: without it a 2x256 LSTM memorises 45,000 characters within a few epochs and validation climbs.
TIERS: tuple[tuple[float, str, float], ...] = (
    (100_000, "small corpus", 0.5),
    (400_000, "medium corpus", 0.3),
    (2_000_000, "large corpus", 0.0),
    (math.inf, "very large corpus", 0.0),
)
# Each epoch after the first reads the text in a new order of chunks of this many characters (--reshuffle).
# Against the same order every epoch, 4,096-character chunks scored better on the fit matrix's six corpora of
# 100,000 training characters or more but split the four smaller ones. 1,024 scored better than both on those
# four, better than 4,096 on tiny shakespeare (three seeds at equal steps, and at 240 s in bf16 and fp32), and
# within the matrix's tolerance of 4,096 on its larger corpora (docs/benchmarks.md). Not measured on a GPU; the
# GPU plan does the same.
RESHUFFLE = 1024
CPU_BATCH = (16, 64)  # many small updates beat few large ones at a fixed CPU budget (docs/benchmarks.md)
# A GPU's recurrence is latency-bound (one small matmul per character per layer): 128 streams cost little more
# per step than 64, and a step carries twice the text. Not measured yet (docs/gpu.md): benchmarks/gpu_check.py.
GPU_BATCH = (128, 128)
# The peak learning rate (AdamW, after the warmup, before the cosine decay). On a CPU 4e-3 beat 3e-3 on tiny
# shakespeare at equal steps on three seeds and in 18 of the fit matrix's 20 runs, bf16 and fp32, the other two
# within 0.003 (docs/benchmarks.md); a GPU's larger batch keeps 2e-3 (not measured yet).
CPU_LR, GPU_LR = 4e-3, 2e-3
GPU_DROPOUT = 0.2  # at least this on a GPU below 2M characters: three minutes buy tens of passes over such text
# A GPU steps in milliseconds and each validation + checkpoint costs tens of steps' time: validate at most every
# this many steps, but at least once every two passes over the corpus (for early stopping on small ones).
GPU_MIN_EVAL_EVERY = 200
# About 5 minutes for a 2x256 LSTM at 16 x 64 on a 2-core CPU with native bf16; a slower CPU's measured speed
# cuts a default schedule to fit about TARGET_SECONDS (charnn.training.timing).
CPU_MAX_STEPS = 8000
GPU_MAX_STEPS = 5000
# On a CPU that trains in bf16, a large corpus that the run would read many times over learns more from a wider
# model read fewer times: at 240 s on tiny shakespeare (EPYC-BF16) 2x256 made 7.3 passes and reached 1.4068, 2x320
# 4.8 passes and 1.4029, 2x384 3.6 passes and 1.3965. In fp32 on the same CPU 2x384 lost to 2x256 at 240 s (1.4192
# against 1.4099) and at the default five minutes (1.4138 against 1.4064), so the plan widens only in bf16
# (docs/benchmarks.md). (hidden units, the least passes the plan estimates for the 2x256 run; its estimate counts
# the loop's overhead and the validations and is below what a bf16 run makes: 5.5-6.3 for those 7.3.)
WIDTHS = ((384, 5.0),)
WIDE_CHARS = 400_000  # from the large corpus tier: smaller ones take dropout, and were not measured wider
MAX_EPOCHS = 40  # small corpora: the schedule decays over this many passes; early stopping usually ends sooner
EVALS_PER_EPOCH = 2  # validation twice an epoch ...
MIN_EVAL_EVERY = 24  # ... but not more often than this (or once an epoch): each scores the split and saves
MAX_EVAL_EVERY = 1000  # the first validation within about a minute (and within FIRST_EVAL_SECONDS, measured)
PATIENCE_EPOCHS = 4  # stop after this many epochs without a new best validation loss ...
MIN_PATIENCE, MAX_PATIENCE = 4, 8  # ... counted in validations, within these bounds
# Fine-tuning starts from trained weights (PlanRequest.init_model): a quarter of the learning rate (1e-3 on a
# CPU, as measured in docs/finetune.md), so the first steps on the new text do not wreck what the weights know,
# a short warmup (AdamW's moments start afresh), fewer passes and an earlier stop, since a trained model fits a
# small corpus, and overfits it, sooner.
FINETUNE_LR_FACTOR = 1 / 4
FINETUNE_WARMUP = 10
FINETUNE_EPOCHS = 10
FINETUNE_PATIENCE_EPOCHS = 2


def tier_of(train_chars: int) -> tuple[str, float]:
    """(tier name, dropout) for a training split of `train_chars` characters."""
    return next((name, dropout) for bound, name, dropout in TIERS if train_chars < bound)


def batch_shape(train_chars: int, batch_size: int, seq_len: int) -> tuple[int, int]:
    """The largest shape at most (batch_size, seq_len) that gives at least 4 batches per epoch: halve the
    batch first (keeping the context), then the sequence, never below 1 x 8."""
    while batch_size > 1 and steps_per_epoch(train_chars, batch_size, seq_len) < 4:
        batch_size //= 2
    while seq_len > 8 and steps_per_epoch(train_chars, batch_size, seq_len) < 4:
        seq_len //= 2
    return batch_size, seq_len


def steps_per_epoch(train_chars: int, batch_size: int, seq_len: int) -> int:
    """Optimisation steps in one pass over the training split (StreamBatcher's rows), at least 1."""
    return max(1, (train_chars // batch_size - 1) // seq_len)


def model_choice(train_chars: int, gpu: bool, dropout: float) -> dict[str, Any]:
    """An LSTM with layer norm: 2x256 on the CPU; a GPU affords 512 units, 3 layers from 2M characters, with
    dropout below that (the GPU makes many passes over a small corpus in a few minutes)."""
    hidden, layers = 256, 2
    if gpu and train_chars >= 2_000_000:
        hidden, layers = 512, 3
    elif gpu and train_chars >= 400_000:
        hidden, dropout = 512, max(dropout, GPU_DROPOUT)
    return dict(model="lstm", layers=layers, hidden=hidden, embed=128, dropout=dropout, layer_norm=True)


def width_choice(passes: float, narrow: int) -> int:
    """The hidden units of a CPU model for a large corpus whose run at `narrow` units (model_choice's) would make
    `passes` passes over it in its time: the widest of WIDTHS whose least passes it reaches, else `narrow` (a
    step's time grows with the parameters, about 1.5x at 320 units and 2x at 384, and the wider run makes that
    many times fewer passes)."""
    return next((hidden for hidden, least in WIDTHS if passes >= least), narrow)


def affordable_passes(train_chars: int, val_chars: int, given: dict[str, Any], speed: Speed, seconds: float) -> float:
    """The passes over the training split that a run of the plan's schedule makes within `seconds` of wall time
    (its start and validations included) at `speed`, however long the default schedule would be."""
    schedule, _ = schedule_choice(train_chars, val_chars, given, gpu=False, speed=speed)
    per_epoch = steps_per_epoch(train_chars, schedule["batch_size"], schedule["seq_len"])
    shape = run_shape(val_chars, {**schedule, **given}, speed, given.get("eval_every", schedule["eval_every"]))
    return shape.fit(MAX_EPOCHS * per_epoch, seconds) / per_epoch


def run_shape(val_chars: int, train: TrainConfig | dict[str, Any], speed: Speed, eval_every: int) -> RunShape:
    """The timing of a run of `train` (a config, or the options given so far) at `speed`."""

    def value(name: str) -> Any:
        if isinstance(train, TrainConfig):
            return getattr(train, name)
        return train.get(name, default_of(TrainConfig, name))

    return RunShape(speed, val_chars, value("eval_segment"), eval_every, value("sample_every"), value("sample_length"))


def schedule_choice(
    train_chars: int, val_chars: int, given: dict[str, Any], *, gpu: bool, speed: Speed | None, finetune: bool = False
) -> tuple[dict[str, Any], int | None]:
    """The training options the plan chooses: batch shape, learning rate, length, cadence, patience, the text's
    order; and, where the length is fitted to about TARGET_SECONDS at the measured speed (a CPU's default
    schedule), the length before the fit (None where it is not: a GPU, a stopping rule given, no speed)."""
    batch, seq = GPU_BATCH if gpu else CPU_BATCH
    batch, seq = batch_shape(train_chars, given.get("batch_size", batch), given.get("seq_len", seq))
    per_epoch = steps_per_epoch(train_chars, batch, seq)
    max_steps = GPU_MAX_STEPS if gpu else CPU_MAX_STEPS
    steps = min(max_steps, (FINETUNE_EPOCHS if finetune else MAX_EPOCHS) * per_epoch)
    least = min(GPU_MIN_EVAL_EVERY, max(2 * per_epoch, MIN_EVAL_EVERY)) if gpu else MIN_EVAL_EVERY
    most = steps if gpu else per_epoch  # on a CPU at least once an epoch; a GPU's epochs of a few steps are too short
    eval_every = min(max(per_epoch // EVALS_PER_EPOCH, least), most, MAX_EVAL_EVERY, steps)
    longest = None
    if speed is not None:
        eval_every = min(eval_every, first_eval_steps(speed))
        if not gpu and not any(k in given for k in STOPPING_RULES):
            fit = run_shape(val_chars, given, speed, given.get("eval_every", eval_every)).fit(steps)
            longest, steps, eval_every = steps, fit, min(eval_every, fit)
    evals_per_epoch = per_epoch / eval_every
    epochs = FINETUNE_PATIENCE_EPOCHS if finetune else PATIENCE_EPOCHS
    patience = min(max(round(epochs * evals_per_epoch), MIN_PATIENCE), MAX_PATIENCE)
    lr = (GPU_LR if gpu else CPU_LR) * (FINETUNE_LR_FACTOR if finetune else 1.0)
    warmup = min(FINETUNE_WARMUP if finetune else 50, steps // 10)
    return dict(
        batch_size=batch,
        seq_len=seq,
        lr=lr,
        warmup_iters=warmup,
        weight_decay=0.1,
        max_iters=steps,
        eval_every=eval_every,
        patience=patience if val_chars >= 2 else None,
        reshuffle=RESHUFFLE,
    ), longest
