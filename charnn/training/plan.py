"""The training plan: model size, regularisation, batch shape, schedule, validation cadence and stopping rule,
chosen from the corpus (training characters, vocabulary) and the hardware, with the user's flags laid on top.

A pure function of its inputs (no torch, no files): `make_plan(facts, hardware, request)`. The numbers come
from the corpus matrix measured in docs/benchmarks.md ("Fitting the corpus"), not from tiny shakespeare alone.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from charnn.config import PRESETS, ModelConfig, TrainConfig, check_fields, overlay_train
from charnn.errors import ConfigError

# Corpus tiers by training characters: (upper bound, name, dropout). Dropout is the strongest lever on small
# text: without it a 2x256 LSTM memorises 45,000 characters within a few epochs and validation climbs.
TIERS: tuple[tuple[float, str, float], ...] = (
    (100_000, "small corpus", 0.5),
    (400_000, "medium corpus", 0.3),
    (2_000_000, "large corpus", 0.0),
    (math.inf, "very large corpus", 0.0),
)
CPU_BATCH = (16, 64)  # many small updates beat few large ones at a fixed CPU budget (docs/benchmarks.md)
# A GPU's recurrence is latency-bound (one small matmul per character per layer): 128 streams cost little more
# per step than 64, and a step carries twice the text. Not measured yet (docs/gpu.md): benchmarks/gpu_check.py.
GPU_BATCH = (128, 128)
GPU_DROPOUT = 0.2  # at least this on a GPU below 2M characters: three minutes buy tens of passes over such text
# A GPU steps in milliseconds and each validation + checkpoint costs tens of steps' time: validate at most every
# this many steps, but at least once every two passes over the corpus (for early stopping on small ones).
GPU_MIN_EVAL_EVERY = 200
CPU_MAX_STEPS = 8000  # about 5 minutes for a 2x256 LSTM at 16 x 64 on a 2-core CPU
GPU_MAX_STEPS = 5000
MAX_EPOCHS = 40  # small corpora: the schedule decays over this many passes; early stopping usually ends sooner
EVALS_PER_EPOCH = 2  # validation twice an epoch ...
MIN_EVAL_EVERY = 24  # ... but not more often than this (or once an epoch): each scores the split and saves
MAX_EVAL_EVERY = 1000  # the first validation within about a minute on a CPU
PATIENCE_EPOCHS = 4  # stop after this many epochs without a new best validation loss ...
MIN_PATIENCE, MAX_PATIENCE = 4, 8  # ... counted in validations, within these bounds
# Given options that change what the plan's lines describe (the others, such as --threads, are not listed).
SHAPING = frozenset({"time_budget", "epochs", "tie_weights", "locked_dropout", "min_lr", "grad_clip"})
# Fine-tuning starts from trained weights (PlanRequest.init_model): a third of the learning rate, so the first
# steps on the new text do not wreck what the weights know, a short warmup (AdamW's moments start afresh),
# fewer passes and an earlier stop, since a trained model fits a small corpus, and overfits it, sooner.
FINETUNE_LR_FACTOR = 1 / 3
FINETUNE_WARMUP = 10
FINETUNE_EPOCHS = 10
FINETUNE_PATIENCE_EPOCHS = 2
# Model options a fine-tuned run may change: no weight's shape or meaning depends on them.
FREE_ON_FINETUNE = ("dropout", "locked_dropout")
# The options the plan chooses when they are not given (the help shows "[default: plan]" for them).
PLANNED = frozenset(
    {
        "model",
        "layers",
        "hidden",
        "embed",
        "dropout",
        "layer_norm",
        "batch_size",
        "seq_len",
        "lr",
        "warmup_iters",
        "weight_decay",
        "max_iters",
        "eval_every",
        "patience",
    }
)


@dataclass(frozen=True)
class Hardware:
    """What the plan needs to know about where training runs."""

    device: str = "cpu"  # cpu | cuda | mps
    cores: int = 1
    native_bf16: bool = False


@dataclass(frozen=True)
class CorpusFacts:
    """What the plan needs to know about the corpus: its split sizes and its vocabulary."""

    train_chars: int
    val_chars: int
    vocab_size: int


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

    def as_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "lines": list(self.lines), "chosen": list(self.chosen)}


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


def make_plan(facts: CorpusFacts, hardware: Hardware, request: PlanRequest | None = None) -> Plan:
    """Configs for `facts` on `hardware`; a preset's values, then the user's flags, win over the plan's."""
    request = request or PlanRequest()
    check_fields(ModelConfig, request.model)  # a bad flag is its own error, not a failure of the plan's arithmetic
    check_fields(TrainConfig, request.train)
    tier, dropout = tier_of(facts.train_chars)
    gpu = hardware.device == "cuda"
    base_model, base_train = _model_choice(facts, gpu, dropout), {}
    if request.init_model is not None:
        if request.preset is not None:
            raise ConfigError("--preset cannot be combined with --init-from (the run keeps its starting model)")
        base_model = {}  # the model is the starting one's, with the few options a fine-tune may change
    elif request.preset is not None:
        if request.preset not in PRESETS:
            raise ConfigError(f"unknown --preset {request.preset!r}; choose from {', '.join(PRESETS)}")
        preset = PRESETS[request.preset]
        base_model, base_train = dataclasses.asdict(preset.model), dict(preset.train)
    if request.init_model is not None:
        model = finetune_model(request.init_model, request.model)
    else:
        model = _model(base_model, request.model)
    given = {**base_train, **{k: v for k, v in request.train.items() if v is not None}}
    schedule = _schedule(facts, gpu, given, finetune=request.init_model is not None)
    train_dict = overlay_train(schedule, given)
    train_cfg = TrainConfig(**train_dict)
    chosen = tuple(
        sorted(
            ({k for k, v in base_model.items() if request.model.get(k) is None} if request.preset is None else set())
            | {k for k in schedule if k not in given}
        )
    )
    lines = _explain(facts, hardware, tier, model, train_cfg, request, chosen)
    return Plan(model, train_cfg, tier, lines, chosen)


