"""Benchmark the novelty index (charnn.novelty): build time, size on disk, load time from the cache (with its
sha256 check) and the time to check a 1,000-character sample, on a 1 MB corpus and, with --large, a 100 MB one.

The 1 MB corpus is the first 1,000,000 characters of tiny shakespeare (or --corpus). The 100 MB one is its lines
in a random order, over and over: lines recur but long passages do not, as in a large real corpus. Three kinds of
sample: novel (words of the corpus in a random order: only short copies), half copied (500 characters of the
corpus, then novel text) and copied (1,000 characters of the corpus: the longest comparisons).

    python benchmarks/novelty.py              # 1 MB: the pydivsufsort and numpy builders, the queries
    python benchmarks/novelty.py --large      # and 100 MB (pydivsufsort; about 1.5 GB of memory while it builds)
    python benchmarks/novelty.py --quick      # 200 kB, a smoke test
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import REPO, machine, parser

from charnn.config import DataConfig
from charnn.data import Corpus, Vocab
from charnn.novelty.index import corpus_index, index_paths
from charnn.novelty.spans import suffix_array_numpy

SAMPLE = 1000
QUERIES = 30


def make_corpus(text: bytes) -> Corpus:
    """`text` (ASCII or UTF-8 bytes, taken as bytes) as a corpus in its own sorted vocabulary."""
    raw = np.frombuffer(text, dtype=np.uint8)
    symbols = np.unique(raw)
    lut = np.zeros(256, dtype=np.uint8)
    lut[symbols] = np.arange(len(symbols))
    sha = hashlib.sha256(text).hexdigest()
    return Corpus(lut[raw], Vocab(tuple(int(s) for s in symbols), True), sha, "benchmark", DataConfig(bytes_mode=True))


def samples(text: bytes, rng: random.Random) -> dict[str, list[bytes]]:
    words = text.split()
    out: dict[str, list[bytes]] = {"novel": [], "half_copied": [], "copied": []}
    for _ in range(QUERIES):
        novel = b" ".join(rng.choice(words) for _ in range(SAMPLE // 3))[:SAMPLE]
        at = rng.randrange(len(text) - SAMPLE)
        out["novel"].append(novel)
        out["half_copied"].append(text[at : at + SAMPLE // 2] + novel[: SAMPLE // 2])
        out["copied"].append(text[at : at + SAMPLE])
    return out


def measure(text: bytes, label: str, *, numpy_too: bool, rng: random.Random) -> dict:
    corpus = make_corpus(text)
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        built = corpus_index(corpus, [cache])  # builds and writes (sa + its sha256)
        build_s = time.perf_counter() - t
        size = index_paths(Path(cache), corpus)[1].stat().st_size
        t = time.perf_counter()
        index = corpus_index(corpus, [cache])  # reads back, checking the sha256
        load_s = time.perf_counter() - t
        assert isinstance(index.sa, np.memmap) and index.sa[:100].tolist() == built.sa[:100].tolist()
        query_ms = {}
        for kind, texts in samples(text, rng).items():
            times = []
            for sample in texts:
                t = time.perf_counter()
                index.check(sample)
                times.append(1000 * (time.perf_counter() - t))
            query_ms[kind] = round(statistics.median(times), 2)
        del index, built
    row = {
        "corpus": label,
        "chars": len(text),
        "build_s": round(build_s, 2),
        "index_bytes": size,
        "bytes_per_char": round(size / len(text), 2),
        "load_s": round(load_s, 3),
        "query_ms_median": query_ms,
    }
    if numpy_too:
        t = time.perf_counter()
        suffix_array_numpy(corpus.ids)
        row["numpy_build_s"] = round(time.perf_counter() - t, 2)
        row["numpy_build_ratio"] = round(row["numpy_build_s"] / max(build_s, 1e-9), 1)  # numpy's time / the default
    print(
        f"{label}: build {row['build_s']} s"
        + (f" (numpy {row['numpy_build_s']} s, ratio {row['numpy_build_ratio']})" if numpy_too else "")
        + f", index {size / 1e6:.1f} MB ({row['bytes_per_char']} bytes/char), load {row['load_s']} s, "
        f"1,000-character sample: " + ", ".join(f"{k} {v} ms" for k, v in query_ms.items()),
        flush=True,
    )
    return row


def shuffled_lines(text: bytes, size: int, rng: random.Random) -> bytes:
    lines = text.splitlines(keepends=True)
    parts, total = [], 0
    while total < size:
        rng.shuffle(lines)
        block = b"".join(lines)
        parts.append(block)
        total += len(block)
    return b"".join(parts)[:size]


def main() -> None:
    ap = parser(__doc__, "200 kB only (a smoke test)")
    ap.add_argument("--large", action="store_true", help="also 100 MB of the corpus's lines in random order")
    ap.add_argument("--corpus", type=Path, default=REPO / "data" / "tinyshakespeare.txt", help="the 1 MB source")
    args = ap.parse_args()
    machine()
    rng = random.Random(0)
    source = args.corpus.read_bytes()
    small = 200_000 if args.quick else 1_000_000
    text = (source * (small // len(source) + 1))[:small]
    rows = [measure(text, f"{small / 1e6:g} MB", numpy_too=True, rng=rng)]
    if args.large:
        big = shuffled_lines(source, 100_000_000, rng)
        rows.append(measure(big, "100 MB", numpy_too=False, rng=rng))
    machine()  # the load again: a figure measured under a load above the core count means little
    print(
        json.dumps({"rows": rows, "query_ms_1000_chars_worst": max(max(r["query_ms_median"].values()) for r in rows)})
    )


if __name__ == "__main__":
    main()
