"""Which corpus a run's samples are checked against, and the one line shown when that cannot be done.

The corpus is the one the run recorded, found and checked by sha256 as `charnn eval` finds its validation split
(`charnn.evaluate.run_corpus`); a missing or changed corpus makes novelty unavailable, never a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

from charnn.errors import DataError, NoveltyUnavailable
from charnn.evaluate import run_cache_dirs, run_corpus
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


def unavailable_line(err: NoveltyUnavailable) -> str:
    """The one line that replaces the novelty lines."""
    return f"novelty unavailable: {err}"
