"""Durable file writes: a crash leaves the old file or the new one, never a mix; and the cleanup of the temp
files an interrupted write leaves behind. Used by checkpoints, run sidecars and the corpus cache.
"""

from __future__ import annotations

import os
from pathlib import Path

from charnn.errors import CheckpointWriteError


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes, *, what: str = "checkpoint") -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one, never a mix.

    Temp file in the same directory, flush, fsync, os.replace, fsync of the directory. On any OSError the
    temp file is removed, the old file is untouched, and CheckpointWriteError says so (`what` names the
    kind of file in that message).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise CheckpointWriteError(
            f"{what} write failed (disk full?): {path}: {err.strerror or err}") from None


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete temp files left by an interrupted write; they are never taken as checkpoints."""
    removed = []
    for tmp in Path(directory).glob(".*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed
