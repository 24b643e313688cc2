"""The run directory: where training writes its checkpoints (`step-NNNNNNNN.safetensors` beside its resume
state) and readable sidecars (config.json, vocab.json), and how a later command finds, chooses, prunes and
resumes them.

What is inside one model file, and how it is verified, is `charnn.checkpoint`'s work.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from charnn.checkpoint import LoadedModel, load_model, load_state, model_bytes, read_meta, state_bytes
from charnn.config import DataConfig, ModelConfig, TrainConfig, from_dict, overlay_train, to_dict
from charnn.data import Corpus, Vocab
from charnn.distributed import DistInfo
from charnn.errors import (
    CharnnWarning,
    CheckpointError,
    CheckpointWriteError,
    ConfigError,
    ResumeMismatchError,
)
from charnn.files import LineLog, atomic_write, remove_stale_temps
from charnn.model import CharRNN
from charnn.version import __version__

CKPT_RE = re.compile(r"^step-(\d{8,})\.safetensors$")
STATE_SUFFIX = ".state.pt"
T = TypeVar("T")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.safetensors"


def state_path(model_path: Path) -> Path:
    """The resume state saved beside a model file."""
    return model_path.with_name(model_path.stem + STATE_SUFFIX)


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint files of a run, oldest step first (temp files never match)."""
    run_dir = Path(run_dir)
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


# --- writing ----------------------------------------------------------------------------------------------

def save_checkpoint(run_dir: str | os.PathLike, model: CharRNN, vocab: Vocab, data_cfg: DataConfig, *,
                    step: int, val_loss: float | None, corpus_sha256: str, state: dict[str, Any] | None,
                    keep_last: int, corpus_path: str | None = None, corpus_cache: str | None = None,
                    train_cfg: TrainConfig | None = None) -> Path:
    """Write state then model (the model file is the commit record: it holds the state's sha256), then prune.

    The keywords are the model file's `CheckpointMeta` fields (`charnn.checkpoint.model_bytes`).
    """
    run_dir = Path(run_dir)
    for p in model.parameters():
        if not torch.isfinite(p).all():
            raise CheckpointError("refusing to save a checkpoint with non-finite parameters")
    path = run_dir / checkpoint_name(step)
    state_sha256 = None
    if state is not None:
        blob = state_bytes(state)
        atomic_write(state_path(path), blob)
        state_sha256 = hashlib.sha256(blob).hexdigest()
    try:
        atomic_write(path, model_bytes(model, vocab, data_cfg, step=step, val_loss=val_loss,
                                       corpus_sha256=corpus_sha256, corpus_path=corpus_path,
                                       corpus_cache=corpus_cache, train_cfg=train_cfg, state_sha256=state_sha256))
    except CheckpointWriteError:
        if state is not None:  # a state without its model file is no checkpoint: give the full disk its space back
            state_path(path).unlink(missing_ok=True)
        raise
    prune(run_dir, keep_last=keep_last)
    return path


def prune(run_dir: str | os.PathLike, *, keep_last: int) -> list[Path]:
    """Keep the newest `keep_last` checkpoints plus the best by validation loss (never a NaN); delete the rest."""
    ckpts = list_checkpoints(run_dir)
    keep = set(ckpts[-keep_last:])
    best = best_checkpoint(ckpts)
    if best is not None:
        keep.add(best)
    removed = []
    for p in ckpts:
        if p not in keep:
            for victim in (p, state_path(p)):
                try:
                    victim.unlink(missing_ok=True)
                except OSError:
                    pass
            removed.append(p)
    return removed


def write_run_files(run_dir: Path, data: Corpus, model_cfg: ModelConfig, cfg: TrainConfig, *,
                    plan: dict[str, Any] | None = None, init_from: dict[str, Any] | None = None) -> None:
    """The human-readable sidecars: config.json (also what `--resume` continues with) and vocab.json.
    Loading a model never depends on them. A resumed run keeps the plan, and the record of the weights it
    started from (`init_from`: run, checkpoint, step, sha256), that its config.json holds."""
    try:  # a directory without checkpoints holds no run to continue: nothing of its config.json is kept
        before = json.loads((run_dir / "config.json").read_text()) if list_checkpoints(run_dir) else {}
    except (OSError, ValueError):
        before = {}
    before = before if isinstance(before, dict) else {}
    plan = plan or before.get("plan")
    init_from = init_from or before.get("init_from")
    config = {
        "charnn_version": __version__,
        "torch_version": torch.__version__,
        "model": to_dict(model_cfg),
        "train": to_dict(cfg),
        "data": to_dict(data.data),
        "corpus": {"path": str(Path(data.path).resolve()), "sha256": data.sha256, "chars": len(data.ids)},
        "vocab_size": len(data.vocab),
        **({"init_from": init_from} if init_from else {}),
        **({"plan": plan} if plan else {}),
    }
    atomic_write(run_dir / "config.json", (json.dumps(config, indent=2) + "\n").encode())
    atomic_write(run_dir / "vocab.json", (data.vocab.to_json() + "\n").encode())


def new_run_dir(run_dir: Path, dist: DistInfo) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a run directory")
    if run_dir.exists() and list_checkpoints(run_dir):
        raise ConfigError(f"{run_dir} already holds a run; pass --resume {run_dir} or choose another --out")
    if dist.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CheckpointWriteError(f"cannot create the run directory {run_dir}: {err.strerror}") from None
        remove_stale_temps(run_dir)


def open_logs(run_dir: Path, dist: DistInfo) -> tuple[LineLog, LineLog]:
    """metrics.jsonl and samples.jsonl, appended to whole lines at a time; rank 0 alone writes them."""
    metrics = LineLog(run_dir / "metrics.jsonl" if dist.is_main else None, what="metrics log")
    try:
        samples = LineLog(run_dir / "samples.jsonl" if dist.is_main else None, what="samples log")
    except BaseException:
        metrics.close()
        raise
    return metrics, samples


