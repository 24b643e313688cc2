"""The run directory: where training writes its checkpoints (`step-NNNNNNNN.safetensors` beside its resume
state) and readable sidecars (config.json, vocab.json), and how a later command finds, chooses and prunes them;
a name that is no path stands for a bundled model (`charnn.store.bundled`).

How one checkpoint (a model file and its training state) is written, read and verified is
`charnn.store.checkpoint`'s work; continuing a run is `charnn.training.resume`'s.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from charnn.config import DataConfig, ModelConfig, TrainConfig, to_dict
from charnn.data import Corpus, Vocab
from charnn.errors import CheckpointError
from charnn.model import CharRNN
from charnn.store.bundled import bundled_path
from charnn.store.checkpoint import LoadedModel, load_model, read_meta, write_checkpoint
from charnn.store.files import LineLog, atomic_write
from charnn.version import __version__

if TYPE_CHECKING:  # training's modules: loading a model for `charnn sample` does without them
    from charnn.distributed import DistInfo

CKPT_RE = re.compile(r"^step-(\d{8,})\.safetensors$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.safetensors"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint files of a run, oldest step first (temp files never match)."""
    run_dir = Path(run_dir)
    try:
        found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := CKPT_RE.match(p.name))]
    except OSError as err:
        raise CheckpointError(f"{run_dir}: cannot list the run directory ({err.strerror})") from None
    return [p for _, p in sorted(found)]


# --- saving into a run, pruning, the sidecars ---------------------------------------------------------------------


def save_checkpoint(
    run_dir: str | os.PathLike,
    model: CharRNN,
    vocab: Vocab,
    data_cfg: DataConfig,
    *,
    step: int,
    keep_last: int,
    **fields: Any,
) -> Path:
    """Write the checkpoint of `step` into the run (`charnn.store.checkpoint.write_checkpoint`, which takes the
    other keywords), then prune the run to the last `keep_last` plus the best: only once the new file is durable."""
    path = Path(run_dir) / checkpoint_name(step)
    write_checkpoint(path, model, vocab, data_cfg, step=step, owner=run_dir, **fields)
    prune(run_dir, keep_last=keep_last)
    return path


def prune(run_dir: str | os.PathLike, *, keep_last: int) -> list[Path]:
    """Keep the newest `keep_last` checkpoints plus the best by validation loss (never a NaN); delete the rest."""
    from charnn.store.trainstate import state_path

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


def write_run_files(
    run_dir: Path,
    data: Corpus,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    *,
    plan: dict[str, Any] | None = None,
    init_from: dict[str, Any] | None = None,
) -> None:
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
    atomic_write(run_dir / "config.json", (json.dumps(config, indent=2) + "\n").encode(), owner=run_dir)
    atomic_write(run_dir / "vocab.json", (data.vocab.to_json() + "\n").encode(), owner=run_dir)


def open_logs(run_dir: Path, dist: DistInfo) -> tuple[LineLog, LineLog]:
    """metrics.jsonl and samples.jsonl, appended to whole lines at a time; rank 0 alone writes them."""
    metrics = LineLog(run_dir / "metrics.jsonl" if dist.is_main else None, what="metrics log", owner=run_dir)
    try:
        samples = LineLog(run_dir / "samples.jsonl" if dist.is_main else None, what="samples log", owner=run_dir)
    except BaseException:
        metrics.close()
        raise
    return metrics, samples


# --- finding and choosing -----------------------------------------------------------------------------------


def _vanished(path: Path) -> bool:
    """Pruned by a training since it was listed: gone, which is not damaged."""
    return not os.path.lexists(path)


def best_checkpoint(
    ckpts: list[Path], *, unreadable: Callable[[Path, CheckpointError], None] | None = None
) -> Path | None:
    """The checkpoint with the lowest finite validation loss. A file whose label cannot be read is passed over
    (pruning's view), or handed to `unreadable` (it could have been the best) unless it vanished meanwhile."""
    best, best_val = None, math.inf
    for p in ckpts:
        try:
            val = read_meta(p).val_loss
        except CheckpointError as err:
            if unreadable is not None and not _vanished(p):
                unreadable(p, err)
            continue
        if val is not None and math.isfinite(val) and val < best_val:
            best, best_val = p, val
    return best


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # pruned since it was listed
        return 0.0


