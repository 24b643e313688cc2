"""Reading, vocabulary, split and the truncated-BPTT layout; text input reads the same whatever its newlines
(LF, CRLF, CR, even split across chunks) or byte-order mark, and a corpus too short to train names the counts."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from charnn import textfile
from charnn.config import DataConfig
from charnn.data import Vocab, encode_file, id_dtype, read_ids, unknown_symbols
from charnn.errors import DataError, VocabularyError
from charnn.training.batches import StreamBatcher
from charnn.training.train import train
from tests.conftest import SMALL_MODEL, small_train


def test_vocab_is_sorted_set_and_roundtrips(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("hello, wörld\n", encoding="utf-8")
    corpus = encode_file(p, DataConfig())
    assert [chr(c) for c in corpus.vocab.symbols] == sorted(set("hello, wörld\n"))
    assert corpus.vocab.decode(corpus.ids) == "hello, wörld\n"
    assert corpus.ids.dtype == np.uint8


def test_smallest_dtype():
    assert id_dtype(256) == np.uint8
    assert id_dtype(257) == np.uint16
    assert id_dtype(70000) == np.uint32


def test_bom_stripped_and_newlines_normalised(tmp_path):
    texts = {"lf": "a\nb\nc\n", "crlf": "a\r\nb\r\nc\r\n", "cr": "a\rb\rc\r"}
    encoded = {}
    for name, text in texts.items():
        p = tmp_path / f"{name}.txt"
        p.write_bytes(b"\xef\xbb\xbf" + text.encode())
        encoded[name] = encode_file(p, DataConfig())
    assert all(0xFEFF not in c.vocab.symbols for c in encoded.values())
    assert encoded["lf"].vocab == encoded["crlf"].vocab == encoded["cr"].vocab
    assert np.array_equal(encoded["lf"].ids, encoded["crlf"].ids)
    assert np.array_equal(encoded["lf"].ids, encoded["cr"].ids)
    kept = tmp_path / "kept.txt"
    kept.write_bytes(b"a\r\nb")
    assert 13 in encode_file(kept, DataConfig(keep_newlines=True)).vocab.symbols


def test_crlf_split_across_chunks(tmp_path, monkeypatch):
    p = tmp_path / "t.txt"
    p.write_bytes(b"ab\r\ncd\r\nef")
    monkeypatch.setattr(textfile, "CHUNK_BYTES", 3)  # "ab\r" | "\ncd" | ...
    corpus = encode_file(p, DataConfig())
    assert corpus.vocab.decode(corpus.ids) == "ab\ncd\nef"


def test_multibyte_character_split_across_chunks(tmp_path, monkeypatch):
    text = "a😀b€c" * 5
    p = tmp_path / "t.txt"
    p.write_text(text, encoding="utf-8")
    for size in (1, 2, 3, 5):
        monkeypatch.setattr(textfile, "CHUNK_BYTES", size)
        corpus = encode_file(p, DataConfig())
        assert corpus.vocab.decode(corpus.ids) == text


def test_invalid_utf8_names_the_byte_offset(tmp_path, monkeypatch):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"hello world" + b"\xff" + b"more")
    monkeypatch.setattr(textfile, "CHUNK_BYTES", 4)
    with pytest.raises(DataError, match=r"at byte 11\b.*--encoding"):
        encode_file(p, DataConfig())
    assert (
        encode_file(p, DataConfig(encoding="latin-1"))
        .vocab.decode(encode_file(p, DataConfig(encoding="latin-1")).ids)
        .endswith("ÿmore")
    )
    assert "\ufffd" in encode_file(p, DataConfig(errors="replace")).vocab.decode(
        encode_file(p, DataConfig(errors="replace")).ids
    )


@pytest.mark.parametrize(
    "content, message",
    [(None, "no such file"), (b"", "empty"), (b"ab\x00cd", "binary"), (b"  \n\t \n", "only whitespace")],
)
def test_bad_files(tmp_path, content, message):
    p = tmp_path / "f.txt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(DataError, match=message):
        encode_file(p, DataConfig())


def test_directory_is_an_error(tmp_path):
    with pytest.raises(DataError, match="directory"):
        encode_file(tmp_path, DataConfig())


def test_bytes_mode_reads_anything(tmp_path):
    p = tmp_path / "bin"
    p.write_bytes(bytes([0, 255, 10, 0, 7]))
    corpus = encode_file(p, DataConfig(bytes_mode=True))
    assert corpus.vocab.symbols == (0, 7, 10, 255)
    assert corpus.vocab.decode(corpus.ids) == bytes([0, 255, 10, 0, 7])


def test_split_matches_nanogpt(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("abcdefghij" * 101)
    corpus = encode_file(p, DataConfig())
    train, val, test = corpus.split()
    n = len(corpus.ids)
    assert len(train) == int(n * 0.9) and len(val) == n - int(n * 0.9) and len(test) == 0
    train, val, test = encode_file(p, DataConfig(val_frac=0.1, test_frac=0.1)).split()
    assert (len(train), len(val), len(test)) == (int(n * 0.8), int(n * 0.9) - int(n * 0.8), n - int(n * 0.9))


def test_unknown_characters_are_listed():
    vocab = Vocab(tuple(map(ord, "abc")))
    with pytest.raises(VocabularyError, match="'x'"):
        vocab.encode("abxc")


def test_unknown_characters_show_ten_then_how_many_more(tmp_path):
    vocab = Vocab(tuple(map(ord, "ab")))
    unknown = dict.fromkeys(range(ord("c"), ord("c") + 12), 1)
    assert unknown_symbols(vocab, unknown) == ", ".join(repr(chr(c)) for c in range(ord("c"), ord("m"))) + " and 2 more"
    assert unknown_symbols(Vocab((0, 1), bytes_mode=True), {7: 3}) == "byte 0x07"
    with pytest.raises(VocabularyError) as err:
        vocab.encode("abxxy")
    assert str(err.value) == "2 characters (3 occurrences) not in this model's vocabulary: 'x', 'y'"
    p = tmp_path / "held.txt"
    p.write_text("abxxy")
    with pytest.raises(VocabularyError) as err:
        read_ids(p, vocab, DataConfig())
    assert str(err.value) == (
        f"{p}: 2 characters (3 occurrences) not in the model's vocabulary ('x', 'y'); pass --skip-unknown to drop them"
    )
    assert read_ids(p, vocab, DataConfig(), skip_unknown=True)[1] == {ord("x"): 2, ord("y"): 1}


def test_batch_rows_continue_their_streams():
    ids = np.arange(1000) % 251
    B, T = 4, 8
    batcher = StreamBatcher(ids.astype(np.uint8), batch_size=B, seq_len=T, seed=0)
    L = batcher.row_len
    for step in range(batcher.batches_per_epoch):
        x, y = batcher.batch(step)
        assert x.shape == y.shape == (B, T) and x.dtype == torch.int64
        for r in range(B):
            start = r * L + step * T  # epoch 0 has no offset
            assert x[r].tolist() == ids[start : start + T].tolist()
            assert y[r].tolist() == ids[start + 1 : start + T + 1].tolist()
        if step:
            assert torch.equal(x[:, 0], prev_y[:, -1])  # noqa: F821 - row r continues where it stopped
        prev_y = y  # noqa: F841


def test_batches_are_a_pure_function_of_seed_and_step():
    ids = (np.arange(5000) % 97).astype(np.uint8)
    a = StreamBatcher(ids, batch_size=3, seq_len=7, seed=5)
    b = StreamBatcher(ids, batch_size=3, seq_len=7, seed=5)
    for step in (0, 1, a.batches_per_epoch, 3 * a.batches_per_epoch + 2):
        assert torch.equal(a.batch(step)[0], b.batch(step)[0])
    assert any(a.epoch_offset(e) != 0 for e in range(1, 10))  # later epochs shift the windows


def test_state_resets_are_a_pure_function_of_seed_and_step_and_split_by_rank():
    ids = (np.arange(5000) % 97).astype(np.uint8)
    whole, again, other = (StreamBatcher(ids, batch_size=8, seq_len=7, seed=seed) for seed in (5, 5, 6))
    ranks = [StreamBatcher(ids, batch_size=8, seq_len=7, seed=5, rank=r, world=2) for r in range(2)]
    masks = [whole.fresh_streams(step, 0.25) for step in range(200)]
    for step, mask in enumerate(masks):
        assert mask.shape == (8,) and mask.dtype == torch.bool
        assert torch.equal(mask, again.fresh_streams(step, 0.25))  # a resume draws the same
        assert torch.equal(torch.cat([b.fresh_streams(step, 0.25) for b in ranks]), mask)  # each rank its rows
    assert 0.15 < float(torch.stack(masks).float().mean()) < 0.35  # about a quarter of the streams
    assert any(not torch.equal(m, other.fresh_streams(s, 0.25)) for s, m in enumerate(masks))  # another seed
    assert whole.fresh_streams(3, 0.0) is None and bool(whole.fresh_streams(3, 1.0).all())


def test_reshuffle_reorders_chunks_from_the_second_epoch_and_is_a_pure_function_of_seed_and_step():
    ids = np.arange(3000, dtype=np.int64)  # each id is its own position: a batch shows where it was read from
    B, T, C = 4, 8, 32
    plain = StreamBatcher(ids, batch_size=B, seq_len=T, seed=3)
    shuffled, again = (StreamBatcher(ids, batch_size=B, seq_len=T, seed=3, reshuffle=C) for _ in range(2))
    per_epoch = plain.batches_per_epoch
    for step in range(per_epoch):  # the first epoch reads the text in its own order
        assert torch.equal(shuffled.batch(step)[0], plain.batch(step)[0])
    body = shuffled.chunks * C
    assert shuffled.chunks == (B * plain.row_len) // C and body < B * plain.row_len  # a partial chunk stays last
    for epoch in (1, 2):
        where = shuffled.reordered(epoch, np.arange(B * plain.row_len))
        assert sorted(where.tolist()) == list(range(B * plain.row_len))  # every id once: a reordering
        assert where[body:].tolist() == list(range(body, B * plain.row_len))
        chunks = where[:body].reshape(-1, C)
        assert (np.diff(chunks, axis=1) == 1).all() and (chunks[:, 0] % C == 0).all()  # whole chunks, kept intact
        assert chunks[:, 0].tolist() != list(range(0, body, C))
    assert not np.array_equal(shuffled.reordered(1, np.arange(body)), shuffled.reordered(2, np.arange(body)))
    for step in (2 * per_epoch + 5, per_epoch + 1, 2 * per_epoch + 5):  # back and forth: the cache follows
        x, y = shuffled.batch(step)
        assert torch.equal(x, again.batch(step)[0]) and torch.equal(x[:, 1:], y[:, :-1])
        jumps = x[:, 1:] - x[:, :-1] != 1  # a row moves on by one id, except into another chunk
        assert bool((x[:, 1:][jumps] % C == 0).all())
    assert not torch.equal(shuffled.batch(per_epoch + 1)[0], plain.batch(per_epoch + 1)[0])
    ranks = [StreamBatcher(ids, batch_size=B, seq_len=T, seed=3, rank=r, world=2, reshuffle=C) for r in range(2)]
    assert torch.equal(torch.cat([b.batch(per_epoch + 3)[0] for b in ranks]), shuffled.batch(per_epoch + 3)[0])
    other = StreamBatcher(ids, batch_size=B, seq_len=T, seed=4, reshuffle=C)
    assert not np.array_equal(other.reordered(1, np.arange(body)), shuffled.reordered(1, np.arange(body)))
    positions = np.arange(B * plain.row_len).reshape(B, -1)  # a GPU's batcher maps torch positions alike
    assert shuffled.reordered(2, torch.from_numpy(positions)).tolist() == shuffled.reordered(2, positions).tolist()
    single = StreamBatcher(ids, batch_size=B, seq_len=T, seed=3, reshuffle=2000)  # one whole chunk: no reorder
    assert torch.equal(single.batch(per_epoch + 1)[0], plain.batch(per_epoch + 1)[0])


def test_too_short_for_one_batch():
    with pytest.raises(DataError, match=r"4 x 9 = 36"):
        StreamBatcher(np.zeros(35, dtype=np.uint8), batch_size=4, seq_len=8, seed=0)
    StreamBatcher(np.zeros(36, dtype=np.uint8), batch_size=4, seq_len=8, seed=0)


# --- text input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 1, 2, 3])
def test_lf_crlf_cr_encode_identically(tmp_path: Path, monkeypatch, chunk):
    if chunk:
        monkeypatch.setattr(textfile, "CHUNK_BYTES", chunk)  # a CR at a chunk end must wait for its LF
    text = "ab\ncd\n\nx\u00e9\n"
    encoded = []
    for nl in ("\n", "\r\n", "\r"):
        path = tmp_path / f"nl{len(encoded)}.txt"
        path.write_bytes(text.replace("\n", nl).encode("utf-8"))
        corpus = encode_file(path, DataConfig())
        encoded.append((corpus.vocab, corpus.ids.tolist()))
    assert encoded[0] == encoded[1] == encoded[2]
    assert 13 not in encoded[0][0].symbols
    kept = encode_file(tmp_path / "nl1.txt", DataConfig(keep_newlines=True))
    assert 13 in kept.vocab.symbols


def test_bom_is_never_in_the_vocabulary(tmp_path: Path, monkeypatch):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf" + b"hello\r\nworld\n")
    for chunk in (None, 1, 2):
        if chunk:
            monkeypatch.setattr(textfile, "CHUNK_BYTES", chunk)
        corpus = encode_file(path, DataConfig())
        assert 0xFEFF not in corpus.vocab.symbols
        assert corpus.vocab.decode(corpus.ids.tolist()) == "hello\nworld\n"
    path.write_bytes("\ufeff".encode("utf-16-le") + "hi there\n".encode("utf-16-le"))
    assert 0xFEFF not in encode_file(path, DataConfig(encoding="utf-16-le")).vocab.symbols


@pytest.mark.parametrize("size", [0, 1, 16, 17])
def test_too_short_corpus_names_the_counts(tmp_path: Path, size: int):
    path = tmp_path / "short.txt"
    path.write_text(("abcdefgh" * 10)[:size], encoding="utf-8")
    with pytest.raises(DataError) as err:
        train(path, model_cfg=SMALL_MODEL, train_cfg=small_train(batch_size=1, seq_len=16), out_dir=tmp_path / "r")
    assert re.search(r"\d", str(err.value))
    assert "empty" in str(err.value) if size == 0 else "character" in str(err.value)


def test_smallest_corpus_that_fits_one_window_trains(tmp_path: Path):
    path = tmp_path / "fits.txt"
    path.write_text(("abcdefgh" * 10)[:17], encoding="utf-8")
    result = train(
        path,
        model_cfg=SMALL_MODEL,
        data_cfg=DataConfig(val_frac=0.0),
        train_cfg=small_train(batch_size=1, seq_len=16, max_iters=2),
        out_dir=tmp_path / "r",
    )
    assert result.steps == 2


@pytest.mark.parametrize("change", ["append", "rewrite", "truncate", "vanish"])
def test_a_file_changing_between_the_two_passes(tmp_path: Path, monkeypatch, change: str):
    """encode_file's passes read the bytes the file held when the first began: appended text is left out,
    and a rewrite, truncation or removal before the second pass is a DataError, never ids of two versions."""
    import charnn.data

    path = tmp_path / "c.txt"
    text = "hello world\n" * 100
    path.write_text(text)
    real = charnn.data.iter_symbols

    def changing(p, cfg, **kw):
        if kw.get("sha256"):
            if change == "vanish":
                path.unlink()
            else:
                with open(path, "ab" if change == "append" else "r+b") as f:
                    f.write("é".encode() * 20)  # a symbol the scan never saw
                    if change == "truncate":
                        f.truncate(200)
        return real(p, cfg, **kw)

    monkeypatch.setattr(textfile, "CHUNK_BYTES", 50)
    monkeypatch.setattr(charnn.data, "iter_symbols", changing)
    if change == "append":
        corpus = encode_file(path, DataConfig())
        assert corpus.vocab.decode(corpus.ids) == text
        return
    with pytest.raises(DataError, match="no such file" if change == "vanish" else "changed while it was being read"):
        encode_file(path, DataConfig())


@pytest.mark.parametrize(
    "target, message",
    [
        ("fifo", "pipe (FIFO)"),
        ("/dev/zero", "character device"),
        ("/dev/null", "character device"),
        ("dir", "is a directory"),
    ],
)
def test_only_regular_files_are_read(tmp_path: Path, target: str, message: str):
    """Refused when opened, before a byte is read: a FIFO without a writer must not wait forever."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    path = target if target.startswith("/") else tmp_path / target
    for read in (lambda: encode_file(path, DataConfig()), lambda: read_ids(path, Vocab((97,)), DataConfig())):
        with pytest.raises(DataError, match=re.escape(message)):
            read()
