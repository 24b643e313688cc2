"""Durable file writes: a crash leaves the old file or the new one, never a mix; and the cleanup of the temp
files an interrupted write leaves behind. Used by checkpoints, run sidecars, the corpus cache and the report.
Nothing here knows what the files hold.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

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


TEMP_RE = re.compile(r"^\.(.+)\.(\d+)\.tmp$")  # what _temp_path makes: the target's name, then a pid


def _temp_path(path: Path) -> Path:
    """Where a write to `path` goes first: a hidden name in the same directory that no reader takes for it."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temp file beside `path` for writing; when the block ends normally, flush, fsync, rename it over
    `path` and fsync the directory.

    If the block raises (anything, OSError included) the temp file is removed, `path` is untouched and the
    exception propagates as it was: the caller words the error for its kind of file.
    """
    path = Path(path)
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def atomic_write(path: str | os.PathLike, data: bytes, *, what: str = "checkpoint") -> None:
    """Write `data` to `path` through `atomic_file`. On any OSError the old file is untouched and
    CheckpointWriteError says so (`what` names the kind of file in that message)."""
    path = Path(path)
    try:
        with atomic_file(path) as f:
            f.write(data)
    except OSError as err:
        raise CheckpointWriteError(
            f"{what} write failed (disk full?): {path}: {err.strerror or err}") from None


def remove_stale_temps(directory: str | os.PathLike, *, owned: Callable[[str], bool] | None = None) -> list[Path]:
    """Delete temp files left by an interrupted write (they are never taken for the files they replace): only
    names `_temp_path` makes, `.{name}.{pid}.tmp`, and of those only the ones whose `name` is `owned` when
    given; a user's `.notes.tmp` is not ours to delete."""
    removed = []
    for tmp in Path(directory).glob(".*.tmp"):
        match = TEMP_RE.match(tmp.name)
        if match is None or (owned is not None and not owned(match.group(1))):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed
