"""Durable file writes: a crash leaves the old file or the new one, never a mix; append-only logs whose lines are
never torn; and the cleanup of the temp files an interrupted write leaves behind. Every write here goes to a
regular file only: a device (/dev/null), a FIFO, a socket or a directory at an output path is refused, never
replaced. Used by checkpoints, run sidecars and logs, the corpus cache, the report and exports. Nothing here knows
what the files hold.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from charnn.errors import CheckpointWriteError, OutputPathError

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


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


def output_target(path: str | os.PathLike) -> Path:
    """The file a write to `path` lands in: `path`, or the file a symbolic link at `path` points to (written
    through, as the shell's `>` does, so a link to a file elsewhere keeps working and stays a link).

    Raises OutputPathError when that exists and is not a regular file: renaming over /dev/null as root, or over
    a FIFO someone reads, would destroy it. A path that cannot be examined is left for the write to report.
    """
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return target
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        via = f" (a link to {target})" if target != path else ""
        raise OutputPathError(
            f"{path}{via} is {kind}; charnn writes only regular files and never replaces "
            f"anything else: give a file name"
        )
    return target


def _temp_path(path: Path) -> Path:
    """Where a write to `path` goes first: a hidden name in the same directory that no reader takes for it."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temp file beside `path` for writing; when the block ends normally, flush, fsync, rename it over
    `path` and fsync the directory.

    `path` must be a regular file, a new name, or a link to either (then the linked file is replaced): anything
    else raises OutputPathError (a CheckpointWriteError, exit code 2) before and again just before the rename.
    If the block raises (anything, OSError included) the temp file is removed, `path` is untouched and the
    exception propagates as it was: the caller words the error for its kind of file.
    """
    target = output_target(path)
    tmp = _temp_path(target)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        target = output_target(path)  # the block may have taken minutes: the path is checked again
        os.replace(tmp, target)
        fsync_dir(target.parent)
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
        raise CheckpointWriteError(f"{what} write failed (disk full?): {path}: {err.strerror or err}") from None


def _log_flags() -> int:
    """os.open's flags for a log. O_NONBLOCK: a FIFO swapped in after the check fails the open instead of waiting
    for a reader. Windows has neither it nor O_CLOEXEC, and needs O_BINARY to write "\\n" as it is."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    for name in ("O_NONBLOCK", "O_CLOEXEC", "O_BINARY"):
        flags |= getattr(os, name, 0)
    return flags


class LineLog:
    """An append-only log of whole lines (metrics.jsonl, samples.jsonl). Each `write` is one record, written
    with one system call; a write that fails (disk full, file too large) is cut back off the file, so the log
    never ends in a torn line, and raises CheckpointWriteError. `path=None` discards everything (the ranks of a
    distributed run that do not log)."""

    def __init__(self, path: str | os.PathLike | None, *, what: str) -> None:
        self.path, self.what, self.fd, self.size = path, what, None, 0
        if path is None:
            return
        target = output_target(path)
        try:
            self.fd = os.open(target, _log_flags(), 0o644)
            info = os.fstat(self.fd)
        except OSError as err:
            self.close()
            raise CheckpointWriteError(f"cannot open the {what} {path}: {err.strerror or err}") from None
        if not stat.S_ISREG(info.st_mode):
            self.close()
            output_target(path)  # raises OutputPathError naming the kind
            raise OutputPathError(f"{path} is not a regular file; charnn writes only regular files")
        self.size = info.st_size

    def write(self, text: str) -> None:
        if self.fd is None:
            return
        data = text.encode("utf-8")
        try:
            rest = memoryview(data)
            while rest:
                rest = rest[os.write(self.fd, rest) :]
        except OSError as err:
            try:
                os.ftruncate(self.fd, self.size)  # the part of the line that did get written
            except OSError:
                pass
            raise CheckpointWriteError(
                f"{self.what} write failed (disk full?): {self.path}: {err.strerror or err}"
            ) from None
        self.size += len(data)

    def flush(self) -> None:
        """Nothing to do: every `write` went to the file whole."""

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def remove_stale_temps(directory: str | os.PathLike, *, owned: Callable[[str], bool] | None = None) -> list[Path]:
    """Delete temp files left by an interrupted write (they are never taken for the files they replace): only
    names `_temp_path` makes, `.{name}.{pid}.tmp`, and of those only the ones whose `name` is `owned` when
    given; a user's `.notes.tmp` is not ours to delete. A temp whose process still runs is being written."""
    removed = []
    for tmp in Path(directory).glob(".*.tmp"):
        match = TEMP_RE.match(tmp.name)
        if match is None or (owned is not None and not owned(match.group(1))) or _alive(int(match.group(2))):
            continue  # not ours, or still being written (a `charnn report` of this run, say)
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    """Whether process `pid` exists (one we may not signal exists too). Windows has no probe: its os.kill(pid, 0)
    ends the process, so there every other process's temp file counts as still being written and is kept."""
    if pid == os.getpid():
        return False
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True
