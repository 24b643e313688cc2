"""Copied spans of a sample in a corpus, exactly: the corpus's suffix array, and for every position of the sample
the longest prefix of the rest of it that occurs verbatim in the corpus (its matching statistics).

Not where the index is stored (`charnn.novelty.index`) or which corpus a run's samples are checked against
(`charnn.novelty.run`). Ids are plain integers here: a sample symbol the corpus never holds matches nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from charnn.novelty import DEFAULT_COPY_SPAN

NUMPY_LIMIT = 8_000_000  # the numpy builder's largest corpus (it holds about 40 bytes a character while sorting)
_BLOCK = 16  # characters compared first; rows still equal after a block compare the next, twice as wide
_PATTERN_END = -1  # past the sample's end: sorts before every symbol, as a shorter suffix sorts first
_CORPUS_END = -2  # past the corpus's end: matches nothing


def suffix_array(ids: np.ndarray, *, numpy_limit: int = NUMPY_LIMIT) -> np.ndarray:
    """The suffix array of `ids` (int32: the start of each suffix, in sorted order; a suffix sorts before the
    longer ones it is a prefix of). pydivsufsort (the `novelty` extra, O(n)) when installed, else numpy's
    prefix doubling for up to `numpy_limit` symbols; an ImportError beyond it."""
    ids = np.ascontiguousarray(ids)
    if not ids.flags.writeable:  # a memory-mapped corpus: divsufsort takes a writable buffer
        ids = ids.copy()
    try:
        from pydivsufsort import divsufsort
    except ImportError:
        if len(ids) > numpy_limit:
            raise ImportError(
                f"a corpus of {len(ids):,} characters needs pydivsufsort for its index "
                f"(pip install 'charnn[novelty]'); without it the limit is {numpy_limit:,}"
            ) from None
        return suffix_array_numpy(ids)
    if ids.dtype not in (np.uint8, np.uint16):  # what divsufsort sorts; a larger vocabulary goes by numpy
        return suffix_array_numpy(ids)
    return divsufsort(ids).astype(np.int32, copy=False)


def suffix_array_numpy(ids: np.ndarray) -> np.ndarray:
    """Prefix doubling (Manber and Myers, 1993) with numpy sorts: O(n log² n); the reference the fast builder is
    tested against, and the builder when pydivsufsort is missing."""
    n = len(ids)
    rank = np.asarray(ids, dtype=np.int64)
    order = np.argsort(rank, kind="stable")
    step = 1
    while n > 1:
        second = np.full(n, -1, dtype=np.int64)  # rank of the suffix `step` further on; -1: none, sorts first
        second[: n - step] = rank[step:]
        order = np.lexsort((second, rank))
        first_sorted, second_sorted = rank[order], second[order]
        new_group = np.empty(n, dtype=bool)
        new_group[0] = True
        new_group[1:] = (first_sorted[1:] != first_sorted[:-1]) | (second_sorted[1:] != second_sorted[:-1])
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.cumsum(new_group) - 1
        if new_group.all() or step >= n:
            break
        step *= 2
    return order.astype(np.int32)


def _gather(values: np.ndarray, starts: np.ndarray, width: int, end: int, table: np.ndarray | None) -> np.ndarray:
    """table[values[starts[r] + k]] for k < width as an (R, width) int64 block (`values` itself without a
    table); `end` (a sentinel) past the end of `values`."""
    idx = starts[:, None] + np.arange(width)
    inside = idx < len(values)
    block = np.asarray(values[np.minimum(idx, len(values) - 1)], dtype=np.int64)
    if table is not None:
        block = table[block]
    return np.where(inside, block, end)


def _compare(
    pattern: np.ndarray,
    starts: np.ndarray,
    corpus: np.ndarray,
    sa_rows: np.ndarray,
    skip: np.ndarray,
    table: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For each row r, the sample's suffix `starts[r]` against the corpus suffix `sa_rows[r]`, known to agree on
    their first `skip[r]` symbols: the length of their common prefix, and the sign of the first difference
    (sample minus corpus; never 0, as the two ends differ). Compared by blocks of doubling width."""
    common = skip.astype(np.int64)
    sign = np.zeros(len(starts), dtype=np.int64)
    todo = np.arange(len(starts))
    width = _BLOCK
    while len(todo):
        a = _gather(pattern, starts[todo] + common[todo], width, _PATTERN_END, None)
        b = _gather(corpus, sa_rows[todo] + common[todo], width, _CORPUS_END, table)
        differ = a != b
        found = differ.any(axis=1)
        first = np.argmax(differ, axis=1)
        rows = np.flatnonzero(found)
        sign[todo[rows]] = np.sign(a[rows, first[rows]] - b[rows, first[rows]])
        common[todo] += np.where(found, first, width)
        todo = todo[~found]
        width *= 2
    return common, sign