def _model_choice(facts: CorpusFacts, gpu: bool, dropout: float) -> dict[str, Any]:
    """An LSTM with layer norm: 2x256 on the CPU; a GPU affords 512 units, 3 layers from 2M characters, with
    dropout below that (the GPU makes many passes over a small corpus in a few minutes)."""
    hidden, layers = 256, 2
    if gpu and facts.train_chars >= 2_000_000:
        hidden, layers = 512, 3
    elif gpu and facts.train_chars >= 400_000:
        hidden, dropout = 512, max(dropout, GPU_DROPOUT)
    return dict(model="lstm", layers=layers, hidden=hidden, embed=128, dropout=dropout, layer_norm=True)


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
            flag = "--" + key.replace("_", "-")
            raise ConfigError(
                f"{flag} {value} conflicts with the model of --init-from ({key}={getattr(init, key)});"
                f" a fine-tuned run keeps its model"
            )
    return dataclasses.replace(init, **{k: given[k] for k in FREE_ON_FINETUNE if given.get(k) is not None})


def _schedule(facts: CorpusFacts, gpu: bool, given: dict[str, Any], *, finetune: bool = False) -> dict[str, Any]:
    """The training options the plan chooses: batch shape, learning rate, length, cadence, patience."""
    batch, seq = GPU_BATCH if gpu else CPU_BATCH
    batch, seq = batch_shape(facts.train_chars, given.get("batch_size", batch), given.get("seq_len", seq))
    per_epoch = steps_per_epoch(facts.train_chars, batch, seq)
    max_steps = GPU_MAX_STEPS if gpu else CPU_MAX_STEPS
    steps = min(max_steps, (FINETUNE_EPOCHS if finetune else MAX_EPOCHS) * per_epoch)
    least = min(GPU_MIN_EVAL_EVERY, max(2 * per_epoch, MIN_EVAL_EVERY)) if gpu else MIN_EVAL_EVERY
    most = steps if gpu else per_epoch  # on a CPU at least once an epoch; a GPU's epochs of a few steps are too short
    eval_every = min(max(per_epoch // EVALS_PER_EPOCH, least), most, MAX_EVAL_EVERY, steps)
    evals_per_epoch = per_epoch / eval_every
    epochs = FINETUNE_PATIENCE_EPOCHS if finetune else PATIENCE_EPOCHS
    patience = min(max(round(epochs * evals_per_epoch), MIN_PATIENCE), MAX_PATIENCE)
    lr = (2e-3 if gpu else 3e-3) * (FINETUNE_LR_FACTOR if finetune else 1.0)
    warmup = min(FINETUNE_WARMUP if finetune else 50, steps // 10)
    return dict(
        batch_size=batch,
        seq_len=seq,
        lr=lr,
        warmup_iters=warmup,
        weight_decay=0.1,
        max_iters=steps,
        eval_every=eval_every,
        patience=patience if facts.val_chars >= 2 else None,
    )


def eval_share(val_chars: int, eval_every: int, segment: int, *, rows: int = 64) -> float:
    """Rough share of a run spent validating and checkpointing, in training steps of a 2x256 LSTM at 16 x 64 on
    a CPU (measured: 2,000 characters of validation cost 1.5 steps, 20,000 cost 8 and 111,540 cost 43; a
    checkpoint half a step). Scoring runs up to `rows` segments side by side, each batch a pass of the segment
    length whose cost grows with the rows in it. An estimate for the plan's line; the summary gives the
    measured share."""
    segments = max(1, math.ceil(val_chars / segment))
    length = min(val_chars, segment) / 1000
    cost = 0.5
    for first in range(0, segments, rows):
        cost += length * (0.4 + 0.36 * min(rows, segments - first))
    return cost / (cost + eval_every)


def _explain(
    facts: CorpusFacts,
    hardware: Hardware,
    tier: str,
    model: ModelConfig,
    cfg: TrainConfig,
    request: PlanRequest,
    chosen: tuple[str, ...],
) -> tuple[str, ...]:
    """A few lines: what was chosen and why, naming the options that came from the user or a preset."""
    per_epoch = steps_per_epoch(facts.train_chars, cfg.batch_size, cfg.seq_len)
    source = f"preset {request.preset}" if request.preset else "plan"
    kind = f"{model.model.upper()} {model.layers}x{model.hidden}" + (" with layer norm" if model.layer_norm else "")
    if request.init_model is not None:
        kind = f"fine-tuning the trained {kind}"
    lines = [
        f"{facts.train_chars:,} training characters, {facts.vocab_size} symbols, {hardware.device}: {tier} -> "
        f"{kind}, dropout {model.dropout:g}, weight decay {cfg.weight_decay:g} ({source})"
    ]
    if cfg.time_budget is not None:
        length = f"for {cfg.time_budget:g} s"
    elif cfg.epochs is not None:
        length = f"for {cfg.epochs:g} epochs"
    else:
        steps = cfg.max_iters or per_epoch
        length = f"up to {steps:,} steps ({steps / per_epoch:.1f} epochs)"
    lines.append(
        f"batch {cfg.batch_size} x {cfg.seq_len} ({per_epoch:,} steps an epoch), lr {cfg.lr:g} with "
        f"cosine decay, {length}"
    )
    stop = f"stops after {cfg.patience} validations without a new best" if cfg.patience else "no early stopping"
    share = eval_share(facts.val_chars, cfg.eval_every, cfg.eval_segment)
    lines.append(
        f"validation every {cfg.eval_every:,} steps (~{cfg.eval_every / per_epoch:.2g} epoch, "
        f"{facts.val_chars:,} characters, about {share:.0%} of the time); {stop}; the best checkpoint "
        f"is kept"
    )
    given = sorted(k for k in request.given() if k in PLANNED or k in SHAPING)
    if given:
        lines.append("given: " + ", ".join("--" + k.replace("_", "-") for k in given))
    return tuple(lines)
