"""Training: truncated BPTT over parallel streams with AdamW, warmup + cosine decay, gradient clipping,
periodic whole-split validation, samples, checkpoints and exact resume.

`train()` reads top to bottom: prepare the run or resume it (`charnn.training.setup`), then step until a stopping
rule, evaluating, checkpointing and sampling on schedule; its steps are in `charnn.training.loop`. The library
never prints: it reports through `on_progress(Progress)` and stops when `should_stop()` returns a signal number.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charnn.config import DataConfig, ModelConfig, TrainConfig
from charnn.data import Corpus
from charnn.shapes import num_parameters
from charnn.training.average import WeightAverage
from charnn.training.loop import (
    LoopState,
    Progress,
    Run,
    draw_sample,
    emit,
    end_reason,
    evaluate_and_checkpoint,
    log_window,
    patience_spent,
    progress_made,
    reached_the_end,
    stop_early,
    stop_if_asked,
    train_step,
)
from charnn.training.plan import PlanRequest
from charnn.training.refit import refit
from charnn.training.resume import resume_configs
from charnn.training.schedule import is_sample_step, learning_rate
from charnn.training.setup import Configs, plan, prepare
from charnn.training.step import StepStats
from charnn.training.threads import ThreadGovernor


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    steps: int
    elapsed: float
    final_val_loss: float | None
    best_val_loss: float | None
    latest: Path | None
    stopped_early: bool = False  # --patience ended the run before its stopping rule
    stop_reason: str = ""  # what ended the run: the step limit, the epochs, the time budget, no improvement
    best_step: int | None = None  # the step of the best validation loss (the checkpoint sample/eval use)
    eval_share: float = 0.0  # the share of this process's time spent validating and writing checkpoints


def train(
    corpus: str | os.PathLike | Corpus,
    *,
    model_cfg: ModelConfig | None = None,
    train_cfg: TrainConfig | None = None,
    data_cfg: DataConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], int | None] | None = None,
    cache_dir: str | os.PathLike | None = None,
    on_encode: Callable[[Any], None] | None = None,
    request: PlanRequest | None = None,
    init_from: str | os.PathLike | None = None,
) -> TrainResult:
    """Train a model on `corpus` and write a run directory; see the module docstring for the protocol.

    Without `model_cfg` and `train_cfg` the training plan chooses them from the corpus and the hardware
    (`charnn.training.plan`), taking the preset and the explicit options of `request`; the plan is reported as
    the first Progress event ("plan") and recorded in config.json. With `cache_dir` the corpus is encoded once
    into a memory-mapped cache there (`on_encode` gets its progress). Under torchrun every rank trains its
    share of the streams (DDP). With `init_from` (a run directory or a model file) the run starts from that
    run's best weights, its vocabulary extended by the corpus's new symbols (`charnn.training.finetune`), and the plan
    chooses a fine-tuning schedule; config.json records where it started.
    """
    data_cfg = data_cfg or (corpus.data if isinstance(corpus, Corpus) else DataConfig())
    with ExitStack() as held:  # the run's lock, for as long as this training writes it
        run, s, threads = prepare(
            corpus,
            Configs(model_cfg, train_cfg, request or PlanRequest()),
            data_cfg,
            held,
            out_dir=out_dir,
            resume=resume,
            cache_dir=cache_dir,
            on_encode=on_encode,
            on_progress=on_progress,
            should_stop=should_stop,
            init_from=init_from,
        )
        run = _loop(run, s, threads)
        emit(run, s, "end", val_loss=s.last_val, text=str(s.latest))
    return _result(run, s)


def _loop(run: Run, s: LoopState, threads: ThreadGovernor) -> Run:
    """Step until a stopping rule, evaluating, checkpointing and sampling on schedule; the run as it ended (its
    length may have been fitted again to its own speed: `charnn.training.refit`)."""
    cfg = run.cfg
    try:
        s.t_start = time.perf_counter() - s.elapsed_before
        s.first_step = s.step
        threads.tick()  # the first look at the other programs' load, so the plan's lines can name the count
        _announce(run, s, threads.describe())
        run.model.train()
        s.stats = StepStats.on(run.device)
        if cfg.average and s.average is None:  # a new run (a resumed one has its checkpoint's)
            s.average = WeightAverage(run.model, cfg.average)
        while True:
            if threads.tick():  # other programs took or freed cores: a step's threads must not wait for one
                emit(run, s, "plan", text=threads.describe())
            progress = progress_made(run, s)
            if reached_the_end(run, s, progress):
                s.stop_reason = end_reason(run, s)
                break
            stop_if_asked(run, s)  # a signal: save a checkpoint, raise Interrupted
            lr = learning_rate(cfg, s.step, progress)
            if not train_step(run, s, lr):
                continue  # a non-finite step skipped on the CPU: nothing to log, evaluate or sample
            if s.step % cfg.log_every == 0:
                log_window(run, s, lr)
            if s.step % cfg.eval_every == 0:
                evaluate_and_checkpoint(run, s)
                if patience_spent(run, s):
                    stop_early(run, s)
                    break
                run = refit(run, s)
                cfg = run.cfg
            if cfg.sample_length and is_sample_step(cfg, s.step) and run.dist.is_main:
                draw_sample(run, s)
        if s.saved_step != s.step:  # the last step is not evaluated and saved yet
            evaluate_and_checkpoint(run, s)
            if cfg.sample_length and run.dist.is_main:
                draw_sample(run, s)
    finally:
        threads.restore()
        run.metrics.close()
        run.samples.close()
    return run


def _announce(run: Run, s: LoopState, threads: str) -> None:
    """The first events: the plan (and where a fine-tuned run starts from, and its CPU threads), then the run's
    shape."""
    if run.plan is not None:
        emit(run, s, "plan", text="\n".join(run.plan.lines))
    if run.start is not None:
        emit(run, s, "plan", text=run.start.describe(run.data))
    if threads:
        emit(run, s, "plan", text=threads)
    vocab = len(run.data.vocab)
    emit(
        run,
        s,
        "start",
        text=f"{run.run_dir} | {num_parameters(run.model.cfg, vocab):,} parameters | "
        f"vocabulary {vocab} | train {run.train_chars:,} chars | device {run.device}",
    )


def _result(run: Run, s: LoopState) -> TrainResult:
    best = s.best_val if math.isfinite(s.best_val) else None
    ran = s.elapsed() - s.elapsed_before
    return TrainResult(
        run.run_dir,
        s.step,
        s.elapsed(),
        s.last_val,
        best,
        s.latest,
        s.stopped_early,
        s.stop_reason,
        s.best_step,
        s.eval_seconds / ran if ran > 0 else 0.0,
    )


__all__ = ["Progress", "TrainResult", "train", "plan", "resume_configs", "learning_rate"]
