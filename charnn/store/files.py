"""Durable file writes: a crash leaves the old file or the new one, never a mix; append-only logs whose lines are
never torn; and the cleanup of the temp files an interrupted write leaves behind. Every write here goes to a
regular file only (never over a device, FIFO, socket or directory), never over a file this process read, and never
into a run directory but by that run's own writer. Used by checkpoints, run sidecars and logs, the corpus cache,
the report and exports. Nothing here knows what the files hold.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from charnn.errors import CheckpointWriteError, OutputPathError
from charnn.textfile import input_like

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

# Why a write can fail because of the path the user gave (exit 2: choose another), not the device (exit 4).
PATH_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ENOENT", "ENOTDIR", "EACCES", "EPERM", "ENAMETOOLONG", "ELOOP", "EROFS", "EISDIR", "EEXIST")
    if hasattr(errno, name)
)


def write_error(err: OSError, path: str | os.PathLike, what: str, *, failed: str = "") -> CheckpointWriteError:
    """The one-line error for a failed write of the `what` at `path`: a path the user must change (a missing or
    read-only folder, no permission, a name too long, a link loop) is an OutputPathError (exit 2); a failing
    device (disk full, file too large, an I/O error) a CheckpointWriteError (exit 4), worded `failed` if given."""
    reason = err.strerror or str(err)
    held_open = getattr(err, "winerror", None) in (32, 33)  # Windows: another program holds the file open
    if err.errno in PATH_ERRNOS and not held_open:
        return OutputPathError(f"cannot write the {what} at {path}: {reason}; choose another path")
    return CheckpointWriteError(f"{failed or f'{what} write failed (disk full?): {path}'}: {reason}")


def is_run_dir(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds a charnn run: its config.json is an object naming the charnn_version that wrote
    it (someone's own config.json is not a run)."""
    config = Path(directory) / "config.json"
    try:
        if not config.is_file() or config.stat().st_size > 1 << 20:
            return False
        data = json.loads(config.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and "charnn_version" in data


def outside_runs(path: str | os.PathLike, *, owner: str | os.PathLike | None = None, what: str = "") -> None:
    """Raise OutputPathError when `path` (links resolved) lies inside a run directory, unless it lies in `owner`
    first: only a run's own writer (its training, or its report) writes there. `what` names the option."""
    real = Path(os.path.realpath(path))
    own = Path(os.path.realpath(owner)) if owner is not None else None
    for parent in real.parents:
        if parent == own:
            return
        if is_run_dir(parent):
            raise OutputPathError(
                f"{what or path} is inside the run directory {parent}, whose files only its own training writes "
                f"(--force or not): choose a path outside it"
            )


def _not_an_input(path: Path, target: Path, owner: Path | None) -> None:
    """Raise OutputPathError when `target` is a file this process read (the same file by any name or link),
    except one read in `owner`, which its own writer replaces."""
    try:
        read = input_like(os.stat(target))
    except OSError:
        return
    if read is None or (owner is not None and Path(os.path.realpath(owner)) in Path(read).parents):
        return
    same = "" if os.path.realpath(path) == read else f" (the same file as {read})"
    raise OutputPathError(
        f"{path}{same} is an input of this command; charnn never writes over a file it reads (--force or not): "
        f"choose another path"
    )


def output_target(path: str | os.PathLike, *, owner: str | os.PathLike | None = None) -> Path:
    """The file a write to `path` lands in: `path`, or the file a symbolic link at `path` points to (written
    through, as the shell's `>` does, so a link to a file elsewhere keeps working and stays a link).

    Raises OutputPathError when that exists and is not a regular file (renaming over /dev/null as root, or over
    a FIFO someone reads, would destroy it), is a file this process read, or lies inside a run directory. A
    write by the `owner` of its directory (a run's training or report, the corpus cache) is allowed both there.
    A path that cannot be examined is left for the write to report.
    """
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    outside_runs(target, owner=owner, what=str(path))
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
    _not_an_input(path, target, Path(owner) if owner is not None else None)
    return target


def check_stdout(fd: int) -> None:
    """Refuse a stdout redirected onto a file this command reads or into a run directory (`charnn sample RUN >>
    RUN/samples.jsonl`), as `output_target` refuses such a path. Its path is known where /proc tells it."""
    try:
        info = os.fstat(fd)
    except OSError:
        return
    if not stat.S_ISREG(info.st_mode):
        return
    read = input_like(info)
    if read is not None:
        raise OutputPathError(f"stdout is {read}, an input of this command; redirect it to another file")
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return
    outside_runs(path, what=f"stdout ({path})")


def _temp_path(path: Path) -> Path:
    """Where a write to `path` goes first: a hidden name in the same directory that no reader takes for it."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_file(path: str | os.PathLike, *, owner: str | os.PathLike | None = None) -> Iterator[BinaryIO]:
    """Open a temp file beside `path` for writing; when the block ends normally, flush, fsync, rename it over
    `path` and fsync the directory.

    `path` must be a regular file, a new name, or a link to either (then the linked file is replaced), and pass
    `output_target`'s checks (`owner`: the directory whose own writer this is): anything else raises OutputPathError (a
    CheckpointWriteError, exit code 2) before and again just before the rename.
    If the block raises (anything, OSError included) the temp file is removed, `path` is untouched and the
    exception propagates as it was: the caller words the error for its kind of file.
    """
    target = output_target(path, owner=owner)
    tmp = _temp_path(target)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        target = output_target(path, owner=owner)  # the block may have taken minutes: the path is checked again
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def atomic_write(
    path: str | os.PathLike, data: bytes, *, what: str = "checkpoint", owner: str | os.PathLike | None = None
) -> None:
    """Write `data` to `path` through `atomic_file` (`owner`: the directory whose own writer this is). On any
    OSError the old file is untouched and `write_error` says so (`what` names the kind of file in that message)."""
    path = Path(path)
    try:
        with atomic_file(path, owner=owner) as f:
            f.write(data)
    except OSError as err:
        raise write_error(err, path, what) from None


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
    distributed run that do not log); `owner`: the run directory whose own writer this is."""

    def __init__(self, path: str | os.PathLike | None, *, what: str, owner: str | os.PathLike | None = None) -> None:
        self.path, self.what, self.fd, self.size = path, what, None, 0
        if path is None:
            return
        target = output_target(path, owner=owner)
        try:
            self.fd = os.open(target, _log_flags(), 0o644)
            info = os.fstat(self.fd)
        except OSError as err:
            self.close()
            raise write_error(err, path, what, failed=f"cannot open the {what} {path}") from None
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
