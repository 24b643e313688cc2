"""Text in, symbol ids out: a corpus's vocabulary, its ids and the train/val/test split. Reading and decoding
a file is `charnn.textfile`; the layout of the training split as parallel streams is `charnn.training.batches`.

Nothing here caches or memory-maps: `charnn.store.corpus_cache` does that with `scan_file` and `corpus_vocab`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from charnn.config import DataConfig
from charnn.errors import ConfigError, DataError, VocabularyError
from charnn.textfile import changed_error, iter_symbols, readable_file

MAX_CODEPOINT = 0x10FFFF
_WHITESPACE = frozenset(ord(c) for c in " \t\n\r\x0b\x0c\u00a0\u2028\u2029\u3000\ufeff")


@dataclass(frozen=True)
class Vocab:
    """The symbols of a corpus. Ids are positions in `symbols`.

    A corpus's own vocabulary is sorted; a fine-tuned model's is its starting model's, followed by the symbols
    that model never saw (`extend_vocab`), so the old ids keep their meaning (torch-rnn#147 is what happens
    when they do not). Nothing may assume the symbols sorted: look ids up through `lut`.
    """

    symbols: tuple[int, ...]
    bytes_mode: bool = False

    def __post_init__(self) -> None:
        s = self.symbols
        if not s or any(not isinstance(c, int) or isinstance(c, bool) for c in s):
            raise VocabularyError("vocabulary must be a non-empty list of integer symbols")
        top = 255 if self.bytes_mode else MAX_CODEPOINT
        if len(set(s)) != len(s) or min(s) < 0 or max(s) > top:
            raise VocabularyError("vocabulary symbols must be unique and in range")

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def lut(self) -> np.ndarray:
        """Ids indexed by symbol (int64, -1 for symbols outside the vocabulary); computed once."""
        lut = self.__dict__.get("_lut_cache")
        if lut is None:
            lut = np.full(max(self.symbols) + 1, -1, dtype=np.int64)
            lut[np.asarray(self.symbols)] = np.arange(len(self.symbols))
            object.__setattr__(self, "_lut_cache", lut)
        return lut

    def symbol_str(self, symbol: int) -> str:
        return f"byte 0x{symbol:02x}" if self.bytes_mode else repr(chr(symbol))

    def map_symbols(self, cps: np.ndarray, *, skip_unknown: bool = False) -> tuple[np.ndarray, dict[int, int]]:
        """Ids for code points; unknown ones are dropped when `skip_unknown`, else an error listing them."""
        lut = self.lut
        inside = cps < len(lut)
        ids = np.full(cps.shape, -1, dtype=np.int64)
        ids[inside] = lut[cps[inside]]
        bad = ids < 0
        unknown: dict[int, int] = {}
        if bad.any():
            values, counts = np.unique(cps[bad], return_counts=True)
            unknown = {int(v): int(c) for v, c in zip(values, counts, strict=True)}
            if not skip_unknown:
                raise VocabularyError(
                    f"{unknown_count(unknown)} not in this model's vocabulary: {unknown_symbols(self, unknown)}"
                )
            ids = ids[~bad]
        return ids, unknown

    def encode(self, text: str | bytes) -> np.ndarray:
        if isinstance(text, bytes):
            cps = np.frombuffer(text, dtype=np.uint8).astype(np.uint32)
        else:
            cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        return self.map_symbols(cps)[0]

    def decode_symbols(self, ids) -> list[int]:
        return [self.symbols[int(i)] for i in ids]

    def decode(self, ids) -> str | bytes:
        syms = self.decode_symbols(ids)
        return bytes(syms) if self.bytes_mode else "".join(map(chr, syms))

    def to_json(self) -> str:
        return json.dumps({"symbols": list(self.symbols), "bytes": self.bytes_mode})

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        try:
            data = json.loads(text)
            return cls(tuple(data["symbols"]), bool(data.get("bytes", False)))
        except (ValueError, KeyError, TypeError) as err:
            raise VocabularyError(f"unreadable vocabulary ({err})") from None


def extend_vocab(base: Vocab, new: Vocab) -> Vocab:
    """`base`'s symbols in their order, then those of `new` that `base` lacks, sorted: every id of `base` keeps
    its meaning, and the symbols it never saw get the ids after its last."""
    if base.bytes_mode != new.bytes_mode:
        kinds = {True: "bytes", False: "characters"}
        raise VocabularyError(
            f"the model's vocabulary is of {kinds[base.bytes_mode]}, this corpus's of "
            f"{kinds[new.bytes_mode]} (--bytes must match)"
        )
    known = set(base.symbols)
    return Vocab(base.symbols + tuple(sorted(s for s in new.symbols if s not in known)), base.bytes_mode)


def translate_ids(ids: np.ndarray, old: Vocab, new: Vocab, *, what: str) -> np.ndarray:
    """`ids` of vocabulary `old` as ids of `new`, which must hold every symbol of `old` (a VocabularyError
    naming `what` otherwise); in memory, even when `ids` is memory-mapped; `ids` itself when the two agree."""
    if new == old:
        return ids
    if new.bytes_mode != old.bytes_mode:
        raise VocabularyError(f"{what}: --bytes differs from the model's vocabulary")
    remap, unknown = new.map_symbols(np.asarray(old.symbols), skip_unknown=True)  # (len(old),): old id -> new id
    if unknown:
        raise VocabularyError(
            f"{what}: {unknown_count(unknown, 'symbol')} not in the model's vocabulary: {unknown_symbols(new, unknown)}"
        )
    return remap.astype(id_dtype(len(new)))[np.asarray(ids)]


def unknown_count(unknown: dict[int, int], what: str = "character") -> str:
    """How many distinct symbols `unknown` ({symbol: count}) holds, and their occurrences when there are more:
    "1 character", "2 characters (5 occurrences)"."""
    kinds, total = len(unknown), sum(unknown.values())
    text = f"{kinds} {what}{'' if kinds == 1 else 's'}"
    return text if total == kinds else f"{text} ({total:,} occurrences)"


def unknown_symbols(vocab: Vocab, unknown: dict[int, int], *, limit: int = 10) -> str:
    """The symbols of `unknown` ({symbol: count}) as messages show them: the first `limit`, then how many more."""
    shown = ", ".join(vocab.symbol_str(s) for s in list(unknown)[:limit])
    return shown + (f" and {len(unknown) - limit} more" if len(unknown) > limit else "")


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every id."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ConfigError("vocabulary too large")


@dataclass(frozen=True)
class Corpus:
    """An encoded corpus: ids (in memory or memory-mapped), its vocabulary, and where it came from."""

    ids: np.ndarray
    vocab: Vocab
    sha256: str
    path: str
    data: DataConfig

    def in_vocab(self, vocab: Vocab) -> Corpus:
        """The same text with the ids of `vocab` (`translate_ids`); this corpus itself when the two are equal."""
        if vocab == self.vocab:
            return self
        return Corpus(
            translate_ids(self.ids, self.vocab, vocab, what=self.path), vocab, self.sha256, self.path, self.data
        )

    def split(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Contiguous train / val / test (nanoGPT's split: train is the first int(n*(1-val-test)))."""
        n = len(self.ids)
        train_end = int(n * (1 - self.data.val_frac - self.data.test_frac))
        val_end = int(n * (1 - self.data.test_frac))
        return self.ids[:train_end], self.ids[train_end:val_end], self.ids[val_end:]


