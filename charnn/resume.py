"""Continuing a run: the newest checkpoint whose files verify and whose training state fits this run, applied
to the model, the optimizer, the loss scaler, the RNGs and the streams' hidden state. Not which configs a
resumed run trains with (`charnn.rundir.resume_configs`) nor the loop it continues (`charnn.trainloop`).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch

from charnn.checkpoint import LoadedModel
from charnn.config import ModelConfig, TrainConfig
from charnn.data import Corpus
from charnn.distributed import DistInfo, rank_rows
from charnn.errors import CharnnWarning, CheckpointError
from charnn.model import CharRNN
from charnn.rundir import check_same_run, latest_resumable, state_path
from charnn.runtime import set_rng_state
from charnn.trainloop import LoopState
from charnn.trainstep import load_optimizer_state, set_lr

# The options that decide which text each row of a batch holds (`charnn.batches.StreamBatcher`).
LAYOUT = ("batch_size", "seq_len", "seed")


def resume(run_dir: Path, model: CharRNN, optimizer: torch.optim.Optimizer, *, cfg: TrainConfig, data: Corpus,
           dist: DistInfo, device: torch.device, scaler: torch.amp.GradScaler | None = None) -> LoopState:
    """Load the newest resumable checkpoint of `run_dir` (claimed: `charnn.runlock.claim_run`) into `model`,
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


def _apply(loaded: LoadedModel, state: dict[str, Any], model: CharRNN, optimizer: torch.optim.Optimizer, *,
           cfg: TrainConfig, dist: DistInfo, device: torch.device,
           scaler: torch.amp.GradScaler | None) -> LoopState:
    """Every piece of `state` into this process; CheckpointError for a piece that does not fit (the model and
    the optimizer may then be half-loaded: the caller loads an older checkpoint over them, or stops)."""
    hidden = carried_hidden(state, model.cfg, cfg)  # checked before anything is changed
    model.load_state_dict(loaded.model.state_dict())
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
    return LoopState(step=state["step"], elapsed_before=float(state["elapsed"]),
                     best_val=float(state.get("best_val", math.inf)),
                     evals_since_best=state.get("evals_since_best", 0), hidden=hidden,
                     best_step=state.get("best_step"), saved_step=state["step"], latest=loaded.path)


def carried_hidden(state: dict[str, Any], model_cfg: ModelConfig, cfg: TrainConfig
                   ) -> tuple[torch.Tensor, ...] | None:
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
        raise CheckpointError(f"the saved hidden state {[tuple(t.shape) for t in tensors]} does not fit this "
                              f"{model_cfg.model} of {streams!r} streams ({count} x {shape} expected)")
    changed = [f"--{k.replace('_', '-')} {before[k]} -> {getattr(cfg, k)}" for k in LAYOUT
               if k in before and before[k] != getattr(cfg, k)]
    if changed:
        warnings.warn(f"{', '.join(changed)} since the checkpoint: the batches are laid out anew, so the "
                      f"streams start from a zero state", CharnnWarning, stacklevel=2)
        return None
    return tensors


__all__ = ["LAYOUT", "carried_hidden", "resume"]
