"""What a training loop works with: the run it was given and that stays fixed (`Run`), what it changes as it goes
(`LoopState`), and the events it reports to the caller (`Progress`, sent by `emit`). The steps themselves are
`charnn.training.loop`'s.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from charnn.config import TrainConfig
from charnn.data import Corpus
from charnn.distributed import DistInfo
from charnn.model import CharRNN, Hidden
from charnn.store.files import LineLog
from charnn.training.average import WeightAverage
from charnn.training.batches import StreamBatcher
from charnn.training.finetune import Start
from charnn.training.plan import Plan
from charnn.training.step import StepStats


@dataclass(frozen=True)
class Progress:
    """One event of a training run, for the caller to display or record."""

    kind: str  # plan | start | log | eval | sample | checkpoint | warning | stop | end
    step: int
    total_steps: int | None
    elapsed: float
    time_budget: float | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    chars_per_s: float | None = None
    text: str | None = None  # the sample, a path, or a message
    novelty: str | None = None  # a sample's novelty line (charnn.novelty), or why it is unavailable


@dataclass(frozen=True)
class Run:
    """What a run is made of, fixed once the loop starts."""

    cfg: TrainConfig
    device: torch.device
    dist: DistInfo
    data: Corpus
    train_chars: int
    val_ids: np.ndarray  # the validation split (empty without one)
    batcher: StreamBatcher
    total_steps: int | None  # None: only the time budget ends the run
    run_dir: Path
    cache_dir: str | os.PathLike | None
    model: CharRNN
    net: torch.nn.Module  # the model, wrapped for DDP under torchrun
    optimizer: torch.optim.AdamW
    metrics: LineLog  # metrics.jsonl (discarded on ranks other than 0); a failed write raises CheckpointWriteError
    samples: LineLog  # samples.jsonl (likewise)
    report: Callable[[Progress], None]  # does nothing on ranks other than 0
    should_stop: Callable[[], int | None]
    sync_every: int  # steps between reads of device values on the host
    plan: Plan | None = None  # the training plan, when it chose the configs
    start: Start | None = None  # the trained model the run started from (fine-tuning)
    scaler: torch.amp.GradScaler | None = None  # fp16's loss scaler (CUDA cards without bf16)


@dataclass
class LoopState:
    """What the loop changes as it runs. A checkpoint's training state keeps the step, the clock, the best
    validation loss, the evaluations since it, the streams' hidden state, (with --average) the weights as
    trained and (with --calibrate) the logit scales; a resume starts from those."""

    step: int = 0
    elapsed_before: float = 0.0  # seconds trained before this process started (a resumed run)
    best_val: float = math.inf
    evals_since_best: int = 0  # for --patience
    hidden: Hidden | None = None  # the streams' state, carried from one batch to the next
    last_val: float | None = None
    latest: Path | None = None  # the newest checkpoint
    saved_step: int | None = None  # the step of the last checkpoint written
    stopped_early: bool = False
    stop_reason: str = ""
    best_step: int | None = None  # the step of best_val
    curve: list[tuple[float, float]] = field(default_factory=list)  # (train, val) loss at each evaluation
    last_train: float | None = None  # the newest logged training loss
    warned: bool = False  # the overfitting warning was given since the last new best
    eval_seconds: float = 0.0  # spent validating and writing checkpoints in this process
    validations: int = 0  # validations with their checkpoints in this process
    first_step: int = 0  # the step this process started from (a resumed run's, else 0)
    t_start: float = 0.0  # time.perf_counter() when elapsed() was 0
    average: WeightAverage | None = None  # --average: the weights' moving average, set as the loop starts
    logit_scale: float = 1.0  # --calibrate: the scale fitted at the last validation (charnn.calibration) ...
    scale_centre: float = 1.0  # ... and at the last one on the --eval-every schedule, around which the next fits
    novelty_index: Any = None  # the corpus's novelty index (charnn.novelty.run.IndexOnce), from the first sample
    stats: StepStats = field(init=False)  # set as the loop starts: the device-side sums of the log window

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start


def emit(run: Run, s: LoopState, kind: str, **fields: Any) -> None:
    run.report(Progress(kind, s.step, run.total_steps, s.elapsed(), run.cfg.time_budget, **fields))
