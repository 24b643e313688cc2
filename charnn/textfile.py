"""Reading a text input safely: only a regular file is opened (never a FIFO, device or directory), read in
chunks as the bytes it held when the first pass began, and decoded to symbols (code points, or bytes).

Every file read is remembered (`remember_input`), so that no output of the same command lands on it.
Not the vocabulary or the ids (`charnn.data`), and nothing is cached here (`charnn.store.corpus_cache`).
"""

from __future__ import annotations

import codecs
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from itertools import chain
from pathlib import Path
from typing import BinaryIO

import numpy as np

from charnn.config import DataConfig
from charnn.errors import DataError

CHUNK_BYTES = 1 << 24  # 16 MiB; tests monkeypatch this to split multi-byte characters across chunks

# The files this process read (a corpus, a text to score, a prime, a checkpoint), by (st_dev, st_ino): the writers
# of charnn.store.files refuse to write over one of them, whatever name or link reaches it.
_INPUTS: dict[tuple[int, int], str] = {}


def remember_input(path: str | os.PathLike, info: os.stat_result) -> None:
    """Record that this process reads the file `info` describes, found at `path`."""
    _INPUTS[(info.st_dev, info.st_ino)] = os.path.realpath(path)


def input_like(info: os.stat_result) -> str | None:
    """The path of a file this process read that is the file `info` describes (the same path, a link or a hard
    link to it), or None. A remembered file that is gone no longer counts: its inode may be another file's now."""
    key = (info.st_dev, info.st_ino)
    path = _INPUTS.get(key)
    if path is None:
        return None
    try:
        now = os.stat(path)
    except OSError:
        return None
    return path if (now.st_dev, now.st_ino) == key else None


def forget_inputs() -> None:
    """A new command starts: nothing read so far is its input."""
    _INPUTS.clear()


def open_input(path: str | os.PathLike) -> tuple[BinaryIO, int]:
    """A text input opened for reading, and its size: a regular file only, else a DataError. Opened with
    O_NONBLOCK and checked on the open descriptor, so a FIFO without a writer is refused, never waited on, and
    nothing can swap the file between the check and the read; a device (/dev/zero, a terminal) never is read.
    Windows has no O_NONBLOCK (nor FIFOs); O_BINARY there keeps its C library from translating line ends."""
    p = Path(path)
    nonblock = getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(p, os.O_RDONLY | nonblock | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise DataError(f"{p}: no such file") from None
    except OSError as err:
        raise DataError(f"{p}: cannot read ({err.strerror or err})") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise DataError(f"{p}: is a directory, not a text file")
        if not stat.S_ISREG(mode):
            kind = next((k for test, k in _SPECIAL if test(mode)), "a special file")
            raise DataError(f"{p}: is {kind}, not a regular file; save the text to a file and pass that")
        if nonblock:  # Windows: nothing to undo, and its os.set_blocking takes pipes only
            os.set_blocking(fd, True)
        info = os.fstat(fd)
        remember_input(p, info)
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


_SPECIAL = (
    (stat.S_ISFIFO, "a pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def readable_file(path: str | os.PathLike) -> tuple[Path, int]:
    """The path and byte size of a regular file that can be opened and is not empty; else a DataError."""
    f, size = open_input(path)
    f.close()
    if size == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")
    return Path(path), size


def read_chunks(
    path: Path, size: int | None = None, *, sha256: str | None = None, hasher: hashlib._Hash | None = None
) -> Iterator[bytes]:
    """The file's first `size` bytes (None: its size when opened) in CHUNK_BYTES pieces; `hasher` is fed them.

    Every pass of a multi-pass read takes the first pass's `size` (text appended meanwhile is not read) and,
    with `sha256` (what the first pass hashed), checks it read the same bytes: a file truncated, rewritten or
    replaced between passes is a DataError before the pass ends, never ids of two versions.
    """
    check = hashlib.sha256() if sha256 else None
    f, now = open_input(path)
    left = now if size is None else size
    with f:
        while left:
            try:
                chunk = f.read(min(CHUNK_BYTES, left))
            except OSError as err:
                raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
            if not chunk:
                raise changed_error(path)
            left -= len(chunk)
            for h in (hasher, check):
                if h is not None:
                    h.update(chunk)
            yield chunk
    if check is not None and check.hexdigest() != sha256:
        raise changed_error(path)


def changed_error(path: str | os.PathLike) -> DataError:
    return DataError(f"{path}: file changed while it was being read; run again once nothing writes to it")


def iter_symbols(
    path: str | os.PathLike,
    cfg: DataConfig,
    *,
    size: int | None = None,
    sha256: str | None = None,
    hasher: hashlib._Hash | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[np.ndarray]:
    """Yield the file's symbols (Unicode code points, or byte values with `bytes_mode`) as uint32 chunks;
    `size`, `sha256` and `hasher` as `read_chunks` takes them.

    Strict decoding errors name the byte offset; NUL characters mean a binary file; a leading BOM is
    dropped; CRLF and lone CR become LF unless `keep_newlines` (a CR that ends a chunk waits for the next).
    """
    p, found = readable_file(path)
    decoder = None if cfg.bytes_mode else codecs.getincrementaldecoder(cfg.encoding)(errors=cfg.errors)
    offset = 0  # bytes consumed before the current chunk
    first = True
    pending_cr = ""
    chunks = read_chunks(p, found if size is None else size, sha256=sha256, hasher=hasher)
    for chunk in chain(chunks, [b""]):  # the empty chunk last: the decoder's final call
        final = not chunk
        if decoder is None:
            if final:
                return
            yield np.frombuffer(chunk, dtype=np.uint8).astype(np.uint32)
            offset += len(chunk)
            if on_bytes:
                on_bytes(len(chunk))
            continue
        text = _decode(decoder, chunk, final, offset, p, cfg.encoding)
        if first and text:
            text = text.removeprefix("\ufeff")
            first = False
        if not cfg.keep_newlines:
            text = pending_cr + text
            pending_cr = ""
            if text.endswith("\r") and not final:
                text, pending_cr = text[:-1], "\r"
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if text:
            yield _code_points(text, p, offset)
        offset += len(chunk)
        if on_bytes and chunk:
            on_bytes(len(chunk))


def _decode(decoder: codecs.IncrementalDecoder, chunk: bytes, final: bool, offset: int, p: Path, encoding: str) -> str:
    """The text of `chunk` (read at byte `offset`); a decoding error names its byte offset where it has one."""
    buffered = len(decoder.getstate()[0])
    try:
        return decoder.decode(chunk, final)
    except UnicodeDecodeError as err:
        at = offset - buffered + err.start
        raise DataError(
            f"{p}: not valid {encoding} at byte {at} ({err.reason}); pass --encoding (e.g. latin-1) or --errors replace"
        ) from None
    except (UnicodeError, ValueError) as err:  # e.g. utf-16 without a BOM: no offset to name
        raise DataError(
            f"{p}: not valid {encoding} near byte {offset} ({err}); pass another --encoding or --errors replace"
        ) from None


def _code_points(text: str, p: Path, offset: int) -> np.ndarray:
    """`text` as uint32 code points; a NUL character means a binary file."""
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    nul = np.flatnonzero(cps == 0)
    if len(nul):
        raise DataError(
            f"{p}: looks like a binary file (NUL character near byte {offset + int(nul[0])}); "
            "use --bytes to model raw bytes"
        )
    return cps
