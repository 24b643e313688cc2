"""The on-disk corpus cache: a text file encoded once into a memory-mapped array of ids plus a small JSON.

Keyed by the corpus sha256 and the decoding options (never by mtime), written atomically, reused by every
later run and every DDP rank. Not a general dataset format: one file, one vocabulary, ids in file order. The
UTF-8 fast path of its scan and encode passes is `charnn.store.fast_utf8`.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charnn.config import DataConfig
from charnn.data import Corpus, Vocab, corpus_vocab, encode_table, id_dtype, scan_file
from charnn.errors import CharnnError, CharnnWarning, DataError
from charnn.store.fast_utf8 import encode_utf8, scan_utf8
from charnn.store.files import atomic_file, atomic_write, outside_runs, write_error
from charnn.textfile import changed_error, iter_symbols, read_chunks, readable_file

CACHE_VERSION = 2  # 2: the ids file's sha256 is recorded and checked at every load
DEFAULT_CACHE_DIR = Path("checkpoints") / ".cache"


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
    outside_runs(meta_path, what=f"the corpus cache {cache}")  # before a folder is made there
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(err, cache, "corpus cache", failed=f"cannot create the corpus cache {cache}") from None
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
    atomic_write(meta_path, (json.dumps(meta) + "\n").encode(), what="corpus cache", owner=meta_path.parent)
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
    scanned = scan_utf8(p, cfg, size, _meter("scan", size, on_progress)) if fast else None
    if scanned is None:  # not UTF-8, or something the fast path leaves to the exact decoder
        fast = False
        scanned = scan_file(p, cfg, size=size, on_bytes=_meter("scan", size, on_progress))[:2]
    symbols, count = scanned
    vocab = corpus_vocab(p, symbols, count, cfg)
    table = encode_table(vocab)
    written, hasher = 0, hashlib.sha256()
    on_bytes = _meter("encode", size, on_progress)
    try:
        with atomic_file(ids_path, owner=ids_path.parent) as f:  # the cache replaces its own damaged entries
            chunks = (
                encode_utf8(p, cfg, table, size, sha, on_bytes)
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
        raise write_error(err, ids_path, "corpus cache", failed=f"cannot write the corpus cache {ids_path}") from None
    return vocab, count, hasher.hexdigest()
