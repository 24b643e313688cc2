"""Continuing a run: the configs it continues with (its config.json, with the training options the user
changed), and the newest checkpoint whose files verify and whose training state fits this run, applied to the
model, the optimizer, the loss scaler, the RNGs and the streams' hidden state. Not the loop it continues
(`charnn.training.loop`) nor how the run directory is laid out (`charnn.store.rundir`).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from charnn.calibration import unfold
from charnn.config import DataConfig, ModelConfig, TrainConfig, from_dict, overlay_train, to_dict
from charnn.data import Corpus
from charnn.distributed import DistInfo, rank_rows
from charnn.errors import CharnnWarning, CheckpointError, ConfigError, DataError, ResumeMismatchError
from charnn.model import CharRNN
from charnn.runtime import set_rng_state
from charnn.store.checkpoint import LoadedModel, load_model
from charnn.store.rundir import list_checkpoints
from charnn.store.trainstate import load_state, state_path
from charnn.textfile import open_input
from charnn.training.average import WeightAverage, load_trained
from charnn.training.runstate import LoopState
from charnn.training.step import load_optimizer_state, set_lr

# The options that decide which text each row of a batch holds (`charnn.training.batches.StreamBatcher`).
LAYOUT = ("batch_size", "seq_len", "seed")
T = TypeVar("T")


def check_same_run(loaded: LoadedModel, model_cfg: ModelConfig, vocab, corpus_sha256: str) -> None:
    if loaded.corpus_sha256 != corpus_sha256:
        raise ResumeMismatchError(
            "--resume: the corpus differs from the one this run was trained on "
            "(sha256 mismatch); resume with the original file or start a new run"
        )
    if loaded.vocab != vocab:
        raise ResumeMismatchError("--resume: the vocabulary differs from the run's")
    if loaded.model_cfg != model_cfg:
        raise ResumeMismatchError(f"--resume: the model config differs from the run's ({loaded.model_cfg})")


def resume_configs(
    run_dir: str | os.PathLike,
    *,
    model_overrides: dict[str, Any],
    train_overrides: dict[str, Any],
    data_overrides: dict[str, Any],
) -> tuple[ModelConfig, TrainConfig, DataConfig, str]:
    """The configs a resumed run continues with: the run's own (config.json), with training options the
    user changed. A changed model or data option is refused (it would silently train something else).
    A hand-edited or damaged config.json is refused with one ConfigError naming the file and the field.
    """
    path = Path(run_dir) / "config.json"
    try:
        f, _ = open_input(path)  # a regular file only: a FIFO planted there must not hang the resume
        with f:
            saved = json.loads(f.read().decode("utf-8"))
    except (DataError, OSError, ValueError, RecursionError):
        raise CheckpointError(f"{run_dir}: not a charnn run directory (config.json missing or unreadable)") from None
    try:
        model_cfg, data_cfg, train_dict, corpus = _saved_sections(saved)
        for cfg, overrides, what in ((model_cfg, model_overrides, "model"), (data_cfg, data_overrides, "data")):
            for key, value in overrides.items():
                if value is not None and getattr(cfg, key) != value:
                    raise ResumeMismatchError(
                        f"--resume: this run was trained with {key}={getattr(cfg, key)!r}, not {value!r}; "
                        f"{what} options cannot change on resume (start a new run instead)"
                    )
        saved_train = from_dict(TrainConfig, train_dict, where="train")
    except ResumeMismatchError:
        raise
    except ConfigError as err:
        raise ConfigError(f"{path}: {err} (the file was edited or damaged)") from None
    # the user's flags over the run's own: a bad flag is the flag's error, not the file's
    train_cfg = TrainConfig(**overlay_train(to_dict(saved_train), train_overrides))
    return model_cfg, train_cfg, data_cfg, corpus


def _saved_sections(saved: Any) -> tuple[ModelConfig, DataConfig, dict[str, Any], str]:
    """config.json's model and data configs, its training options and its corpus path, each checked."""
    if not isinstance(saved, dict):
        raise ConfigError("not a JSON object")
    for section in ("model", "train", "data", "corpus"):
        if not isinstance(saved.get(section), dict):
            raise ConfigError(f"{section} must be a JSON object, not {json.dumps(saved.get(section))[:40]}")
    corpus = saved["corpus"].get("path")
    if not isinstance(corpus, str) or not corpus:
        raise ConfigError(f"corpus.path must be the corpus file's path, not {json.dumps(corpus)[:40]}")
    return (
        from_dict(ModelConfig, saved["model"], where="model"),
        from_dict(DataConfig, saved["data"], where="data"),
        saved["train"],
        corpus,
    )


def _pair(loaded: LoadedModel, state: dict[str, Any]) -> tuple[LoadedModel, dict[str, Any]]:
    return loaded, state


def latest_resumable(run_dir: Path, apply: Callable[[LoadedModel, dict[str, Any]], T] = _pair) -> T:
    """`apply(model, state)` of the newest checkpoint whose model and state both verify and whose `apply` raises
    no CheckpointError (by default the pair itself); older ones are tried with a warning."""

    def load(path: Path) -> T:
        loaded = load_model(path)
        if loaded.meta.state_sha256 is None:
            raise CheckpointError(f"{path}: has no training state to resume from")
        return apply(loaded, load_state(state_path(path), loaded.meta.state_sha256))

    errors = []
    for path in list_checkpoints(run_dir)[::-1]:  # continuing is the point: an older good one will do
        try:
            return load(path)
        except ResumeMismatchError:  # another run's corpus or model: an older checkpoint differs the same way
            raise
        except CheckpointError as err:
            errors.append(str(err))
            warnings.warn(f"{err}; falling back to an earlier checkpoint", CharnnWarning, stacklevel=5)
    reason = f" ({errors[-1]})" if errors else ""
    raise CheckpointError(f"{run_dir}: no checkpoint to resume from{reason}")


