"""Who may write a run directory: a new run's --out is refused when it holds a run or files charnn did not
write; a training holds the run's lock for its life (a second training of the same run is refused); temp files
of interrupted writes are removed, and only charnn's own. Not what the files hold (charnn.store.rundir).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from charnn.distributed import DistInfo
from charnn.errors import CharnnWarning, CheckpointError, ConfigError
from charnn.store.files import TEMP_RE, is_run_dir, outside_runs, remove_stale_temps, write_error
from charnn.store.rundir import CKPT_RE, list_checkpoints
from charnn.store.trainstate import STATE_SUFFIX

RUN_FILES = frozenset({"config.json", "vocab.json", "metrics.jsonl", "samples.jsonl", "report.html", ".lock"})


def is_run_file(name: str) -> bool:
    """A name charnn writes in a run directory: a checkpoint, its training state, a sidecar, a log, the lock."""
    if name.endswith(STATE_SUFFIX):
        name = name[: -len(STATE_SUFFIX)] + ".safetensors"
    return name in RUN_FILES or CKPT_RE.match(name) is not None


def _foreign_file(run_dir: Path) -> str | None:
    """The first entry of `run_dir` that charnn did not write, or None. A run's files count only beside the
    config.json of a charnn run (someone's own vocab.json is not a run); the lock and temp files alone do."""
    names = sorted(p.name for p in run_dir.iterdir())
    for name in names:
        temp = TEMP_RE.match(name)
        if not is_run_file(temp.group(1) if temp else name):
            return name
    written = [name for name in names if name != ".lock" and not TEMP_RE.match(name)]
    if not written:
        return None
    return None if is_run_dir(run_dir) else min(written)


def new_run_dir(run_dir: Path, dist: DistInfo, held: ExitStack) -> None:
    """Refuse an --out that holds a run or files of the user's (`check_new_run_dir`); create it, take its lock
    (rank 0, for as long as `held` lasts) and remove temp files an interrupted write left."""
    check_new_run_dir(run_dir)
    if dist.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_error(
                err, run_dir, "run directory", failed=f"cannot create the run directory {run_dir}"
            ) from None
        held.enter_context(lock_run(run_dir))
        _refuse_a_run(run_dir)  # again, now that no other training can write one
        remove_stale_temps(run_dir, owned=is_run_file)


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse an --out a new run cannot take: a file, a directory holding a run or files of the user's, or a
    place inside another run. Writes nothing (`charnn train --plan` checks this too)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a run directory")
    try:
        foreign = _foreign_file(run_dir) if run_dir.exists() else None
    except OSError as err:
        raise ConfigError(f"--out {run_dir}: cannot read the directory ({err.strerror})") from None
    if foreign is not None:
        raise ConfigError(
            f"--out {run_dir} holds {foreign}, which is not a charnn run's; choose a new or empty directory"
        )
    _refuse_a_run(run_dir)
    outside_runs(run_dir, what=f"--out {run_dir}")  # never a run inside another run


def _refuse_a_run(run_dir: Path) -> None:
    if run_dir.exists() and list_checkpoints(run_dir):
        raise ConfigError(f"{run_dir} already holds a run; pass --resume {run_dir} or choose another --out")


def claim_run(run_dir: Path, dist: DistInfo, held: ExitStack) -> None:
    """Before resuming: rank 0 takes the run's lock, then removes temp files an interrupted write left (after:
    another training's temp files are its own)."""
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory to resume")
    if dist.is_main:  # another rank's cleanup could delete rank 0's file mid-write
        held.enter_context(lock_run(run_dir))
        remove_stale_temps(run_dir, owned=is_run_file)


@contextmanager
def lock_run(run_dir: Path) -> Iterator[None]:
    """Hold RUN/.lock exclusively while a training writes the run: a second training of it is refused (two would
    write every log line twice and prune each other's checkpoints). No lock where fcntl is missing (Windows):
    one warning says so, once per process."""
    try:
        import fcntl
    except ImportError:
        _warn_unlocked()
        yield
        return
    try:
        f = open(run_dir / ".lock", "a+", encoding="utf-8")
    except OSError as err:
        raise write_error(err, run_dir / ".lock", "run lock", failed=f"cannot create {run_dir / '.lock'}") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip()
            by = f" (process {holder})" if holder.isdigit() else ""
            raise ConfigError(
                f"{run_dir} is being trained by another process{by}; wait for it to end or choose another --out"
            ) from None
        except OSError:  # a file system without locks: train unlocked
            pass
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


@functools.cache
def _warn_unlocked() -> None:
    warnings.warn(
        "no run lock on this system (Python has no fcntl here): never train the same run in two processes at once",
        CharnnWarning,
        stacklevel=2,
    )
