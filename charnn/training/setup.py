"""Setting up a training run: the processes, the corpus, the plan (with this device's measured speed), the
model and optimizer, the run directory (locked) and the state to start from; and `plan()`, the plan alone.

Not the loop that steps the run (`charnn.training.train`) nor the plan's arithmetic (`charnn.training.plan`).
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

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
from charnn.model import CharRNN
from charnn.ram import check_ram
from charnn.runtime import (
    cuda_fast_dtypes,
    native_bf16_cpu,
    pick_device,
    seed_everything,
    set_deterministic,
)
from charnn.shapes import num_parameters
from charnn.store.rundir import open_logs, write_run_files
from charnn.store.runlock import check_new_run_dir, claim_run, new_run_dir
from charnn.training.batches import StreamBatcher, check_batch_shape
from charnn.training.finetune import (
    load_start,
    start_corpus,
    start_request,
    start_weights,
    starter_coverage,
    training_corpus,
)
from charnn.training.loop import LoopState, Run
from charnn.training.plan import STARTER_HINT_CHARS, CorpusFacts, Hardware, Plan, PlanRequest, make_plan
from charnn.training.resume import resume as resume_run
from charnn.training.schedule import default_run_dir, total_steps
from charnn.training.speed import run_speed
from charnn.training.step import host_sync_every, make_optimizer, make_scaler
from charnn.training.threads import ThreadGovernor
from charnn.training.timing import Speed


def hardware(device: torch.device, speed: Speed | None = None) -> Hardware:
    """The facts about `device` the training plan reads (`speed`: measured on the plan's model and shape)."""
    if device.type == "cuda":
        bf16 = cuda_fast_dtypes(device)[0]
    else:
        bf16 = device.type == "cpu" and native_bf16_cpu()
    return Hardware(device.type, cores=torch.get_num_threads(), native_bf16=bf16, speed=speed)


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

    def settle(
        self, data: Corpus, device: torch.device, dist: DistInfo | None = None, *, step_seconds: float | None = None
    ) -> tuple[ModelConfig, TrainConfig, Plan | None]:
        """The configs to train with, and the plan that chose those not given: drafted, then made again with
        this device's speed on the draft's model and batch shape (`run_speed`: measured, or `step_seconds`)."""
        if self.model is not None and self.train is not None:
            return self.model, self.train, None
        facts = corpus_facts(data)
        draft = make_plan(facts, hardware(device), self.request)
        model_cfg, cfg = self.model or draft.model, self.train or draft.train
        speed = run_speed(model_cfg, cfg, facts, device, dist, step_seconds=step_seconds)
        chosen = make_plan(facts, hardware(device, speed), self.request) if speed else draft
        return self.model or chosen.model, self.train or chosen.train, chosen


def corpus_facts(data: Corpus) -> CorpusFacts:
    train_ids, val_ids, _ = data.split()
    coverage = starter_coverage(train_ids, data) if len(train_ids) < STARTER_HINT_CHARS else None
    return CorpusFacts(len(train_ids), len(val_ids), len(data.vocab), starter_coverage=coverage)


def plan(
    corpus: str | os.PathLike | Corpus,
    *,
    request: PlanRequest | None = None,
    data_cfg: DataConfig | None = None,
    device: str | None = None,
    init_from: str | os.PathLike | None = None,
    step_seconds: float | None = None,
    out_dir: str | os.PathLike | None = None,
) -> Plan:
    """The training plan `train` would follow for `corpus` (a path, encoded in memory; nothing is written).
    The device's speed on the plan's model is measured (about 2 s) unless `step_seconds` gives it (0: not
    measured, no estimate and no cap; see `charnn.training.speed`); `plan.to_json()` is the plan as JSON. The
    checks training makes before its first step are made too (`check_run`; `out_dir`: the new run's --out).

    >>> p = charnn.plan("poems.txt")               # or request=PlanRequest(model={"dropout": 0.2})
    >>> print("\\n".join(p.lines)); charnn.train("poems.txt", model_cfg=p.model, train_cfg=p.train)
    """
    configs = Configs(None, None, request or PlanRequest())
    data = corpus if isinstance(corpus, Corpus) else encode_file(corpus, data_cfg or DataConfig())
    if init_from is not None:
        start = load_start(init_from)
        data, configs = start_corpus(data, start), replace(configs, request=start_request(start, configs.request))
    early = configs.early()
    target = pick_device(device or early.device)
    threads = ThreadGovernor(early.threads, target)  # the threads the run would take, for the measurement
    try:
        threads.tick()
        model_cfg, cfg, chosen = configs.settle(data, target, step_seconds=step_seconds)
    finally:
        threads.restore()
    check_run(data, model_cfg, cfg, device=target, out_dir=Path(out_dir) if out_dir is not None else None)
    return chosen


def check_run(
    data: Corpus,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    *,
    device: torch.device,
    world: int = 1,
    out_dir: Path | None = None,
) -> None:
    """Every check training makes before its first step on the corpus, the configs and a new run's `out_dir`,
    in the order it makes them. `plan` makes them too: `charnn train --plan` never promises a run that training
    refuses, and fails with the same line."""
    train_ids, val_ids, _ = data.split()
    if cfg.patience and data.data.val_frac == 0:
        raise ConfigError("--patience needs a validation split to watch (--val-frac > 0)")
    if data.data.val_frac > 0 and len(val_ids) < 2:
        raise DataError(
            f"{data.path}: validation split has {len(val_ids)} characters; need at least 2 "
            f"(raise --val-frac or use more text)"
        )
    check_batch_shape(len(train_ids), batch_size=cfg.batch_size, seq_len=cfg.seq_len, world=world)
    # built in RAM whatever the device; training on the CPU adds gradients and Adam's two moments
    on_cpu = device.type == "cpu"
    check_ram(
        num_parameters(model_cfg, len(data.vocab)) * 4 * (4 if on_cpu else 1),
        "this model's weights" + (", gradients and optimizer state" if on_cpu else ""),
        fix="use a smaller model (--hidden, --layers)",
    )
    if out_dir is not None:
        check_new_run_dir(out_dir)


# long: one straight line of set-up steps, each a call; splitting it would only pass its locals around
def prepare(
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
    check_same_corpus(dist, sha256=data.sha256, vocab_json=data.vocab.to_json(), chars=len(data.ids), path=data.path)
    threads.tick()  # the first look at the other programs' load: the speed is measured with the run's threads
    model_cfg, cfg, chosen = configs.settle(data, device, dist)
    check_run(data, model_cfg, cfg, device=device, world=dist.world)  # --out: new_run_dir below checks it
    train_ids, val_ids, _ = data.split()
    batcher = StreamBatcher(
        train_ids,
        batch_size=cfg.batch_size,
        seq_len=cfg.seq_len,
        seed=cfg.seed,
        device=device,
        rank=dist.rank,
        world=dist.world,
        reshuffle=cfg.reshuffle,
    )
    steps = total_steps(cfg, batcher.batches_per_epoch)

    run_dir = broadcast_object(dist, Path(out_dir) if out_dir else default_run_dir(data.path))
    seed_everything(cfg.seed)
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
