"""Typed, frozen configuration: data decoding, model shape, training, sampling, and the presets.

Defaults, bounds and help text are defined once here; the CLI reads them. Validation happens in
`__post_init__`, so an object that exists is a valid one. No torch import: this module is cheap.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from charnn.errors import ConfigError

MODEL_KINDS = ("lstm", "gru", "rnn")
PRECISIONS = ("auto", "fp32", "bf16")
SAMPLE_PRECISIONS = ("fp32", "bf16")  # sampling has no "auto": fp32 unless asked, so paths give the same text
BACKENDS = ("auto", "nccl", "gloo")  # torch.distributed, under torchrun


def opt(default: Any, help: str, *, min: float | None = None, max: float | None = None,
        choices: tuple[str, ...] | None = None, gt: float | None = None) -> Any:
    """A dataclass field with its help text and bounds, checked by `_validate` and shown by the CLI."""
    meta = {"help": help, "min": min, "max": max, "choices": choices, "gt": gt}
    return field(default=default, metadata=meta)


def _validate(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        meta = f.metadata
        if value is None or not meta:
            continue
        flag = "--" + f.name.replace("_", "-")
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(f"{flag} must be one of {', '.join(meta['choices'])}, not {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{flag} must be a finite number, not {value}")
            if meta.get("min") is not None and value < meta["min"]:
                raise ConfigError(f"{flag} must be at least {meta['min']}, not {value}")
            if meta.get("max") is not None and value > meta["max"]:
                raise ConfigError(f"{flag} must be at most {meta['max']}, not {value}")
            if meta.get("gt") is not None and value <= meta["gt"]:
                raise ConfigError(f"{flag} must be greater than {meta['gt']}, not {value}")


def help_of(cls: type, name: str) -> str:
    """The help text of field `name` of dataclass `cls` (for the CLI)."""
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


def default_of(cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build `cls` from a dict, ignoring unknown keys (older/newer files) and validating the rest."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__} must be a JSON object")
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError as err:
        raise ConfigError(f"bad {cls.__name__}: {err}") from None


@dataclass(frozen=True)
class DataConfig:
    """How a text file becomes a stream of symbol ids."""

    encoding: str = opt("utf-8", "Text encoding of the corpus (e.g. latin-1). Ignored with --bytes.")
    errors: str = opt("strict", "What to do with undecodable bytes: strict (error naming the offset) or replace.",
                      choices=("strict", "replace"))
    keep_newlines: bool = opt(False, "Keep CRLF and CR as they are instead of turning them into LF.")
    bytes_mode: bool = opt(False, "Model raw bytes (vocabulary of byte values) instead of characters.")
    val_frac: float = opt(0.1, "Fraction of the corpus (its tail) held out for validation.", min=0.0, max=0.5)
    test_frac: float = opt(0.0, "Fraction held out for test, taken from the very end.", min=0.0, max=0.5)

    def __post_init__(self) -> None:
        _validate(self)
        if self.val_frac + self.test_frac >= 0.9:
            raise ConfigError("--val-frac plus --test-frac must leave at least 10% for training")
        if not self.bytes_mode:
            import codecs

            try:
                info = codecs.lookup(self.encoding)
            except LookupError:
                raise ConfigError(f"unknown --encoding {self.encoding!r}") from None
            if not getattr(info, "_is_text_encoding", True):  # hex, base64, rot13...: bytes-to-bytes codecs
                raise ConfigError(f"--encoding {self.encoding!r} is not a text encoding "
                                  f"(try utf-8, latin-1, utf-16, cp1252)")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the network: embedding -> stacked recurrent layers -> linear head."""

    model: str = opt("lstm", "Recurrent cell: lstm, gru or rnn (Elman, tanh).", choices=MODEL_KINDS)
    layers: int = opt(2, "Number of stacked recurrent layers.", min=1, max=16)
    hidden: int = opt(256, "Hidden units per layer.", min=1, max=16384)
    embed: int = opt(128, "Embedding size of each input symbol.", min=1, max=16384)
    dropout: float = opt(0.0, "Dropout between layers and before the output layer.", min=0.0, max=0.9)
    # Issue 5's "what to try" list, AWD-LSTM style (Merity et al. 2017); all off by default, so a checkpoint
    # whose metadata predates them loads as the model it was.
    tie_weights: bool = opt(False, "Share the embedding matrix with the output layer's weight (Press & Wolf "
                                   "2017; Inan et al. 2017); needs --embed equal to --hidden, which it sets "
                                   "when --embed is not given.")
    layer_norm: bool = opt(False, "Layer norm on the last recurrent layer's output, before the output layer.")
    locked_dropout: float = opt(0.0, "Variational dropout: one mask per sequence, the same at every step, on "
                                     "the embeddings and the last layer's output (AWD-LSTM).", min=0.0, max=0.9)

    def __post_init__(self) -> None:
        _validate(self)
        if self.tie_weights and self.embed != self.hidden:
            raise ConfigError(f"--tie-weights needs --embed equal to --hidden (--embed {self.embed}, "
                              f"--hidden {self.hidden})")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedule, stopping rule, and what happens along the way."""

    batch_size: int = opt(64, "Parallel streams per batch (the B of truncated BPTT).", min=1, max=65536)
    seq_len: int = opt(128, "Characters per stream per step (the T of truncated BPTT).", min=1, max=65536)
    lr: float = opt(2e-3, "Peak learning rate (AdamW).", gt=0.0, max=10.0)
    min_lr: float | None = opt(None, "Learning rate at the end of the cosine decay (default: lr/20).",
                               min=0.0, max=10.0)
    warmup_iters: int = opt(50, "Linear warmup steps.", min=0)
    weight_decay: float = opt(0.0, "AdamW weight decay (matrices only).", min=0.0, max=10.0)
    grad_clip: float = opt(5.0, "Clip the global gradient norm to this (0 turns clipping off).", min=0.0)
    max_iters: int | None = opt(None, "Stop after this many steps.", min=1)
    epochs: float | None = opt(None, "Stop after this many passes over the training split.", gt=0.0)
    time_budget: float | None = opt(None, "Stop after this many seconds; the schedule spans the budget.", gt=0.0)
    seed: int = opt(1337, "Random seed (weights, data order, samples).", min=0, max=2**63 - 1)
    eval_every: int = opt(250, "Steps between validation evaluations (and checkpoints).", min=1)
    eval_segment: int = opt(4096, "Validation is scored in segments of this many characters.", min=2)
    sample_every: int | None = opt(None, "Steps between samples (default: 100, 300, 700, then every 1000).",
                                   min=1)
    sample_length: int = opt(200, "Characters in each training sample.", min=0, max=100000)
    sample_temperature: float = opt(0.8, "Temperature of training samples.", min=0.01, max=100.0)
    log_every: int = opt(10, "Steps between metrics.jsonl lines and progress updates.", min=1)
    keep_last: int = opt(2, "Checkpoints kept besides the best one.", min=1, max=1000)
    patience: int | None = opt(None, "Early stopping: stop once this many evaluations in a row bring no new best "
                                     "validation loss (the best checkpoint is kept).", min=1)
    device: str = opt("auto", "auto, cpu, cuda or cuda:N.")
    precision: str = opt("auto", "auto: bf16 autocast on CUDA, and for training on CPUs with native bf16; "
                         "fp32 or bf16.", choices=PRECISIONS)
    threads: int | None = opt(None, "CPU threads for torch (default: torch's choice).", min=1, max=1024)
    max_bad_steps: int = opt(10, "Stop with exit 3 after this many non-finite losses in a row.", min=1)

    def __post_init__(self) -> None:
        _validate(self)
        if self.min_lr is not None and self.min_lr > self.lr:
            raise ConfigError(f"--min-lr ({self.min_lr}) must not exceed --lr ({self.lr})")


@dataclass(frozen=True)
class SampleConfig:
    """How text is drawn from a model."""

    length: int = opt(500, "Characters to generate (after the prime).", min=0, max=10**9)
    temperature: float = opt(0.8, "Softmax temperature, 0.01 to 100; lower is more conservative (--greedy for "
                                  "argmax).", min=0.01, max=100.0)
    top_k: int | None = opt(None, "Sample only among the k most likely characters.", min=1)
    top_p: float | None = opt(None, "Sample only from the smallest set whose probability reaches p.",
                              gt=0.0, max=1.0)
    greedy: bool = opt(False, "Always take the most likely character (argmax).")
    prime: str | None = opt(None, "Text to warm the state on; the output starts with it.")
    seed: int | None = opt(None, "Random seed; the same seed gives the same text.", min=0, max=2**63 - 1)
    num_samples: int = opt(1, "Independent samples to draw (run in parallel).", min=1, max=100000)
    precision: str = opt("fp32", "Arithmetic of the sampling steps: fp32 (the same text on every stepping path) "
                                 "or bf16 (matmuls in bf16: faster for many streams on a GPU or a CPU with bf16 "
                                 "instructions; a slightly different text).", choices=SAMPLE_PRECISIONS)

    def __post_init__(self) -> None:
        _validate(self)


@dataclass(frozen=True)
class Preset:
    model: ModelConfig
    train: dict[str, Any]
    note: str


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        ModelConfig(model="lstm", layers=2, hidden=128, embed=64, dropout=0.0, layer_norm=True),
        # layer norm + weight decay 0.1: 1.734 -> 1.569 val nats/char in the same 2,500 steps (docs/benchmarks.md)
        dict(batch_size=16, seq_len=64, lr=3e-3, warmup_iters=50, weight_decay=0.1, max_iters=2500,
             eval_every=500),
        "about a minute on a laptop CPU; recognisable Shakespeare-like text",
    ),
    "small": Preset(
        ModelConfig(model="lstm", layers=2, hidden=256, embed=128, dropout=0.0, layer_norm=True),
        # Many small updates beat few large ones at a fixed CPU budget: 240 s sweeps in docs/benchmarks.md
        # (batch 64 x 128: 1.643, 32 x 128: 1.556, 16 x 128: 1.506, 16 x 64: 1.483 val nats/char); layer norm
        # on the output with weight decay 0.1 took 16 x 64 from 1.486 to 1.422 (each alone: 1.463, 1.483).
        dict(batch_size=16, seq_len=64, lr=3e-3, warmup_iters=50, weight_decay=0.1, max_iters=8000,
             eval_every=1000),
        "the default: about 5 minutes on a 2-core CPU",
    ),
    "medium": Preset(
        ModelConfig(model="lstm", layers=3, hidden=512, embed=256, dropout=0.2),
        dict(batch_size=64, seq_len=128, lr=2e-3, warmup_iters=100, max_iters=5000,
             eval_every=500),
        "a GPU, or a long CPU run",
    ),
    "large": Preset(
        ModelConfig(model="lstm", layers=3, hidden=1024, embed=256, dropout=0.3),
        dict(batch_size=128, seq_len=256, lr=1.5e-3, warmup_iters=200, max_iters=10000,
             eval_every=500),
        "a big GPU",
    ),
}
DEFAULT_PRESET = "small"


STOPPING_RULES = ("max_iters", "epochs", "time_budget")


def overlay_train(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Training options: explicit values (those not None) laid over `base` (a preset's, or a resumed run's).
    An explicit stopping rule replaces the base's, whichever rule that was."""
    given = {k: v for k, v in overrides.items() if v is not None}
    merged = dict(base)
    if any(k in given for k in STOPPING_RULES):
        for k in STOPPING_RULES:
            merged.pop(k, None)
    merged.update(given)
    return merged


