"""Text in, symbol ids out: reading a corpus safely, its vocabulary and the train/val/test split. The layout
of the training split as parallel streams is `charnn.batches`.

Reading streams the file in chunks (so a corpus never has to fit in memory as Python text); nothing here
caches or memory-maps: `charnn.corpus_cache` does that with `read_chunks`, `scan_file` and `corpus_vocab`.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from charnn.config import DataConfig
from charnn.errors import ConfigError, DataError, VocabularyError

CHUNK_BYTES = 1 << 24  # 16 MiB; tests monkeypatch this to split multi-byte characters across chunks
MAX_CODEPOINT = 0x10FFFF
_WHITESPACE = frozenset(ord(c) for c in " \t\n\r\x0b\x0c\u00a0\u2028\u2029\u3000\ufeff")


def readable_file(path: str | os.PathLike) -> tuple[Path, int]:
    """The path and byte size of a text file that exists, can be opened and is not empty; else a DataError."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, not a text file")
    try:
        size = p.stat().st_size
        with p.open("rb"):
            pass
    except OSError as err:
        raise DataError(f"{p}: cannot read ({err.strerror})") from None
    if size == 0:
        raise DataError(f"{p}: file is empty (0 bytes)")
    return p, size


def read_chunks(path: Path) -> Iterator[bytes]:
    """The raw bytes of a file in CHUNK_BYTES pieces (read when called, so a test's monkeypatch applies)."""
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield chunk


def iter_symbols(path: str | os.PathLike, cfg: DataConfig, *, hasher: hashlib._Hash | None = None,
                 on_bytes: Callable[[int], None] | None = None) -> Iterator[np.ndarray]:
    """Yield the file's symbols (Unicode code points, or byte values with `bytes_mode`) as uint32 chunks.

    Strict decoding errors name the byte offset; NUL characters mean a binary file; a leading BOM is
    dropped; CRLF and lone CR become LF unless `keep_newlines` (a CR that ends a chunk waits for the next).
    """
    p, _ = readable_file(path)
    decoder = None if cfg.bytes_mode else codecs.getincrementaldecoder(cfg.encoding)(errors=cfg.errors)
    offset = 0  # bytes consumed before the current chunk
    first = True
    pending_cr = ""
    for chunk in chain(read_chunks(p), [b""]):  # the empty chunk last: the decoder's final call
        final = not chunk
        if hasher is not None and chunk:
            hasher.update(chunk)
        if decoder is None:
            if final:
                return
            yield np.frombuffer(chunk, dtype=np.uint8).astype(np.uint32)
            offset += len(chunk)
            if on_bytes:
                on_bytes(len(chunk))
            continue
        buffered = len(decoder.getstate()[0])
        try:
            text = decoder.decode(chunk, final)
        except UnicodeDecodeError as err:
            at = offset - buffered + err.start
            raise DataError(
                f"{p}: not valid {cfg.encoding} at byte {at} ({err.reason}); "
                f"pass --encoding (e.g. latin-1) or --errors replace") from None
        except (UnicodeError, ValueError) as err:  # e.g. utf-16 without a BOM: no offset to name
            raise DataError(f"{p}: not valid {cfg.encoding} near byte {offset} ({err}); "
                            f"pass another --encoding or --errors replace") from None
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
            cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
            nul = np.flatnonzero(cps == 0)
            if len(nul):
                raise DataError(f"{p}: looks like a binary file (NUL character near byte "
                                f"{offset + int(nul[0])}); use --bytes to model raw bytes")
            yield cps
        offset += len(chunk)
        if on_bytes and chunk:
            on_bytes(len(chunk))


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
                raise VocabularyError(f"{int(bad.sum())} character(s) not in this model's vocabulary: "
                                      f"{unknown_symbols(self, unknown)}")
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
        raise VocabularyError(f"the model's vocabulary is of {kinds[base.bytes_mode]}, this corpus's of "
                              f"{kinds[new.bytes_mode]} (--bytes must match)")
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
        raise VocabularyError(f"{what}: {sum(unknown.values())} symbol(s) not in the model's vocabulary: "
                              f"{unknown_symbols(new, unknown)}")
    return remap.astype(id_dtype(len(new)))[np.asarray(ids)]


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
        return Corpus(translate_ids(self.ids, self.vocab, vocab, what=self.path), vocab, self.sha256, self.path,
                      self.data)

    def split(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Contiguous train / val / test (nanoGPT's split: train is the first int(n*(1-val-test)))."""
        n = len(self.ids)
        train_end = int(n * (1 - self.data.val_frac - self.data.test_frac))
        val_end = int(n * (1 - self.data.test_frac))
        return self.ids[:train_end], self.ids[train_end:val_end], self.ids[val_end:]


def scan_file(path: str | os.PathLike, cfg: DataConfig, **kw) -> tuple[np.ndarray, int, str]:
    """First pass: which symbols occur, how many there are, and the sha256 of the raw bytes."""
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


def encode_file(path: str | os.PathLike, cfg: DataConfig, *, on_bytes: Callable[[int], None] | None = None
                ) -> Corpus:
    """Encode a corpus in memory in two streaming passes (vocabulary, then ids), in the smallest dtype that fits
    (`charnn.corpus_cache` writes the same ids to a memory-mapped file instead)."""
    symbols, count, sha = scan_file(path, cfg, on_bytes=on_bytes)
    vocab = corpus_vocab(path, symbols, count, cfg)
    dtype = id_dtype(len(vocab))
    ids = np.empty(count, dtype=dtype)
    lut = vocab.lut.astype(dtype)  # every symbol is in the vocabulary: no -1 to wrap
    pos = 0
    for cps in iter_symbols(path, cfg, on_bytes=on_bytes):
        ids[pos:pos + len(cps)] = lut[cps]
        pos += len(cps)
    if pos != count:
        raise DataError(f"{path}: file changed while it was being read")
    return Corpus(ids, vocab, sha, str(path), cfg)


def read_ids(path: str | os.PathLike, vocab: Vocab, cfg: DataConfig, *, skip_unknown: bool = False
             ) -> tuple[np.ndarray, dict[int, int]]:
    """Encode a held-out file with an existing vocabulary; returns ids and {unknown symbol: count}."""
    parts, unknown = [], {}
    for cps in iter_symbols(path, cfg):
        ids, unk = vocab.map_symbols(cps, skip_unknown=True)
        parts.append(ids)
        for k, v in unk.items():
            unknown[k] = unknown.get(k, 0) + v
    if unknown and not skip_unknown:
        raise VocabularyError(f"{path}: {sum(unknown.values())} character(s) not in the model's vocabulary "
                              f"({unknown_symbols(vocab, unknown)}); pass --skip-unknown to drop them")
    ids = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    return ids, unknown