def check_same_run(loaded: LoadedModel, model_cfg: ModelConfig, vocab, corpus_sha256: str) -> None:
    if loaded.corpus_sha256 != corpus_sha256:
        raise ResumeMismatchError("--resume: the corpus differs from the one this run was trained on "
                                  "(sha256 mismatch); resume with the original file or start a new run")
    if loaded.vocab != vocab:
        raise ResumeMismatchError("--resume: the vocabulary differs from the run's")
    if loaded.model_cfg != model_cfg:
        raise ResumeMismatchError(f"--resume: the model config differs from the run's ({loaded.model_cfg})")


# --- finding and choosing -----------------------------------------------------------------------------------

def best_checkpoint(ckpts: list[Path]) -> Path | None:
    best, best_val = None, math.inf
    for p in ckpts:
        try:
            val = read_meta(p).val_loss
        except CheckpointError:
            continue
        if val is not None and math.isfinite(val) and val < best_val:
            best, best_val = p, val
    return best


def find_runs(root: str | os.PathLike = "checkpoints") -> list[Path]:
    """Run directories under `root`, most recently written first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [d for d in root.iterdir() if d.is_dir() and list_checkpoints(d)]
    return sorted(runs, key=lambda d: max(p.stat().st_mtime for p in list_checkpoints(d)), reverse=True)


def candidates(target: str | os.PathLike | None, which: str = "best") -> list[Path]:
    """Model files to try, in order of preference, for a run directory, a file, or (None) the newest run."""
    if target is None:
        runs = find_runs()
        if not runs:
            raise CheckpointError("no runs found under checkpoints/; train one first or pass a run directory")
        target = runs[0]
    target = Path(target)
    if not target.exists():
        raise CheckpointError(f"{target}: no such run directory or checkpoint file")
    if target.is_file():
        return [target]
    ckpts = list_checkpoints(target)
    if not ckpts:
        raise CheckpointError(f"{target}: no checkpoints in this directory (is it a charnn run?)")
    newest_first = ckpts[::-1]
    if which == "latest":
        return newest_first
    if which != "best":
        raise CheckpointError(f"--which must be best or latest, not {which!r}")
    best = best_checkpoint(ckpts)
    return ([best] if best else []) + [p for p in newest_first if p != best]


def _first_usable(paths: list[Path], load: Callable[[Path], T], *, then: str, stacklevel: int
                  ) -> tuple[T | None, list[str]]:
    """`load` of the first path that verifies, and the errors of those before it (each also a warning that
    ends with `then`); None when none does."""
    errors = []
    for path in paths:
        try:
            return load(path), errors
        except CheckpointError as err:
            errors.append(str(err))
            warnings.warn(f"{err}; {then}", CharnnWarning, stacklevel=stacklevel + 1)
    return None, errors


def load_run(target: str | os.PathLike | None = None, *, which: str = "best",
             device: torch.device | str = "cpu") -> LoadedModel:
    """Load the preferred checkpoint of a run; one that fails to verify is skipped with a warning."""
    tried = candidates(target, which)
    if len(tried) == 1:  # nothing to fall back to: its own error says most
        return load_model(tried[0], device=device)
    loaded, errors = _first_usable(tried, lambda p: load_model(p, device=device),
                                   then="trying an earlier checkpoint", stacklevel=2)
    if loaded is None:
        raise CheckpointError(f"no usable checkpoint: {errors[-1] if errors else 'none found'}")
    return loaded


# --- resuming -------------------------------------------------------------------------------------------

def resume_configs(run_dir: str | os.PathLike, *, model_overrides: dict[str, Any],
                   train_overrides: dict[str, Any], data_overrides: dict[str, Any]
                   ) -> tuple[ModelConfig, TrainConfig, DataConfig, str]:
    """The configs a resumed run continues with: the run's own (config.json), with training options the
    user changed. A changed model or data option is refused (it would silently train something else).
    """
    run_dir = Path(run_dir)
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"{run_dir}: not a charnn run directory (config.json missing or unreadable)") from None
    model_cfg = from_dict(ModelConfig, saved.get("model", {}))
    data_cfg = from_dict(DataConfig, saved.get("data", {}))
    for cfg, overrides, what in ((model_cfg, model_overrides, "model"), (data_cfg, data_overrides, "data")):
        for key, value in overrides.items():
            if value is not None and getattr(cfg, key) != value:
                raise ResumeMismatchError(
                    f"--resume: this run was trained with {key}={getattr(cfg, key)!r}, not {value!r}; "
                    f"{what} options cannot change on resume (start a new run instead)")
    train_dict = overlay_train(saved.get("train", {}), train_overrides)
    return model_cfg, from_dict(TrainConfig, train_dict), data_cfg, saved.get("corpus", {}).get("path", "")


def latest_resumable(run_dir: Path) -> tuple[LoadedModel, dict[str, Any]]:
    """The newest checkpoint whose model and state both verify; older ones are tried with a warning."""

    def load(path: Path) -> tuple[LoadedModel, dict[str, Any]]:
        loaded = load_model(path)
        if loaded.meta.state_sha256 is None:
            raise CheckpointError(f"{path}: has no training state to resume from")
        return loaded, load_state(state_path(path), loaded.meta.state_sha256)

    found, errors = _first_usable(list_checkpoints(run_dir)[::-1], load,
                                  then="falling back to an earlier checkpoint", stacklevel=5)
    if found is None:
        reason = f" ({errors[-1]})" if errors else ""
        raise CheckpointError(f"{run_dir}: no checkpoint to resume from{reason}")
    return found