def auto_preset(device_type: str, time_budget: float | None) -> str:
    """What `--preset auto` picks: `tiny` for CPU budgets under 90 s, else `small` on a CPU; on a GPU
    `medium` for budgets up to 10 minutes (it converges within them; `large` needs longer), else `large`."""
    if device_type == "cuda":
        return "medium" if time_budget is not None and time_budget <= 600 else "large"
    return "tiny" if time_budget is not None and time_budget < 90 else "small"


def resolve(preset: str | None, model_overrides: dict[str, Any], train_overrides: dict[str, Any], *,
            device_type: str = "cpu") -> tuple[ModelConfig, TrainConfig]:
    """Configs from a preset with explicit values (those not None) laid over it.

    A stopping rule given explicitly (max_iters, epochs or time_budget) replaces the preset's.
    `auto` picks the preset for the device and time budget (`auto_preset`).
    With tie_weights and no explicit embed, embed is the hidden size (the tie needs them equal).
    """
    name = preset or DEFAULT_PRESET
    if name == "auto":
        name = auto_preset(device_type, train_overrides.get("time_budget"))
    if name not in PRESETS:
        raise ConfigError(f"unknown --preset {name!r}; choose from {', '.join(PRESETS)}")
    base = PRESETS[name]
    model_kw = {k: v for k, v in model_overrides.items() if v is not None}
    if model_kw.get("tie_weights", base.model.tie_weights) and "embed" not in model_kw:
        # `--tie-weights` works with any preset: the embedding takes the hidden size unless given explicitly.
        model_kw["embed"] = model_kw.get("hidden", base.model.hidden)
    return dataclasses.replace(base.model, **model_kw), TrainConfig(**overlay_train(base.train, train_overrides))


def final_lr(cfg: TrainConfig) -> float:
    return cfg.lr / 20 if cfg.min_lr is None else cfg.min_lr
