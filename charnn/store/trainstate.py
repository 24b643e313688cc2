"""The training state saved beside each model file for resuming (`step-NNNNNNNN.state.pt`): what it records
(`training_state`: step, clock, best loss, optimizer, RNGs, the streams' hidden state, the weights as trained
where the model file holds their average), its bytes (`torch.save`), and loading it back with
`torch.load(weights_only=True)` only, its structure checked before any of it is used.
Applying it to a model and an optimizer is `charnn.training.resume`'s work.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from pathlib import Path
from typing import Any

import torch

from charnn.config import TrainConfig, to_dict
from charnn.errors import CheckpointError
from charnn.runtime import rng_state

STATE_SUFFIX = ".state.pt"


def state_path(model_path: Path) -> Path:
    """The training state saved beside a model file."""
    return model_path.with_name(model_path.stem + STATE_SUFFIX)


def training_state(
    step: int,
    elapsed: float,
    best_val: float,
    optimizer: torch.optim.Optimizer,
    hidden,
    cfg: TrainConfig,
    evals_since_best: int = 0,
    best_step: int | None = None,
    scaler: torch.amp.GradScaler | None = None,
    trained: dict[str, torch.Tensor] | None = None,
    *,
    logit_scale: float = 1.0,
    scale_centre: float = 1.0,
    unscaled: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Everything besides the model file's weights that an exact resume needs: tensors and primitives only.
    `trained`: the weights as trained, where the model file holds their average (--average); `unscaled`: the
    tensors the model file holds with `logit_scale` folded in, as they were before, and `scale_centre` the scale
    the next validation fits around (--calibrate: `charnn.calibration`)."""
    if isinstance(hidden, tuple):
        hidden = [h.detach().float().cpu() for h in hidden]
    elif hidden is not None:
        hidden = hidden.detach().float().cpu()
    return {
        "step": step,
        "elapsed": elapsed,
        "best_val": best_val,
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "hidden": hidden,
        "train_config": to_dict(cfg),
        "evals_since_best": evals_since_best,
        "best_step": best_step,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "trained": {name: w.detach().cpu() for name, w in trained.items()} if trained is not None else None,
        "logit_scale": logit_scale,
        "scale_centre": scale_centre,
        "unscaled": {name: w.detach().cpu() for name, w in unscaled.items()} if unscaled else None,
    }


def state_bytes(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def load_state(path: str | os.PathLike, expected_sha256: str | None = None) -> dict[str, Any]:
    """Resume state: tensors and primitives only, loaded with weights_only=True and no fallback."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read training state ({err.strerror})") from None
    if expected_sha256 is not None and hashlib.sha256(blob).hexdigest() != expected_sha256:
        raise CheckpointError(f"{path}: checksum mismatch in training state: the file is corrupt")
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses anything but tensors and plain containers
        raise CheckpointError(f"{path}: unreadable training state ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: training state is not a dictionary")
    problem = _state_problem(state)
    if problem:
        raise CheckpointError(f"{path}: unusable training state ({problem})")
    return state


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _state_problem(state: dict[str, Any]) -> str | None:
    """What is wrong with the structure of a training state (None: nothing), checked before any of it is applied:
    a state whose checksum matches can still have been written by hand or by another program. Whether its
    tensors fit the model is checked where they are applied (`charnn.training.train`)."""
    for key in ("step", "elapsed", "optimizer", "rng"):
        if key not in state:
            return f"no {key!r}"
    if not _count(state["step"]):
        return f"step {state['step']!r} is not a step number"
    for key in ("elapsed", "best_val"):
        if key in state and not (_real(state[key]) and not math.isnan(state[key]) and state[key] >= 0):
            return f"{key} {state[key]!r} is not a number of seconds or nats"
    if not math.isfinite(state["elapsed"]):  # best_val may be inf (no validation yet); a clock may not
        return f"elapsed {state['elapsed']!r} is not a number of seconds"
    if "evals_since_best" in state and not _count(state["evals_since_best"]):
        return f"evals_since_best {state['evals_since_best']!r} is not a count"
    for key in ("logit_scale", "scale_centre"):
        if key in state and not (_real(state[key]) and 0 < state[key] < math.inf):
            return f"{key} {state[key]!r} is not a positive number"
    if state.get("best_step") is not None and not _count(state["best_step"]):
        return f"best_step {state['best_step']!r} is not a step number"
    optimizer = state["optimizer"]
    if (
        not isinstance(optimizer, dict)
        or not isinstance(optimizer.get("state"), dict)
        or not isinstance(optimizer.get("param_groups"), list)
        or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in optimizer["param_groups"])
    ):
        return "the optimizer state is not an optimizer's"
    rng = state["rng"]
    python = rng.get("python") if isinstance(rng, dict) else None
    if (
        not isinstance(python, (list, tuple))
        or len(python) != 3
        or not isinstance(python[1], (list, tuple))
        or not torch.is_tensor(rng.get("torch"))
        or rng["torch"].dtype != torch.uint8
    ):
        return "the RNG state is not charnn's"
    hidden = state.get("hidden")
    tensors = list(hidden) if isinstance(hidden, (list, tuple)) else [] if hidden is None else [hidden]
    if (hidden is not None and not tensors) or not all(
        torch.is_tensor(t) and t.is_floating_point() and t.dim() == 3 for t in tensors
    ):
        return "the hidden state is not (layers, streams, hidden) tensors"
    for key in ("train_config", "scaler"):
        if state.get(key) is not None and not isinstance(state[key], dict):
            return f"{key} is not a dictionary"
    trained = state.get("trained")
    if trained is not None and (
        not isinstance(trained, dict) or not all(torch.is_tensor(w) and w.is_floating_point() for w in trained.values())
    ):
        return "the trained weights are not a model's"
    return None