def _listed(run_dir: Path) -> list[Path]:
    try:
        return list_checkpoints(run_dir)
    except CheckpointError:  # a directory we may not read is no run to choose
        return []


def find_runs(root: str | os.PathLike = "checkpoints") -> list[Path]:
    """Run directories under `root`, most recently written first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [(d, ckpts) for d in root.iterdir() if d.is_dir() and (ckpts := _listed(d))]
    runs.sort(key=lambda run: max(_mtime(p) for p in run[1]), reverse=True)
    return [d for d, _ in runs]


def _run_target(target: str | os.PathLike | None) -> Path:
    if target is None:
        runs = find_runs()
        if not runs:
            raise CheckpointError("no runs found under checkpoints/; train one first or pass a run directory")
        target = runs[0]
    target = Path(target)
    if not target.exists():  # an existing path always wins over a bundled model's name
        bundled = bundled_path(str(target))
        if bundled is None:
            raise CheckpointError(
                f"{target}: no such run directory, checkpoint file or bundled model (`charnn models` lists them)"
            )
        target = bundled
    if not target.is_dir() and not target.is_file():  # reading a pipe or a device could wait forever
        raise CheckpointError(f"{target}: not a run directory or checkpoint file (a device, pipe or socket)")
    return target


def choose_checkpoint(run_dir: Path, which: str = "best", *, which_flag: bool = True) -> Path:
    """The one checkpoint a run's answer belongs to: the lowest validation loss (the newest when none has one),
    or the newest. A file whose label cannot be read could be the best: it is named, not skipped."""
    if which not in ("best", "latest"):
        raise CheckpointError(f"--which must be best or latest, not {which!r}")
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise CheckpointError(f"{run_dir}: no checkpoints in this directory (is it a charnn run?)")
    if which == "latest":
        return ckpts[-1]

    def unknown(path: Path, err: CheckpointError) -> None:
        raise CheckpointError(
            f"{err}; without its validation loss the best checkpoint is unknown; "
            f"{_instead(path, ckpts, 'best', which_flag)}"
        ) from None

    best = best_checkpoint(ckpts, unreadable=unknown)
    return best or next((p for p in reversed(ckpts) if not _vanished(p)), ckpts[-1])


def _instead(damaged: Path, ckpts: list[Path], which: str, which_flag: bool) -> str:
    """How to use another checkpoint than a damaged one: --which latest where that is another file, or a file."""
    ways = ["pass --which latest"] if which_flag and which == "best" and damaged != ckpts[-1] else []
    others = [p for p in ckpts if p != damaged and not _vanished(p)]
    if others:
        ways.append(f"name a checkpoint file such as {others[-1]}")
    return "to use another checkpoint, " + " or ".join(ways) if ways else "the run has no other checkpoint"


def load_run(
    target: str | os.PathLike | None = None,
    *,
    which: str = "best",
    device: torch.device | str = "cpu",
    which_flag: bool = True,
) -> LoadedModel:
    """Load the checkpoint a run's answer belongs to (`choose_checkpoint`), verified; never another in its place.

    A damaged choice raises CheckpointError naming the file and how to use another (`which_flag`: whether the
    command has --which). A training that prunes the run meanwhile only makes the choice again.
    """
    target = _run_target(target)
    if target.is_file():
        if which == "latest":  # it would be silently ignored: the file is the choice
            raise CheckpointError(f"--which latest chooses within a run directory; {target} is one checkpoint file")
        return load_model(target, device=device)
    for attempt in range(3):  # a training pruning the run meanwhile: choose again
        path = choose_checkpoint(target, which, which_flag=which_flag)
        try:
            return load_model(path, device=device)
        except CheckpointError as err:
            if attempt < 2 and _vanished(path):
                continue
            raise CheckpointError(
                f"{err}; it is the run's {which} checkpoint; "
                f"{_instead(path, list_checkpoints(target), which, which_flag)}"
            ) from None