def resume(
    run_dir: Path,
    model: CharRNN,
    optimizer: torch.optim.Optimizer,
    *,
    cfg: TrainConfig,
    data: Corpus,
    dist: DistInfo,
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
) -> LoopState:
    """Load the newest resumable checkpoint of `run_dir` (claimed: `charnn.store.runlock.claim_run`) into `model`,
    `optimizer` (and `scaler`); the loop state it saved.
    A checkpoint whose state does not fit (a damaged or hand-made file) is skipped with a warning, as one
    that fails to verify is; another corpus, vocabulary or model is refused at once."""

    def apply(loaded: LoadedModel, state: dict[str, Any]) -> LoopState:
        check_same_run(loaded, model.cfg, data.vocab, data.sha256)
        try:
            return _apply(loaded, state, model, optimizer, cfg=cfg, dist=dist, device=device, scaler=scaler)
        except CheckpointError as err:
            raise CheckpointError(f"{state_path(loaded.path)}: {err}") from None

    return latest_resumable(run_dir, apply)


def _apply(
    loaded: LoadedModel,
    state: dict[str, Any],
    model: CharRNN,
    optimizer: torch.optim.Optimizer,
    *,
    cfg: TrainConfig,
    dist: DistInfo,
    device: torch.device,
    scaler: torch.amp.GradScaler | None,
) -> LoopState:
    """Every piece of `state` into this process; CheckpointError for a piece that does not fit (the model and
    the optimizer may then be half-loaded: the caller loads an older checkpoint over them, or stops)."""
    hidden = carried_hidden(state, model.cfg, cfg)  # checked before anything is changed
    model.load_state_dict(loaded.model.state_dict())
    if state.get("unscaled"):  # --calibrate: the model file holds a logit scale folded in; training has none
        try:
            unfold(model, state["unscaled"])
        except (ValueError, TypeError, AttributeError) as err:
            raise CheckpointError(f"the saved output weights do not fit this model ({err})") from None
    # With --average the model file holds the average and the state the weights as trained (a run may also
    # turn the average on or off on resume: it then starts from the file's weights, or drops the average).
    average = WeightAverage(model, cfg.average) if cfg.average else None
    if state.get("trained"):
        load_trained(model, state["trained"])
    load_optimizer_state(optimizer, state["optimizer"])
    set_lr(optimizer, cfg.lr)  # the new peak lr may differ; the schedule sets each step's value
    try:
        if scaler is not None and state.get("scaler"):  # fp16: carry on at the loss scale it had reached
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as err:
        raise CheckpointError(f"unusable RNG or loss-scaler state ({type(err).__name__}: {err})") from None
    if hidden is not None:
        # fp32 on disk and here: a resume may change --precision or the device (bf16 -> fp32 is exact)
        hidden = rank_rows(tuple(h.to(device, torch.float32) for h in hidden), dist)  # this rank's streams
        hidden = hidden if model.cfg.model == "lstm" else hidden[0]
    return LoopState(
        step=state["step"],
        elapsed_before=float(state["elapsed"]),
        best_val=float(state.get("best_val", math.inf)),
        evals_since_best=state.get("evals_since_best", 0),
        hidden=hidden,
        best_step=state.get("best_step"),
        saved_step=state["step"],
        latest=loaded.path,
        average=average,
        logit_scale=float(state.get("logit_scale", 1.0)),
        scale_centre=float(state.get("scale_centre", 1.0)),
    )


def carried_hidden(state: dict[str, Any], model_cfg: ModelConfig, cfg: TrainConfig) -> tuple[torch.Tensor, ...] | None:
    """The streams' saved hidden state as a tuple of (layers, streams, hidden) tensors, or None: none saved,
    or the batches are laid out differently now. Another --batch-size, --seq-len or --seed puts other text in
    each row at this step, so the saved state is no longer the left context of its row: the streams start
    from a zero state (with a warning), as they do at each epoch's start."""
    saved = state.get("hidden")
    if saved is None:
        return None
    tensors = tuple(saved) if isinstance(saved, (list, tuple)) else (saved,)
    before = {"batch_size": tensors[0].shape[1], **(state.get("train_config") or {})}  # older states: the shape
    streams = before["batch_size"]
    shape = (model_cfg.layers, streams, model_cfg.hidden)
    count = 2 if model_cfg.model == "lstm" else 1  # an LSTM carries (h, c)
    if len(tensors) != count or any(tuple(t.shape) != shape for t in tensors):
        raise CheckpointError(
            f"the saved hidden state {[tuple(t.shape) for t in tensors]} does not fit this "
            f"{model_cfg.model} of {streams!r} streams ({count} x {shape} expected)"
        )
    changed = [
        f"--{k.replace('_', '-')} {before[k]} -> {getattr(cfg, k)}"
        for k in LAYOUT
        if k in before and before[k] != getattr(cfg, k)
    ]
    if changed:
        warnings.warn(
            f"{', '.join(changed)} since the checkpoint: the batches are laid out anew, so the "
            f"streams start from a zero state",
            CharnnWarning,
            stacklevel=2,
        )
        return None
    return tensors


__all__ = ["LAYOUT", "carried_hidden", "check_same_run", "latest_resumable", "resume", "resume_configs"]
