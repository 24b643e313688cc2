"""The corpus cache: the same ids as `charnn.data.encode_file` for any chunking, memory-mapped, reused by content."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

import charnn.data as data
import charnn.textfile as textfile
from charnn.config import DataConfig
from charnn.errors import CharnnWarning, CheckpointWriteError, DataError
from charnn.store.corpus_cache import EncodeProgress, cache_key, cached_corpus, load_corpus

ALPHABET = list("ab \n.") + ["é", "€", "日", "😀", "𝄞"]  # 1-, 2-, 3- and 4-byte UTF-8


def _same_as_encode_file(path: Path, cfg: DataConfig, cache: Path) -> None:
    want = data.encode_file(path, cfg)
    got = load_corpus(path, cfg, cache_dir=cache)
    assert isinstance(got.ids, np.memmap)
    assert got.vocab == want.vocab and got.sha256 == want.sha256
    assert got.ids.dtype == want.ids.dtype
    np.testing.assert_array_equal(np.asarray(got.ids), want.ids)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7])
def test_chunk_boundaries_inside_4_byte_characters(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(textfile, "CHUNK_BYTES", chunk)
    path = tmp_path / "c.txt"
    path.write_text("a😀b𝄞\n" * 5 + "日é", encoding="utf-8")  # 😀 at byte 1: chunk 2 splits it 1+3
    _same_as_encode_file(path, DataConfig(), tmp_path / "cache")


def test_random_texts_and_options_match_the_exact_decoder(tmp_path, monkeypatch):
    rng = random.Random(0)
    for trial in range(60):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 40)))
        if trial % 7 == 0:
            text = "\ufeff" + text  # BOM: dropped
        if trial % 5 == 0:
            text += "\r\nx\r"  # CR: the fast path hands over to charnn.data
        path = tmp_path / f"t{trial}.txt"
        path.write_text(text, encoding="utf-8", newline="")
        monkeypatch.setattr(textfile, "CHUNK_BYTES", rng.choice([1, 2, 3, 4, 6, 1 << 16]))
        cfg = DataConfig(keep_newlines=trial % 3 == 0)
        _same_as_encode_file(path, cfg, tmp_path / "cache")


def test_bad_utf8_and_binary_give_the_same_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello \xff world")
    with pytest.raises(DataError, match="not valid utf-8 at byte 6"):
        load_corpus(bad, DataConfig(), cache_dir=tmp_path / "cache")
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"abc\x00def")
    with pytest.raises(DataError, match="binary"):
        load_corpus(nul, DataConfig(), cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.ids"))


@pytest.mark.parametrize(
    "content, message", [(b"\xef\xbb\xbf", "no characters after decoding"), (b"  \n\t \n", "only whitespace")]
)
def test_empty_or_blank_text_gives_the_same_error_as_encode_file(tmp_path, content, message):
    path = tmp_path / "blank.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        data.encode_file(path, DataConfig())
    with pytest.raises(DataError, match=message) as cached:
        load_corpus(path, DataConfig(), cache_dir=tmp_path / "cache")
    assert str(cached.value) == str(err.value)


def test_a_failed_ids_write_leaves_no_entry_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "c.txt"
    path.write_text("abcdef\n" * 20)
    cache = tmp_path / "cache"

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(CheckpointWriteError, match="cannot write the corpus cache .*No space left on device"):
        load_corpus(path, DataConfig(), cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_dtype_follows_the_vocabulary_size(tmp_path):
    path = tmp_path / "wide.txt"
    path.write_text("".join(chr(0x4E00 + i) for i in range(300)), encoding="utf-8")
    corpus = load_corpus(path, DataConfig(), cache_dir=tmp_path / "cache")
    assert corpus.ids.dtype == np.uint16 and len(corpus.vocab) == 300


def test_reuse_is_keyed_by_content_not_mtime(tmp_path):
    cache = tmp_path / "cache"
    path = tmp_path / "c.txt"
    path.write_text("hello world\n" * 10)
    first = load_corpus(path, DataConfig(), cache_dir=cache)
    entry = cache / f"{cache_key(first.sha256, DataConfig())}.ids"
    built = entry.stat().st_mtime_ns
    os.utime(path, (1, 1))  # touched, same bytes: reused
    events: list[EncodeProgress] = []
    again = load_corpus(path, DataConfig(), cache_dir=cache, on_progress=events.append)
    assert {e.phase for e in events} == {"hash"} and entry.stat().st_mtime_ns == built
    np.testing.assert_array_equal(np.asarray(again.ids), np.asarray(first.ids))
    copy = tmp_path / "copy.txt"  # another path, same bytes: the same entry
    copy.write_bytes(path.read_bytes())
    assert load_corpus(copy, DataConfig(), cache_dir=cache).sha256 == first.sha256
    assert len(list(cache.glob("*.ids"))) == 1
    path.write_text("hello world!\n" * 10)  # new content: a new entry
    assert load_corpus(path, DataConfig(), cache_dir=cache).sha256 != first.sha256
    assert len(list(cache.glob("*.ids"))) == 2
    load_corpus(path, DataConfig(keep_newlines=True), cache_dir=cache)  # other decoding options: another
    assert len(list(cache.glob("*.ids"))) == 3
    load_corpus(path, DataConfig(val_frac=0.2), cache_dir=cache)  # split fractions do not change the ids
    assert len(list(cache.glob("*.ids"))) == 3


def test_a_truncated_entry_is_rebuilt(tmp_path):
    cache = tmp_path / "cache"
    path = tmp_path / "c.txt"
    path.write_text("abcdef\n" * 20)
    first = load_corpus(path, DataConfig(), cache_dir=cache)
    entry = cache / f"{cache_key(first.sha256, DataConfig())}.ids"
    del first
    entry.write_bytes(entry.read_bytes()[:10])
    with pytest.warns(CharnnWarning, match="damaged"):
        again = load_corpus(path, DataConfig(), cache_dir=cache)
    assert len(again.ids) == 140 and not list(cache.glob(".*.tmp"))


def test_progress_reports_every_pass_to_the_total(tmp_path, monkeypatch):
    monkeypatch.setattr(textfile, "CHUNK_BYTES", 64)
    path = tmp_path / "c.txt"
    path.write_text("x" * 1000)
    events: list[EncodeProgress] = []
    load_corpus(path, DataConfig(), cache_dir=tmp_path / "cache", on_progress=events.append)
    for phase in ("hash", "scan", "encode"):
        done = [e.done for e in events if e.phase == phase]
        assert done[0] == 0 and done[-1] == 1000 and done == sorted(done)


def test_training_reads_the_memory_map(tmp_path, tiny_corpus):
    from charnn.training.train import train
    from tests.conftest import tiny_configs

    model, cfg, data_cfg = tiny_configs(max_iters=4, eval_every=4, sample_length=0)
    a = train(
        tiny_corpus,
        model_cfg=model,
        train_cfg=cfg,
        data_cfg=data_cfg,
        out_dir=tmp_path / "a",
        cache_dir=tmp_path / "cache",
    )
    b = train(tiny_corpus, model_cfg=model, train_cfg=cfg, data_cfg=data_cfg, out_dir=tmp_path / "b")
    assert a.final_val_loss == b.final_val_loss  # bit-for-bit the same run as the in-memory encoding
    assert list((tmp_path / "cache").glob("*.ids"))


def test_ids_changed_in_place_are_caught_and_rebuilt(tmp_path):
    """Same size, another tail: the sha256 recorded with the entry catches it; training rebuilds it, and the
    read-only lookup (eval's) skips it, each with a warning."""
    cache, path = tmp_path / "cache", tmp_path / "c.txt"
    path.write_text("abcdef\n" * 20 + "xyz")
    want = np.asarray(load_corpus(path, DataConfig(), cache_dir=cache).ids).copy()
    entry = next(cache.glob("*.ids"))
    entry.write_bytes(entry.read_bytes()[:-2] + bytes([0, 0]))
    sha = data.encode_file(path, DataConfig()).sha256
    with pytest.warns(CharnnWarning, match="damaged"):
        assert cached_corpus(path, sha, DataConfig(), [cache]) is None
    with pytest.warns(CharnnWarning, match="damaged"):
        again = load_corpus(path, DataConfig(), cache_dir=cache)
    np.testing.assert_array_equal(np.asarray(again.ids), want)
    np.testing.assert_array_equal(np.asarray(cached_corpus(path, sha, DataConfig(), [cache]).ids), want)


@pytest.mark.parametrize("symbols", [[], "abc"])
def test_an_entry_whose_vocabulary_no_corpus_has_is_rebuilt(tmp_path, symbols):
    cache, path = tmp_path / "cache", tmp_path / "c.txt"
    path.write_text("abcdef\n" * 20)
    want = np.asarray(load_corpus(path, DataConfig(), cache_dir=cache).ids).copy()
    meta = next(p for p in cache.iterdir() if p.suffix == ".json")
    record = json.loads(meta.read_text())
    record["vocab"]["symbols"] = symbols
    meta.write_text(json.dumps(record))
    with pytest.warns(CharnnWarning, match="damaged"):
        again = load_corpus(path, DataConfig(), cache_dir=cache)
    np.testing.assert_array_equal(np.asarray(again.ids), want)


def test_the_read_only_lookup_creates_nothing(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("abc\n")
    assert cached_corpus(path, "0" * 64, DataConfig(), [tmp_path / "nowhere"]) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


@pytest.mark.parametrize("change", ["append", "rewrite", "truncate"])
def test_a_corpus_changing_between_passes(tmp_path, monkeypatch, change):
    """Every pass reads the bytes the hash pass read: appended text is left out of a consistent entry; a
    rewrite or truncation is a DataError and leaves no entry."""
    cache, path = tmp_path / "cache", tmp_path / "c.txt"
    text = "abcdef\n" * 200
    path.write_text(text)
    real = textfile.read_chunks

    def changing(p, size=None, **kw):
        if kw.get("sha256"):  # the encode pass
            with open(path, {"append": "ab", "rewrite": "r+b", "truncate": "r+b"}[change]) as f:
                f.write(b"Z" * 30)
                if change == "truncate":
                    f.truncate(100)
        return real(p, size, **kw)

    monkeypatch.setattr(textfile, "CHUNK_BYTES", 64)
    import charnn.store.fast_utf8 as fast_utf8

    monkeypatch.setattr(fast_utf8, "read_chunks", changing)  # the encode pass of a UTF-8 corpus
    if change != "append":
        with pytest.raises(DataError, match="changed while it was being read"):
            load_corpus(path, DataConfig(), cache_dir=cache)
        assert not list(cache.glob("*.json")) and not list(cache.glob(".*.tmp"))
        return
    got = load_corpus(path, DataConfig(), cache_dir=cache)
    assert got.vocab.decode(np.asarray(got.ids)) == text
