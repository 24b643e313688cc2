"""The novelty index of a corpus: its suffix array, built once and cached beside the corpus cache entry as
KEY.sa (int32, 4 bytes a character) and KEY.sa.json, written atomically and checked by sha256 at every load.

Not the search itself (`charnn.novelty.spans`) nor which corpus a run's samples are checked against
(`charnn.novelty.run`). The array sorts the corpus by symbol, so one file serves every vocabulary of the text.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charnn.data import Corpus, Vocab
from charnn.errors import CharnnWarning, CheckpointWriteError, NoveltyUnavailable
from charnn.novelty import DEFAULT_COPY_SPAN
from charnn.novelty.spans import Novelty, novelty, suffix_array
from charnn.store.corpus_cache import cache_key, hash_file
from charnn.store.files import atomic_file, atomic_write

INDEX_VERSION = 1
MAX_INDEX_CHARS = 200_000_000  # beyond it the index (4 bytes a character) and its build are too large to offer


@dataclass(frozen=True)
class NoveltyIndex:
    """A corpus's ids (any vocabulary of it), its symbols and its suffix array in symbol order."""

    ids: np.ndarray
    vocab: Vocab
    sa: np.ndarray  # int32 (N,)
    sha256: str  # the corpus file's

    def check(self, sample, vocab: Vocab | None = None, *, copy_span: int = DEFAULT_COPY_SPAN) -> Novelty:
        """The novelty of a sample: a str (bytes for a --bytes corpus), or ids of `vocab` (default: the index's)."""
        if isinstance(sample, (str, bytes)):
            symbols = np.frombuffer(sample, dtype=np.uint8) if isinstance(sample, bytes) else _codepoints(sample)
        else:
            table = np.asarray((vocab or self.vocab).symbols, dtype=np.int64)
            symbols = table[np.asarray(sample, dtype=np.int64)]
        return novelty(symbols.astype(np.int64), self.ids, self.sa, copy_span=copy_span, table=self._symbols)

    @property
    def _symbols(self) -> np.ndarray:
        return np.asarray(self.vocab.symbols, dtype=np.int64)

    @property
    def nbytes(self) -> int:
        """The index's own size on disk (the ids are the corpus cache's)."""
        return int(self.sa.nbytes)


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def index_paths(cache_dir: Path, corpus: Corpus) -> tuple[Path, Path]:
    """Where a corpus's index lives: beside its corpus cache entry, under the same key."""
    key = cache_key(corpus.sha256, corpus.data)
    return cache_dir / f"{key}.sa.json", cache_dir / f"{key}.sa"


def corpus_index(corpus: Corpus, cache_dirs: Sequence[str | os.PathLike] = ()) -> NoveltyIndex:
    """The corpus's index: from a sound cache entry in one of `cache_dirs`, else built now and written to the
    first of them (none: kept in memory alone; a damaged entry is rebuilt with a warning). NoveltyUnavailable
    above MAX_INDEX_CHARS or when no builder can take the corpus."""
    if len(corpus.ids) > MAX_INDEX_CHARS:
        raise NoveltyUnavailable(
            f"the corpus has {len(corpus.ids):,} characters; novelty's index covers corpora of up to "
            f"{MAX_INDEX_CHARS:,}"
        )
    for cache_dir in cache_dirs:
        meta_path, sa_path = index_paths(Path(cache_dir), corpus)
        try:
            sa = _open(meta_path, sa_path, corpus)
        except NoveltyUnavailable as err:
            warnings.warn(f"{err}; building it again", CharnnWarning, stacklevel=2)
            sa = None
        if sa is not None:
            return NoveltyIndex(corpus.ids, corpus.vocab, sa, corpus.sha256)
    sa = _build(corpus)
    if cache_dirs:
        _write(*index_paths(Path(cache_dirs[0]), corpus), corpus, sa)
    return NoveltyIndex(corpus.ids, corpus.vocab, sa, corpus.sha256)


def _build(corpus: Corpus) -> np.ndarray:
    """The suffix array in symbol order: a corpus's own vocabulary is sorted; a fine-tuned model's is ranked."""
    ids = corpus.ids
    symbols = np.asarray(corpus.vocab.symbols)
    if np.any(np.diff(symbols) < 0):
        rank = np.empty(len(symbols), dtype=ids.dtype)
        rank[np.argsort(symbols)] = np.arange(len(symbols))
        ids = rank[np.asarray(ids)]
    try:
        return suffix_array(ids)
    except ImportError as err:
        raise NoveltyUnavailable(str(err)) from None


def _write(meta_path: Path, sa_path: Path, corpus: Corpus, sa: np.ndarray) -> None:
    """KEY.sa through a temp file, then KEY.sa.json, whose presence marks a complete entry. A cache that cannot
    be written only costs building again next time."""
    hasher = hashlib.sha256()
    view = memoryview(np.ascontiguousarray(sa, dtype=np.int32)).cast("B")
    hasher.update(view)
    meta = {
        "version": INDEX_VERSION,
        "sha256": corpus.sha256,
        "count": len(sa),
        "sa_sha256": hasher.hexdigest(),
    }
    try:
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(sa_path, owner=sa_path.parent) as f:  # the cache's own writer replaces its entries
            f.write(view)
        atomic_write(meta_path, (json.dumps(meta) + "\n").encode(), what="novelty index", owner=meta_path.parent)
    except (OSError, CheckpointWriteError) as err:
        warnings.warn(f"cannot cache the novelty index in {meta_path.parent}: {err}", CharnnWarning, stacklevel=3)


def _open(meta_path: Path, sa_path: Path, corpus: Corpus) -> np.ndarray | None:
    """The cached suffix array, memory-mapped; None when missing or of another corpus or version;
    NoveltyUnavailable naming the file when its size or sha256 is not the one recorded."""
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != INDEX_VERSION or meta.get("sha256") != corpus.sha256:
            return None
        count, sa_sha = int(meta["count"]), str(meta["sa_sha256"])
        if count != len(corpus.ids):
            return None
        size = sa_path.stat().st_size
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None
    if size != 4 * count or hash_file(sa_path) != sa_sha:
        raise NoveltyUnavailable(
            f"the novelty index {sa_path} is damaged (its size or sha256 is not the one recorded in {meta_path.name})"
        )
    return np.memmap(sa_path, dtype=np.int32, mode="r", shape=(count,))