def scan_file(path: str | os.PathLike, cfg: DataConfig, **kw) -> tuple[np.ndarray, int, str]:
    """First pass: which symbols occur, how many there are, and the sha256 of the raw bytes (`iter_symbols`'s
    keywords: pass `size` for the first pass of several)."""
    hasher = hashlib.sha256()
    present = np.zeros(256 if cfg.bytes_mode else MAX_CODEPOINT + 1, dtype=bool)
    count = 0
    for cps in iter_symbols(path, cfg, hasher=hasher, **kw):
        present[cps] = True
        count += len(cps)
    return np.flatnonzero(present), count, hasher.hexdigest()


def corpus_vocab(path: str | os.PathLike, symbols: np.ndarray, count: int, cfg: DataConfig) -> Vocab:
    """The vocabulary of a scanned corpus (`symbols` present, `count` in all); a DataError for a corpus with
    no characters or only whitespace, which no model can learn from."""
    if count == 0:
        raise DataError(f"{path}: no characters after decoding")
    if not cfg.bytes_mode and set(symbols.tolist()) <= _WHITESPACE:
        raise DataError(f"{path}: contains only whitespace ({count} characters)")
    return Vocab(tuple(int(s) for s in symbols), cfg.bytes_mode)


def encode_table(vocab: Vocab) -> np.ndarray:
    """Ids indexed by every symbol, in the ids' dtype, for the encoding pass after a scan: a symbol the scan did
    not see (the file changed between the passes) maps to 0 instead of raising, and that pass's sha256 check
    then refuses the whole result."""
    table = np.zeros(256 if vocab.bytes_mode else MAX_CODEPOINT + 1, dtype=id_dtype(len(vocab)))
    table[np.asarray(vocab.symbols)] = np.arange(len(vocab))
    return table


def encode_file(path: str | os.PathLike, cfg: DataConfig, *, on_bytes: Callable[[int], None] | None = None) -> Corpus:
    """Encode a corpus in memory in two streaming passes (vocabulary, then ids), in the smallest dtype that fits
    (`charnn.store.corpus_cache` writes the same ids to a memory-mapped file instead). Both passes read the bytes the
    file held when the first began (`read_chunks`): text appended meanwhile is left out, any other change is
    a DataError."""
    p, size = readable_file(path)
    symbols, count, sha = scan_file(p, cfg, size=size, on_bytes=on_bytes)
    vocab = corpus_vocab(p, symbols, count, cfg)
    table = encode_table(vocab)
    ids = np.empty(count, dtype=table.dtype)
    pos = 0
    for cps in iter_symbols(p, cfg, size=size, sha256=sha, on_bytes=on_bytes):
        if pos + len(cps) > count:
            raise changed_error(p)
        ids[pos : pos + len(cps)] = table[cps]
        pos += len(cps)
    if pos != count:
        raise changed_error(p)
    return Corpus(ids, vocab, sha, str(path), cfg)


def read_ids(
    path: str | os.PathLike, vocab: Vocab, cfg: DataConfig, *, skip_unknown: bool = False
) -> tuple[np.ndarray, dict[int, int]]:
    """Encode a held-out file with an existing vocabulary; returns ids and {unknown symbol: count}."""
    parts, unknown = [], {}
    for cps in iter_symbols(path, cfg):
        ids, unk = vocab.map_symbols(cps, skip_unknown=True)
        parts.append(ids)
        for k, v in unk.items():
            unknown[k] = unknown.get(k, 0) + v
    if unknown and not skip_unknown:
        raise VocabularyError(
            f"{path}: {unknown_count(unknown)} not in the model's vocabulary "
            f"({unknown_symbols(vocab, unknown)}); pass --skip-unknown to drop them"
        )
    ids = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    return ids, unknown