def matching_statistics(
    pattern: np.ndarray, corpus: np.ndarray, sa: np.ndarray, *, table: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For each position i of `pattern`, the length of the longest prefix of pattern[i:] found in `corpus`, and
    where in the corpus one such copy starts (-1 where the length is 0). With a `table`, the corpus's ids are
    table[id] (their symbols) for the comparison; `sa` must sort the corpus in that order. Pattern values are
    non-negative.

    All positions at once: a binary search of the suffix array for where each pattern suffix would sort; the
    suffix sharing most with a string sorts next to it, so the answer is the longer common prefix with the two
    neighbours there. The search keeps its common prefix with both ends of the interval (Manber and Myers): a
    suffix between them shares at least the shorter one, so each comparison starts there.
    """
    pattern = np.asarray(pattern, dtype=np.int64)
    m, n = len(pattern), len(sa)
    starts = np.arange(m, dtype=np.int64)
    lo, hi = np.zeros(m, dtype=np.int64), np.full(m, n, dtype=np.int64)  # insertion point in [lo, hi]
    below, above = np.zeros(m, dtype=np.int64), np.zeros(m, dtype=np.int64)  # common prefix with sa[lo-1], sa[hi]
    while True:
        rows = np.flatnonzero(lo < hi)
        if not len(rows):
            break
        mid = (lo[rows] + hi[rows]) // 2
        skip = np.minimum(below[rows], above[rows])
        common, sign = _compare(pattern, starts[rows], corpus, np.asarray(sa[mid]).astype(np.int64), skip, table)
        up, down = rows[sign > 0], rows[sign < 0]
        lo[up], below[up] = mid[sign > 0] + 1, common[sign > 0]
        hi[down], above[down] = mid[sign < 0], common[sign < 0]
    lengths = np.maximum(below, above)
    at = np.where(below >= above, lo - 1, lo)  # the neighbour holding the longer copy
    offsets = np.full(m, -1, dtype=np.int64)
    has = lengths > 0
    offsets[has] = np.asarray(sa[at[has]]).astype(np.int64)
    return lengths, offsets


@dataclass(frozen=True)
class Novelty:
    """How much of a sample is copied from the corpus: the longest verbatim span (its length, where it starts
    in the sample and in the corpus), and the characters inside copied spans of at least `copy_span`."""

    chars: int  # the sample's length
    longest: int  # the longest copied span, in characters
    sample_offset: int  # where it starts in the sample
    corpus_offset: int | None  # where one copy of it starts in the corpus (characters); None when `longest` is 0
    copy_span: int
    copied: int  # characters of the sample inside a copied span of at least `copy_span`
    spans: tuple[tuple[int, int], ...] = field(default=())  # those spans merged: [start, end) in the sample

    @property
    def share(self) -> float:
        return self.copied / self.chars if self.chars else 0.0

    def line(self, label: str = "novelty") -> str:
        """The one line `charnn sample` prints."""
        where = f" (corpus offset {self.corpus_offset:,})" if self.corpus_offset is not None else ""
        return (
            f"{label}: longest copied span {self.longest:,} characters{where}; {percent(self.share)} of characters "
            f"in copied spans of {self.copy_span} or more"
        )

    def to_json(self) -> dict:
        return {
            "chars": self.chars,
            "longest": self.longest,
            "sample_offset": self.sample_offset,
            "corpus_offset": self.corpus_offset,
            "copy_span": self.copy_span,
            "copied": self.copied,
            "share": round(self.share, 4),
            "spans": [list(s) for s in self.spans],
        }


def percent(share: float) -> str:
    """12%; under 1% but not none: <1%, so a few copied characters never read as 0%."""
    return "<1%" if 0 < share < 0.01 else f"{100 * share:.0f}%"


def novelty(
    pattern: np.ndarray,
    corpus: np.ndarray,
    sa: np.ndarray,
    *,
    copy_span: int = DEFAULT_COPY_SPAN,
    table: np.ndarray | None = None,
) -> Novelty:
    """The `Novelty` of a sample against a corpus's ids and suffix array (`matching_statistics`: the sample's
    values compare with the corpus's ids, or with table[id] given a table)."""
    if copy_span < 1:
        raise ValueError("copy_span must be at least 1")
    m = len(pattern)
    if m == 0 or len(sa) == 0:
        return Novelty(m, 0, 0, None, copy_span, 0)
    lengths, offsets = matching_statistics(pattern, corpus, sa, table=table)
    at = int(np.argmax(lengths))
    longest = int(lengths[at])
    # each position starting a copy of at least copy_span covers [i, i + length): a difference array adds them up
    cover = np.zeros(m + 1, dtype=np.int64)
    starts = np.flatnonzero(lengths >= copy_span)
    np.add.at(cover, starts, 1)
    np.add.at(cover, starts + lengths[starts], -1)
    inside = np.cumsum(cover[:m]) > 0
    edges = np.flatnonzero(np.diff(np.concatenate(([0], inside.astype(np.int8), [0]))))
    spans = tuple((int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True))
    return Novelty(m, longest, at, int(offsets[at]) if longest else None, copy_span, int(inside.sum()), spans)
