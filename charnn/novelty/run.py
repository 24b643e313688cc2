"""Which corpus a run's samples are checked against, and the one line shown when that cannot be done.

The corpus is the one the run recorded, found and checked by sha256 as `charnn eval` finds its validation split
(`charnn.evaluate.run_corpus`); a missing or changed corpus makes novelty unavailable, never a failure.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from charnn.errors import DataError, NoveltyUnavailable
from charnn.evaluate import run_cache_dirs, run_corpus
from charnn.novelty import DEFAULT_COPY_SPAN
from charnn.novelty.index import NoveltyIndex, corpus_index


def run_index(loaded, run_dir: str | os.PathLike | None = None) -> NoveltyIndex:
    """The novelty index of the corpus a loaded model (`charnn.store.checkpoint.LoadedModel`) was trained on:
    read from the run's corpus cache, else built there (or in memory when the run has no cache). Raises
    NoveltyUnavailable saying why when the corpus is missing, changed or too large."""
    run_dir = Path(loaded.path).parent if run_dir is None else Path(run_dir)
    try:
        corpus = run_corpus(loaded, run_dir, fix=None)
    except DataError as err:
        raise NoveltyUnavailable(str(err)) from None
    return corpus_index(corpus, run_cache_dirs(run_dir))


class IndexOnce:
    """A novelty index found at the first `get` and kept, and so is the reason when there is none: a caller that
    checks many texts (training's samples, the server) looks for it once."""

    def __init__(self, find: Callable[[], NoveltyIndex]) -> None:
        self._find = find
        self._found: NoveltyIndex | NoveltyUnavailable | None = None

    def get(self) -> NoveltyIndex:
        """The index; the NoveltyUnavailable of the first look, raised again, when there is none."""
        if self._found is None:
            try:
                self._found = self._find()
            except NoveltyUnavailable as err:
                self._found = err
        if isinstance(self._found, NoveltyUnavailable):  # a fresh one: the kept one's traceback is not to grow
            raise NoveltyUnavailable(str(self._found))
        return self._found


class RunNovelty:
    """The novelty of texts a loaded model wrote, checked against its run's corpus (`run_index`, looked for once)."""

    def __init__(self, loaded, run_dir: str | os.PathLike | None = None) -> None:
        self.loaded = loaded
        self.index = IndexOnce(lambda: run_index(loaded, run_dir))

    def texts(self, texts: list[str], *, copy_span: int = DEFAULT_COPY_SPAN) -> list[dict]:
        """One record per text: `Novelty.to_json()`, or {"unavailable": why}."""
        try:
            index = self.index.get()
        except NoveltyUnavailable as err:
            return [{"unavailable": str(err)} for _ in texts]
        as_bytes = self.loaded.vocab.bytes_mode  # a byte-level model's text came to str through surrogateescape
        return [
            index.check(t.encode("utf-8", "surrogateescape") if as_bytes else t, copy_span=copy_span).to_json()
            for t in texts
        ]


def unavailable_line(err: NoveltyUnavailable) -> str:
    """The one line that replaces the novelty lines."""
    return f"novelty unavailable: {err}"
