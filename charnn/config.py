"""Typed, frozen configuration: data decoding, model shape, training, sampling, and the presets.

Defaults, bounds and help text are defined once here (with `charnn.fields.opt`); the CLI reads them.
Validation happens in `__post_init__`, so an object that exists is a valid one. No torch import: this module is
cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from charnn.errors import ConfigError
from charnn.fields import check_fields as check_fields  # re-exported: the configs' fields and their checks
from charnn.fields import default_of as default_of
from charnn.fields import from_dict as from_dict
from charnn.fields import opt, validate
from charnn.fields import to_dict as to_dict

MODEL_KINDS = ("lstm", "gru", "rnn")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # fp16: CUDA only, with loss scaling
SAMPLE_PRECISIONS = ("fp32", "bf16")  # sampling has no "auto": fp32 unless asked, so paths give the same text
BACKENDS = ("auto", "nccl", "gloo")  # torch.distributed, under torchrun


@dataclass(frozen=True)
class DataConfig:
    """How a text file becomes a stream of symbol ids."""

    encoding: str = opt(
        "utf-8", "Text encoding of the corpus, e.g. latin-1; ignored with --bytes.", panel="Data", metavar="CODEC"
    )
    errors: str = opt(
        "strict",
        "Undecodable bytes: strict (an error naming the offset) or replace.",
        choices=("strict", "replace"),
        panel="Data",
        metavar="MODE",
    )
    keep_newlines: bool = opt(False, "Keep CRLF and CR line endings instead of turning them into LF.", panel="Data")
    bytes_mode: bool = opt(
        False, "Model raw bytes (a vocabulary of byte values) instead of characters.", panel="Data", flags=("--bytes",)
    )
    val_frac: float = opt(
        0.1, "Fraction of the corpus (its tail) held out for validation.", min=0.0, max=0.5, panel="Data"
    )
    test_frac: float = opt(0.0, "Fraction held out for test, taken from the very end.", min=0.0, max=0.5, panel="Data")

    def __post_init__(self) -> None:
        validate(self)
        if self.val_frac + self.test_frac >= 0.9:
            raise ConfigError("--val-frac plus --test-frac must leave at least 10% for training")
        if not self.bytes_mode:
            import codecs

            try:
                info = codecs.lookup(self.encoding)
            except LookupError:
                raise ConfigError(f"unknown --encoding {self.encoding!r}") from None
            if not getattr(info, "_is_text_encoding", True):  # hex, base64, rot13...: bytes-to-bytes codecs
                raise ConfigError(
                    f"--encoding {self.encoding!r} is not a text encoding (try utf-8, latin-1, utf-16, cp1252)"
                )


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the network: embedding -> stacked recurrent layers -> linear head."""

    # rnn: Elman's cell, tanh.
    model: str = opt(
        "lstm",
        "Recurrent cell: lstm, gru or rnn.",
        choices=MODEL_KINDS,
        panel="Model",
        metavar="CELL",
        parser_checks=True,
    )
    layers: int = opt(2, "Stacked recurrent layers.", min=1, max=16, panel="Model", parser_checks=True)
    hidden: int = opt(256, "Hidden units per layer.", min=1, max=16384, panel="Model", parser_checks=True)
    embed: int = opt(128, "Embedding size per symbol.", min=1, max=16384, panel="Model", parser_checks=True)
    dropout: float = opt(0.0, "Dropout after each layer.", min=0.0, max=0.9, panel="Model")
    # Regularisers in the AWD-LSTM style (Merity et al. 2017), all off by default, so a checkpoint whose
    # metadata predates them loads as the model it was. Tied weights: Press & Wolf 2017, Inan et al. 2017;
    # the tie needs --embed equal to --hidden, which it sets when --embed is not given.
    tie_weights: bool = opt(
        False,
        "Share the embedding with the output layer; --embed takes --hidden.",
        panel="Model",
        flags=("--tie-weights/--no-tie-weights",),
    )
    layer_norm: bool = opt(
        False, "Layer norm before the output layer.", panel="Model", flags=("--layer-norm/--no-layer-norm",)
    )
    # Variational ("locked") dropout: one mask per sequence, the same at every step.
    locked_dropout: float = opt(0.0, "Dropout with one mask per sequence.", min=0.0, max=0.9, panel="Model")
    # DropConnect on the recurrent weights (weight-drop, Wan et al. 2013; AWD-LSTM): the fused kernel still runs.
    weight_drop: float = opt(0.0, "Dropout on the recurrent weights.", min=0.0, max=0.9, panel="Model")

    def __post_init__(self) -> None:
        validate(self)
        if self.tie_weights and self.embed != self.hidden:
            raise ConfigError(
                f"--tie-weights needs --embed equal to --hidden (--embed {self.embed}, --hidden {self.hidden})"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedule, stopping rule, and what happens along the way."""

    batch_size: int = opt(
        64, "Parallel streams per batch (the B of truncated BPTT).", min=1, max=65536, panel="Optimisation"
    )
    seq_len: int = opt(
        128, "Characters per stream per step (the T of truncated BPTT).", min=1, max=65536, panel="Optimisation"
    )
    lr: float = opt(2e-3, "Peak learning rate (AdamW).", gt=0.0, max=10.0, panel="Optimisation")
    min_lr: float | None = opt(
        None, "Learning rate at the end of the cosine decay.", min=0.0, max=10.0, panel="Optimisation", shown="lr/20"
    )
    warmup_iters: int = opt(50, "Linear warmup steps.", min=0, panel="Optimisation")
    weight_decay: float = opt(0.0, "AdamW weight decay, matrices.", min=0.0, max=10.0, panel="Optimisation")
    grad_clip: float = opt(
        5.0, "Clip the global gradient norm to this; 0 turns clipping off.", min=0.0, panel="Optimisation"
    )
    # Sampling, eval, beam, the server and the exports start from the zero state; training without resets does
    # only at step 0 and each epoch. 0.1: 0.17 nats/char off tiny shakespeare's first 16 characters, the steady
    # state unchanged (docs/training.md). Runs saved before the option trained without it (`absent`).
    state_reset: float = opt(
        0.1,
        "Chance per stream per batch that its carried state restarts from zero.",
        min=0.0,
        max=1.0,
        panel="Optimisation",
        metavar="P",
        absent=0.0,
    )
    # The same order every epoch makes a run's figure depend on which text its streams read last; reordered in
    # chunks each epoch, the validation loss falls steadily instead (docs/training.md, docs/benchmarks.md). The
    # plan always reorders (charnn.training.choices); runs saved before the option, and the library's
    # TrainConfig, keep the order.
    reshuffle: int = opt(
        0,
        "Reorder the text in CHARS-long chunks each epoch (0: off).",
        min=0,
        panel="Optimisation",
        metavar="CHARS",
    )
    # An exponential moving average of the weights smooths the steps' noise (Polyak averaging; EMA in most
    # modern trainers): on tiny shakespeare it scored better than the weights it averaged at every validation
    # compared (docs/benchmarks.md). Runs saved before the option kept none (`absent`).
    average: float = opt(
        0.998,
        "Validate and save a moving average of the weights (0: off).",
        min=0.0,
        max=0.9999,
        panel="Optimisation",
        metavar="DECAY",
        absent=0.0,
    )
    max_iters: int | None = opt(None, "Stop after this many steps.", min=1, panel="Stopping")
    epochs: float | None = opt(None, "Stop after this many passes over the data.", gt=0.0, panel="Stopping")
    time_budget: float | None = opt(
        None,
        "Stop after this many seconds; the schedule spans the budget.",
        gt=0.0,
        panel="Stopping",
        metavar="SECONDS",
    )
    seed: int = opt(
        1337, "Random seed for the weights, the data order and the samples.", min=0, max=2**63 - 1, panel="Run"
    )
    eval_every: int = opt(
        250, "Steps between validation evaluations and checkpoints.", min=1, panel="Evaluation & output"
    )
    eval_segment: int = opt(4096, "Validation is scored in segments of this many characters.", min=2)
    # A model trained for several passes is too confident on new text; a temperature fitted at each validation
    # takes that back (charnn.calibration; docs/training.md). Runs saved before the option had none (`absent`).
    calibrate: bool = opt(
        True,
        "Fit the output's temperature on validation.",
        panel="Model",
        flags=("--calibrate/--no-calibrate",),
        absent=False,
    )
    sample_every: int | None = opt(
        None, "Steps between samples.", min=1, panel="Evaluation & output", shown="100, 300, 700, then every 1000"
    )
    sample_length: int = opt(200, "Characters per training sample.", min=0, max=100000, panel="Evaluation & output")
    sample_temperature: float = opt(0.8, "Temperature of training samples.", min=0.01, max=100.0)
    log_every: int = opt(
        10, "Steps between metrics.jsonl lines and progress updates.", min=1, panel="Evaluation & output"
    )
    keep_last: int = opt(2, "Checkpoints kept beside the best.", min=1, max=1000, panel="Evaluation & output")
    # Early stopping keeps the best checkpoint, which is what `sample` and `eval` use.
    patience: int | None = opt(
        None, "Stop after this many evaluations without a new best (0: never).", min=0, panel="Stopping", shown="off"
    )
    device: str = opt("auto", "Where to run: auto, cpu, cuda, cuda:N or mps.", panel="Hardware", metavar="DEVICE")
    # auto: bf16 autocast on CUDA cards that have it (fp16 with loss scaling on older ones), and for training
    # on CPUs with native bf16 (docs/benchmarks.md, docs/gpu.md).
    precision: str = opt(
        "auto",
        "auto (bf16, else fp16 on older GPUs), fp32, bf16 or fp16.",
        choices=PRECISIONS,
        panel="Hardware",
        parser_checks=True,
    )
    # torch.use_deterministic_algorithms and the cuBLAS workspace (charnn.runtime.set_deterministic).
    deterministic: bool = opt(False, "Bitwise repeatable runs (slower on GPUs).", panel="Hardware")
    # None: torch's count, less the cores other programs keep busy
    # (charnn.training.threads, docs/scaling.md#shared-cores)
    threads: int | None = opt(
        None, "CPU threads for torch.", min=1, max=1024, panel="Hardware", shown="the CPU cores left free"
    )
    max_bad_steps: int = opt(10, "Stop with exit 3 after this many non-finite losses in a row.", min=1)

    def __post_init__(self) -> None:
        validate(self)
        if self.min_lr is not None and self.min_lr > self.lr:
            raise ConfigError(f"--min-lr ({self.min_lr}) must not exceed --lr ({self.lr})")


@dataclass(frozen=True)
class SampleConfig:
    """How text is drawn from a model."""

    length: int = opt(
        500, "Characters to generate (after the prime).", min=0, max=10**9, panel="Sampling", flags=("--length", "-n")
    )
    temperature: float = opt(
        0.8,
        "Softmax temperature, 0.01 to 100; lower is more conservative.",
        min=0.01,
        max=100.0,
        panel="Sampling",
        flags=("--temperature", "-t"),
    )
    top_k: int | None = opt(
        None, "Sample only among the k most likely characters.", min=1, panel="Sampling", metavar="K"
    )
    top_p: float | None = opt(
        None,
        "Sample only from the smallest set whose probability reaches p.",
        gt=0.0,
        max=1.0,
        panel="Sampling",
        metavar="P",
    )
    greedy: bool = opt(False, "Always take the most likely character (argmax).", panel="Sampling")
    prime: str | None = opt(None, "Text to warm the state on; the output starts with it.", panel="Sampling")
    seed: int | None = opt(
        None, "Random seed; the same seed gives the same text.", min=0, max=2**63 - 1, panel="Sampling"
    )
    num_samples: int = opt(
        1, "Independent samples to draw (run in parallel).", min=1, max=100000, panel="Sampling", metavar="N"
    )
    # Beam search scores with the model's own probabilities: temperature, top-k/p and the seed do not apply.
    beam: int | None = opt(
        None,
        "Beam search of this width: the most probable text, not a sample.",
        min=1,
        max=10000,
        panel="Sampling",
        metavar="N",
    )
    # bf16 runs the matmuls in bf16: faster for many streams on a GPU or a CPU with bf16 instructions, and a
    # slightly different text; fp32 gives the same text on every stepping path.
    precision: str = opt(
        "fp32",
        "Arithmetic of the sampling steps: fp32 (the same text everywhere) or bf16.",
        choices=SAMPLE_PRECISIONS,
        panel="Hardware",
        parser_checks=True,
    )

    def __post_init__(self) -> None:
        validate(self)
        if self.beam is not None:
            if self.greedy or self.top_k is not None or self.top_p is not None:
                raise ConfigError(
                    "--beam searches the model's own probabilities: drop --greedy (--beam 1 is "
                    "greedy), --top-k and --top-p"
                )
            if self.num_samples > self.beam:
                raise ConfigError(
                    f"--num-samples {self.num_samples} must be at most --beam {self.beam} "
                    f"(the beam holds {self.beam} texts)"
                )


@dataclass(frozen=True)
class DynamicConfig:
    """Dynamic evaluation (`charnn eval --dynamic`): the model adapts to the text as it scores it."""

    dynamic: bool = opt(
        False,
        "Also score each text with dynamic evaluation: a gradient step after each segment, the weights pulled back "
        "toward the trained ones (reported apart from the static figures).",
        panel="Dynamic evaluation",
    )
    # defaults: the best of a sweep on tiny shakespeare's validation split (docs/benchmarks.md, dynamic evaluation)
    dynamic_lr: float = opt(
        0.03,
        "Learning rate of dynamic evaluation's steps.",
        gt=0.0,
        max=100.0,
        panel="Dynamic evaluation",
        metavar="LR",
    )
    dynamic_decay: float = opt(
        0.0,
        "Share of the way back to the trained weights taken at each step (0: none).",
        min=0.0,
        max=1.0,
        panel="Dynamic evaluation",
        metavar="D",
    )
    dynamic_segment: int = opt(
        64, "Characters scored before each step.", min=2, max=10**6, panel="Dynamic evaluation", metavar="N"
    )

    def __post_init__(self) -> None:
        validate(self)


STOPPING_RULES = ("max_iters", "epochs", "time_budget")
# The options training's plan (charnn.training.plan) chooses when they are not given (the help shows
# "[default: plan]" for them): here, so that the command line builds its options without importing the plan.
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
        "reshuffle",
    }
)


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


def final_lr(cfg: TrainConfig) -> float:
    return cfg.lr / 20 if cfg.min_lr is None else cfg.min_lr
