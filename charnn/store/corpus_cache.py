"""The on-disk corpus cache: a text file encoded once into a memory-mapped array of ids plus a small JSON.

Keyed by the corpus sha256 and the decoding options (never by mtime), written atomically, reused by every
later run and every DDP rank. Not a general dataset format: one file, one vocabulary, ids in file order.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from charnn.config import DataConfig
from charnn.data import MAX_CODEPOINT, Corpus, Vocab, corpus_vocab, encode_table, id_dtype, scan_file
from charnn.errors import CharnnError, CharnnWarning, CheckpointWriteError, DataError
from charnn.store.files import atomic_file, atomic_write
from charnn.textfile import changed_error, iter_symbols, read_chunks, readable_file

CACHE_VERSION = 2  # 2: the ids file's sha256 is recorded and checked at every load
DEFAULT_CACHE_DIR = Path("checkpoints") / ".cache"
_HIGH = bytes(range(0x80, 0x100))
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class EncodeProgress:
    """One progress event: `done` of `total` bytes of the file read in `phase` (hash | scan | encode)."""

    phase: str
    done: int
    total: int
    elapsed: float


def decoding_options(cfg: DataConfig) -> dict:
    """The DataConfig fields that change the ids (the split fractions do not: splits are cut at load)."""
    enc = "bytes" if cfg.bytes_mode else codecs.lookup(cfg.encoding).name
    return {"encoding": enc, "errors": cfg.errors, "keep_newlines": cfg.keep_newlines, "bytes": cfg.bytes_mode}


def cache_key(sha256: str, cfg: DataConfig) -> str:
    opts = hashlib.sha256(json.dumps(decoding_options(cfg), sort_keys=True).encode()).hexdigest()
    return f"{sha256[:32]}-{opts[:12]}"


def hash_file(
    path: str | os.PathLike, size: int | None = None, *, on_bytes: Callable[[int], None] | None = None
) -> str:
    """sha256 of the first `size` bytes (None: all), streamed in CHUNK_BYTES pieces."""
    hasher = hashlib.sha256()
    for chunk in read_chunks(Path(path), size, hasher=hasher):
        if on_bytes:
            on_bytes(len(chunk))
    return hasher.hexdigest()


def load_corpus(
    path: str | os.PathLike,
    cfg: DataConfig,
    *,
    cache_dir: str | os.PathLike | None = None,
    on_progress: Callable[[EncodeProgress], None] | None = None,
) -> Corpus:
    """The corpus with memory-mapped ids, from the cache when a sound matching entry exists, else encoded now
    (over a damaged entry, with a warning).

    Cost: two hashing passes on a hit (the corpus, then the ids against the sha256 their entry records); on a
    miss two more streaming passes (vocabulary, then ids written straight to disk, the corpus hashed again to
    prove it did not change), so resident memory stays at a few chunks whatever the corpus size.
    """
    p, size = readable_file(path)
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    sha = hash_file(p, size, on_bytes=_meter("hash", size, on_progress))
    key = cache_key(sha, cfg)
    meta_path, ids_path = cache / f"{key}.json", cache / f"{key}.ids"
    try:
        hit = _open_entry(meta_path, ids_path, sha, cfg)
    except DataError as err:
        warnings.warn(f"{err}; encoding the corpus again", CharnnWarning, stacklevel=2)
        hit = None
    if hit is not None:
        return Corpus(hit[0], hit[1], sha, str(p), cfg)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointWriteError(f"cannot create the corpus cache {cache}: {err.strerror or err}") from None
    vocab, count, ids_sha = _build(p, cfg, ids_path, size, sha, on_progress)
    meta = {
        "version": CACHE_VERSION,
        "sha256": sha,
        "count": count,
        "dtype": id_dtype(len(vocab)).name,
        "vocab": json.loads(vocab.to_json()),
        "options": decoding_options(cfg),
        "source": str(p.resolve()),
        "bytes": size,
        "ids_sha256": ids_sha,
    }
    # written last: its presence marks a complete entry
    atomic_write(meta_path, (json.dumps(meta) + "\n").encode(), what="corpus cache")
    ids, vocab = _open_entry(meta_path, ids_path, sha, cfg, verify=False) or (None, None)
    if ids is None:
        raise DataError(f"{p}: the corpus cache entry {ids_path} did not verify right after writing it")
    return Corpus(ids, vocab, sha, str(p), cfg)


def cached_corpus(path: str | os.PathLike, sha256: str, cfg: DataConfig, cache_dirs: Iterable[Path]) -> Corpus | None:
    """The corpus whose bytes hash to `sha256`, from a sound entry in one of `cache_dirs`, read-only: nothing
    is created or written. None when no directory holds one; a damaged entry is skipped with a warning."""
    key = cache_key(sha256, cfg)
    for cache in cache_dirs:
        try:
            hit = _open_entry(cache / f"{key}.json", cache / f"{key}.ids", sha256, cfg)
        except DataError as err:
            warnings.warn(f"{err}; reading the corpus itself instead", CharnnWarning, stacklevel=2)
            continue
        if hit is not None:
            return Corpus(hit[0], hit[1], sha256, str(path), cfg)
    return None


def _open_entry(
    meta_path: Path, ids_path: Path, sha: str, cfg: DataConfig, *, verify: bool = True
) -> tuple[np.ndarray, Vocab] | None:
    """The cached ids and vocabulary; None when the entry is missing or from another version or decoding; a
    DataError when its ids file is not the one its JSON records (size or sha256: a damaged disk, an edit)."""
    try:
        meta = json.loads(meta_path.read_text())
        if (
            meta.get("version") != CACHE_VERSION
            or meta.get("sha256") != sha
            or meta.get("options") != decoding_options(cfg)
        ):
            return None
        vocab = Vocab(tuple(meta["vocab"]["symbols"]), bool(meta["vocab"]["bytes"]))
        dtype = np.dtype(meta["dtype"])
        count, ids_sha = int(meta["count"]), str(meta["ids_sha256"])
        if dtype != id_dtype(len(vocab)) or count < 1:
            return None
        size = ids_path.stat().st_size
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None
    except CharnnError as err:  # a vocabulary the JSON holds that no corpus could have made
        raise DataError(f"the corpus cache entry {meta_path} is damaged ({err})") from None
    if size != count * dtype.itemsize or (verify and hash_file(ids_path) != ids_sha):
        raise DataError(
            f"the corpus cache entry {ids_path} is damaged (its size or sha256 is not the one "
            f"recorded in {meta_path.name})"
        )
    return np.memmap(ids_path, dtype=dtype, mode="r", shape=(count,)), vocab


def _meter(phase: str, total: int, on_progress: Callable[[EncodeProgress], None] | None):
    if on_progress is None:
        return None
    t0, done = time.perf_counter(), [0]
    on_progress(EncodeProgress(phase, 0, total, 0.0))

    def on_bytes(n: int) -> None:
        done[0] += n
        on_progress(EncodeProgress(phase, done[0], total, time.perf_counter() - t0))

    return on_bytes


def _build(
    p: Path, cfg: DataConfig, ids_path: Path, size: int, sha: str, on_progress: Callable[[EncodeProgress], None] | None
) -> tuple[Vocab, int, str]:
    """Scan for the vocabulary, then write the ids through a temp file renamed into place; the vocabulary,
    the count and the ids' sha256. Both passes read the `size` bytes the hash pass read (`read_chunks`)."""
    fast = not cfg.bytes_mode and codecs.lookup(cfg.encoding).name == "utf-8"
    scanned = _scan_utf8(p, cfg, size, _meter("scan", size, on_progress)) if fast else None
    if scanned is None:  # not UTF-8, or something the fast path leaves to the exact decoder
        fast = False
        scanned = scan_file(p, cfg, size=size, on_bytes=_meter("scan", size, on_progress))[:2]
    symbols, count = scanned
    vocab = corpus_vocab(p, symbols, count, cfg)
    table = encode_table(vocab)
    written, hasher = 0, hashlib.sha256()
    on_bytes = _meter("encode", size, on_progress)
    try:
        with atomic_file(ids_path) as f:
            chunks = (
                _encode_utf8(p, cfg, table, size, sha, on_bytes)
                if fast
                else (table[cps] for cps in iter_symbols(p, cfg, size=size, sha256=sha, on_bytes=on_bytes))
            )
            for ids in chunks:
                view = memoryview(np.ascontiguousarray(ids)).cast("B")
                f.write(view)
                hasher.update(view)
                written += len(ids)
            if written != count:
                raise changed_error(p)
    except OSError as err:
        raise CheckpointWriteError(f"cannot write the corpus cache {ids_path}: {err.strerror or err}") from None
    return vocab, count, hasher.hexdigest()


# --- the UTF-8 fast path ---------------------------------------------------------------------------------
# Python's decoder plus `str.encode("utf-32")` runs at ~40 MB/s on text with a few non-ASCII characters
# (the whole chunk becomes UCS-4). Here ASCII bytes map to ids with `bytes.translate` (~1 GB/s) and only the
# bytes >= 0x80 are decoded by Python. Anything unusual (a NUL, a CR to normalise, invalid UTF-8) makes the
# pass return None and the caller falls back to `charnn.data`'s exact decoder, so results never differ.


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


def _scan_utf8(p: Path, cfg: DataConfig, size: int, on_bytes) -> tuple[np.ndarray, int] | None:
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


def _encode_utf8(p: Path, cfg: DataConfig, table: np.ndarray, size: int, sha: str, on_bytes) -> Iterator[np.ndarray]:
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
