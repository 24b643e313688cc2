"""Where an export goes: an existing file is kept unless `force`, anything but a regular file (a device, a FIFO)
is refused even with `force`, and the new one is written atomically."""

from __future__ import annotations

import os
from pathlib import Path

from charnn.errors import CharnnError
from charnn.store.files import atomic_write, output_target


class ExportTargetError(CharnnError):
    """The target cannot be written: it exists (and overwriting was not asked for), is a directory, or its
    folder is missing."""


def check_target(path: str | os.PathLike, *, force: bool) -> Path:
    """The target path, if an export may be written there; checked before the work, and again at the write."""
    path = Path(path)
    if path.is_dir():
        raise ExportTargetError(f"{path} is a directory; give a file name")
    output_target(path)  # /dev/null, a FIFO: refused before the work (OutputPathError), --force or not
    if path.exists() and not force:
        raise ExportTargetError(f"{path} exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        raise ExportTargetError(f"{path.parent}: no such directory")
    return path


def write_output(path: str | os.PathLike, data: bytes, *, force: bool) -> Path:
    """Write `data` to `path` atomically (a crash leaves the old file or the new one)."""
    path = check_target(path, force=force)
    atomic_write(path, data, what="export")
    return path
