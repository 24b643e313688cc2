"""The corpus cache's UTF-8 fast path (`scan_utf8`: which symbols occur and how many; `encode_utf8`: their ids).
Python's decoder plus `str.encode("utf-32")` runs at ~40 MB/s on text with a few non-ASCII characters (the chunk
becomes UCS-4); here ASCII bytes map to ids with `bytes.translate` (~1 GB/s) and only bytes >= 0x80 are decoded by
Python. Anything unusual (a NUL, a CR to normalise, invalid UTF-8) makes the scan return None and the caller falls
back to `charnn.data`'s exact decoder, so results never differ.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from charnn.config import DataConfig
from charnn.data import MAX_CODEPOINT
from charnn.textfile import changed_error, read_chunks

_HIGH = bytes(range(0x80, 0x100))
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class _Piece:
    body: bytes  # whole characters only
    keep: np.ndarray | None  # (n,) bool: False at continuation bytes; None when the body is ASCII
    lead_out: np.ndarray | None  # output positions of the non-ASCII characters
    cps: np.ndarray | None  # their code points (uint32)


def _pieces(p: Path, cfg: DataConfig, size: int, sha: str | None, on_bytes) -> Iterator[_Piece | None]:
    carry, first = b"", True
    for chunk in chain(read_chunks(p, size, sha256=sha), [b""]):  # the empty chunk last: what is left over is flushed
        buf = carry + chunk
        cut = _complete_prefix(buf) if chunk else len(buf)
        body, carry = buf[:cut], buf[cut:]
        if first and body:  # as `iter_symbols`: a BOM opening the text is dropped
            body, first = body.removeprefix(_BOM), False
        if body:
            yield _piece(body, cfg)
        if on_bytes and chunk:
            on_bytes(len(chunk))


def _complete_prefix(buf: bytes) -> int:
    """Length of `buf` without an incomplete UTF-8 sequence at its end (one split by the chunk boundary)."""
    n = len(buf)
    for back in range(1, min(4, n) + 1):
        b = buf[n - back]
        if b < 0x80:
            return n
        if b >= 0xC0:
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return n - back if need > back else n
    return n


def _piece(body: bytes, cfg: DataConfig) -> _Piece | None:
    if b"\x00" in body or (not cfg.keep_newlines and b"\r" in body):
        return None
    if body.isascii():
        return _Piece(body, None, None, None)
    u = np.frombuffer(body, dtype=np.uint8)
    hi = np.flatnonzero(u >= 0x80)  # (H,) positions of non-ASCII bytes
    s = u[hi]
    cont = (s & 0xC0) == 0x80
    lead = np.flatnonzero(~cont)  # (C,) indices into hi of each character's first byte
    if len(lead) == 0 or lead[0] != 0:
        return None
    lb = s[lead]
    if ((lb < 0xC2) | (lb > 0xF4)).any():
        return None
    length = 2 + (lb >= 0xE0).astype(np.int64) + (lb >= 0xF0)
    if (np.diff(np.append(lead, len(s))) != length).any():
        return None
    if (hi[lead + length - 1] - hi[lead] != length - 1).any():  # its bytes are contiguous in the file
        return None
    try:  # the structure is sound; Python rejects overlongs, surrogates and code points above U+10FFFF
        cps = np.frombuffer(s.tobytes().decode("utf-8").encode("utf-32-le"), dtype=np.uint32)
    except UnicodeDecodeError:
        return None
    if len(cps) != len(lead):
        return None
    keep = np.ones(len(u), dtype=bool)
    keep[hi[cont]] = False
    lead_out = hi[lead] - (lead - np.arange(len(lead)))  # minus the continuation bytes before each
    return _Piece(body, keep, lead_out, cps)


def scan_utf8(p: Path, cfg: DataConfig, size: int, on_bytes) -> tuple[np.ndarray, int] | None:
    present = np.zeros(MAX_CODEPOINT + 1, dtype=bool)
    seen = b""
    count = 0
    for piece in _pieces(p, cfg, size, None, on_bytes):
        if piece is None:
            return None
        new = piece.body.translate(None, seen + _HIGH)  # ASCII bytes not met before: usually empty
        while new:  # a set() of the first 64 KiB finds most of them; translate drops those and repeats
            found = set(new[:65536])
            present[list(found)] = True
            seen += bytes(sorted(found))
            new = new.translate(None, seen)
        if piece.cps is None:
            count += len(piece.body)
        else:
            present[piece.cps] = True
            count += int(piece.keep.sum())
    return np.flatnonzero(present), count


def encode_utf8(p: Path, cfg: DataConfig, table: np.ndarray, size: int, sha: str, on_bytes) -> Iterator[np.ndarray]:
    ascii_lut = np.zeros(256, dtype=table.dtype)
    ascii_lut[:128] = table[:128]
    byte_table = ascii_lut.tobytes() if table.dtype == np.uint8 else None
    for piece in _pieces(p, cfg, size, sha, on_bytes):
        if piece is None:
            raise changed_error(p)
        if byte_table is not None:
            ids = np.frombuffer(piece.body.translate(byte_table), dtype=np.uint8)
        else:
            ids = ascii_lut[np.frombuffer(piece.body, dtype=np.uint8)]
        if piece.keep is not None:
            ids = ids[piece.keep]
            ids[piece.lead_out] = table[piece.cps]
        yield ids
