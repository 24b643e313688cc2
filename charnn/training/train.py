"""Training: truncated BPTT over parallel streams with AdamW, warmup + cosine decay, gradient clipping,
periodic whole-split validation, samples, checkpoints and exact resume.

`train()` reads top to bottom: prepare the run (or resume it), then step until a stopping rule, evaluating,
checkpointing and sampling on schedule; its steps are in `charnn.training.loop`. The library never prints: it
reports through `on_progress(Progress)` and stops when `should_stop()` returns a signal number.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from charnn.config import DataConfig, ModelConfig, TrainConfig
from charnn.data import Corpus, encode_file
from charnn.distributed import (
    DistInfo,
    broadcast_object,
    check_same_corpus,
    local_rank_zero_first,
    setup_distributed,
    wrap_ddp,
)
from charnn.errors import ConfigError, DataError
from charnn.model import CharRNN, num_parameters
from charnn.runtime import (
    check_ram,
    cuda_fast_dtypes,
    native_bf16_cpu,
    pick_device,
    seed_everything,
    set_deterministic,
)
from charnn.store.rundir import open_logs, write_run_files
from charnn.store.runlock import claim_run, new_run_dir
from charnn.training.batches import StreamBatcher
from charnn.training.finetune import load_start, start_corpus, start_request, start_weights, training_corpus
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
from charnn.training.plan import CorpusFacts, Hardware, Plan, PlanRequest, make_plan
from charnn.training.resume import resume as resume_run
from charnn.training.resume import resume_configs
from charnn.training.schedule import default_run_dir, is_sample_step, learning_rate, total_steps
from charnn.training.step import StepStats, host_sync_every, make_optimizer, make_scaler
from charnn.training.threads import ThreadGovernor


def hardware(device: torch.device) -> Hardware:
    """The facts about `device` the training plan reads."""
    if device.type == "cuda":
        bf16 = cuda_fast_dtypes(device)[0]
    else:
        bf16 = device.type == "cpu" and native_bf16_cpu()
    return Hardware(device.type, cores=torch.get_num_threads(), native_bf16=bf16)


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
        run, s, threads = _prepare(
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
        _loop(run, s, threads)
        emit(run, s, "end", val_loss=s.last_val, text=str(s.latest))
    return _result(run, s)


def _loop(run: Run, s: LoopState, threads: ThreadGovernor) -> None:
    """Step until a stopping rule, evaluating, checkpointing and sampling on schedule."""
    cfg = run.cfg
    try:
        s.t_start = time.perf_counter() - s.elapsed_before
        threads.tick()  # the first look at the other programs' load, so the plan's lines can name the count
        _announce(run, s, threads.describe())
        run.model.train()
        s.stats = StepStats.on(run.device)
        while True:
            if threads.tick():  # other programs took or freed cores: a step's threads must not wait for one
                emit(run, s, "plan", text=threads.describe())
            progress = progress_made(run, s)
            if reached_the_end(run, s, progress):
                s.stop_reason = end_reason(run)
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


@dataclass(frozen=True)
class Configs:
    """What a run trains with: the configs given, and the request the plan answers for those not given."""

    model: ModelConfig | None
    train: TrainConfig | None
    request: PlanRequest

    def early(self) -> TrainConfig:
        """The device and thread options, which are needed before the corpus is read (and planned for)."""
        if self.train is not None:
            return self.train
        return TrainConfig(
            **{
                k: self.request.train[k]
                for k in ("device", "threads", "deterministic")
                if self.request.train.get(k) is not None
            }
        )

    def settle(self, data: Corpus, device: torch.device) -> tuple[ModelConfig, TrainConfig, Plan | None]:
        if self.model is not None and self.train is not None:
            return self.model, self.train, None
        chosen = make_plan(corpus_facts(data), hardware(device), self.request)
        return self.model or chosen.model, self.train or chosen.train, chosen


def corpus_facts(data: Corpus) -> CorpusFacts:
    train_ids, val_ids, _ = data.split()
    return CorpusFacts(len(train_ids), len(val_ids), len(data.vocab))


def plan(
    corpus: str | os.PathLike | Corpus,
    *,
    request: PlanRequest | None = None,
    data_cfg: DataConfig | None = None,
    device: str | None = None,
    init_from: str | os.PathLike | None = None,
) -> Plan:
    """The training plan `train` would follow for `corpus` (a path, encoded in memory; nothing is written).

    >>> p = charnn.plan("poems.txt")               # or request=PlanRequest(model={"dropout": 0.2})
    >>> print("\\n".join(p.lines)); charnn.train("poems.txt", model_cfg=p.model, train_cfg=p.train)
    """
    request = request or PlanRequest()
    data = corpus if isinstance(corpus, Corpus) else encode_file(corpus, data_cfg or DataConfig())
    if init_from is not None:
        start = load_start(init_from)
        data, request = start_corpus(data, start), start_request(start, request)
    name = device or Configs(None, None, request).early().device
    return make_plan(corpus_facts(data), hardware(pick_device(name)), request)


# --- preparing a run -------------------------------------------------------------------------------------


# long: one straight line of set-up steps, each a call; splitting it would only pass its locals around
def _prepare(
    corpus: str | os.PathLike | Corpus,
    configs: Configs,
    data_cfg: DataConfig,
    held: ExitStack,
    *,
    out_dir,
    resume: bool,
    cache_dir,
    on_encode,
    on_progress,
    should_stop,
    init_from,
) -> tuple[Run, LoopState, ThreadGovernor]:
    """Processes, corpus, the plan, model and optimizer, the run directory (locked while `held` lasts), the
    state to start from, and the CPU threads."""
    if resume and init_from is not None:
        raise ConfigError("--init-from starts a new run; --resume continues one from its own weights")
    start = load_start(init_from) if init_from is not None else None  # before seeding: loading builds a model
    early = configs.early()
    set_deterministic(early.deterministic)  # before anything starts cuBLAS (it reads its workspace setting once)
    device = pick_device(early.device)
    dist = setup_distributed(device_type=device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    threads = ThreadGovernor(early.threads, device)  # --threads, else the count the other programs leave room for
    held.callback(threads.restore)  # also when the set-up below fails
    data = corpus if isinstance(corpus, Corpus) else _load_corpus(corpus, data_cfg, cache_dir, on_encode, dist)
    data = training_corpus(data, start=start, resume_dir=Path(out_dir) if resume and out_dir else None)
    configs = replace(configs, request=start_request(start, configs.request, configs.model))
    model_cfg, cfg, chosen = configs.settle(data, device)
    check_same_corpus(dist, sha256=data.sha256, vocab_json=data.vocab.to_json(), chars=len(data.ids), path=data.path)
    train_ids, val_ids, _ = data.split()
    _check_splits(data, val_ids, cfg)
    batcher = StreamBatcher(
        train_ids,
        batch_size=cfg.batch_size,
        seq_len=cfg.seq_len,
        seed=cfg.seed,
        device=device,
        rank=dist.rank,
        world=dist.world,
    )
    steps = total_steps(cfg, batcher.batches_per_epoch)

    run_dir = broadcast_object(dist, Path(out_dir) if out_dir else default_run_dir(data.path))
    seed_everything(cfg.seed)
    # built in RAM whatever the device; training on the CPU adds gradients and Adam's two moments
    on_cpu = device.type == "cpu"
    check_ram(
        num_parameters(model_cfg, len(data.vocab)) * 4 * (4 if on_cpu else 1),
        "this model's weights" + (", gradients and optimizer state" if on_cpu else ""),
        fix="use a smaller model (--hidden, --layers)",
    )
    model = CharRNN(model_cfg, len(data.vocab)).to(device)
    if start is not None:
        start_weights(model, start)
    optimizer = make_optimizer(model, cfg, device)
    scaler = make_scaler(cfg, device)
    if resume:
        claim_run(run_dir, dist, held)
        s = resume_run(run_dir, model, optimizer, cfg=cfg, data=data, dist=dist, device=device, scaler=scaler)
    else:
        s = LoopState()
        new_run_dir(run_dir, dist, held)
    if dist.is_main:
        write_run_files(
            run_dir,
            data,
            model_cfg,
            cfg,
            plan=chosen.as_dict() if chosen else None,
            init_from=start.record() if start else None,
        )
    net = wrap_ddp(model, device, dist)
    metrics, samples = open_logs(run_dir, dist)
    report = on_progress if on_progress and dist.is_main else (lambda p: None)  # rank 0 alone reports
    run = Run(
        cfg=cfg,
        device=device,
        dist=dist,
        data=data,
        train_chars=len(train_ids),
        val_ids=val_ids,
        batcher=batcher,
        total_steps=steps,
        run_dir=run_dir,
        cache_dir=cache_dir,
        model=model,
        net=net,
        optimizer=optimizer,
        metrics=metrics,
        samples=samples,
        report=report,
        should_stop=should_stop or (lambda: None),
        sync_every=host_sync_every(cfg, device),
        plan=chosen,
        start=start,
        scaler=scaler,
    )
    return run, s, threads


def _load_corpus(path: str | os.PathLike, data_cfg: DataConfig, cache_dir, on_encode, dist: DistInfo) -> Corpus:
    """Encode in memory, or through the on-disk cache; under DDP each node's local rank 0 builds it first."""
    from charnn.store.corpus_cache import load_corpus

    def load() -> Corpus:
        if cache_dir is None:
            return encode_file(path, data_cfg)
        return load_corpus(path, data_cfg, cache_dir=cache_dir, on_progress=on_encode if dist.is_main else None)

    return local_rank_zero_first(dist, load)


def _check_splits(data: Corpus, val_ids, cfg: TrainConfig) -> None:
    if cfg.patience and data.data.val_frac == 0:
        raise ConfigError("--patience needs a validation split to watch (--val-frac > 0)")
    if data.data.val_frac > 0 and len(val_ids) < 2:
        raise DataError(
            f"{data.path}: validation split has {len(val_ids)} characters; need at least 2 "
            f"(raise --val-frac or use more text)"
        )


__all__ = ["Progress", "TrainResult", "train", "plan", "resume_configs", "learning_rate"]
