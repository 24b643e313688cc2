"""Novelty of a sample (charnn.novelty): the suffix array and the matching statistics against brute force on small
random texts, the index's cache beside the corpus cache, a missing or changed corpus, and where novelty shows:
`charnn sample`'s stderr line, samples.jsonl, the report, the server and the exported page."""

import json
import shutil
import sys
import warnings

import numpy as np
import pytest

from charnn.config import DataConfig
from charnn.data import Corpus, Vocab, encode_file
from charnn.errors import CharnnWarning, NoveltyUnavailable
from charnn.novelty import index as novelty_index
from charnn.novelty.index import corpus_index, index_paths
from charnn.novelty.run import RunNovelty, run_index
from charnn.novelty.spans import Novelty, matching_statistics, novelty, percent, suffix_array, suffix_array_numpy
from charnn.store.rundir import load_run
from tests.conftest import TINY_TEXT, corpus_of, invoke

rng = np.random.default_rng(1234)


def brute_matches(pattern: list[int], corpus: list[int]) -> list[int]:
    """For each i, the longest prefix of pattern[i:] found anywhere in `corpus`, by trying every start."""
    out = []
    for i in range(len(pattern)):
        best = 0
        for j in range(len(corpus)):
            k = 0
            while i + k < len(pattern) and j + k < len(corpus) and pattern[i + k] == corpus[j + k]:
                k += 1
            best = max(best, k)
        out.append(best)
    return out


def brute_copied(pattern: list[int], corpus: list[int], span: int) -> set[int]:
    """Positions of `pattern` inside some window of at least `span` characters that occurs in `corpus`."""
    text = corpus
    inside = set()
    for i in range(len(pattern)):
        for j in range(i + span, len(pattern) + 1):
            window = pattern[i:j]
            if any(text[s : s + len(window)] == window for s in range(len(text) - len(window) + 1)):
                inside.update(range(i, j))
    return inside


def random_text(n: int, symbols: int) -> np.ndarray:
    return rng.integers(0, symbols, n).astype(np.uint8)


def test_both_builders_sort_every_suffix():
    for _ in range(200):
        ids = random_text(int(rng.integers(1, 70)), int(rng.integers(1, 5)))
        expected = sorted(range(len(ids)), key=lambda i: ids[i:].tolist())
        assert suffix_array_numpy(ids).tolist() == expected
        assert suffix_array(ids).tolist() == expected


def test_matching_statistics_equal_brute_force_and_point_at_a_copy():
    for _ in range(300):
        k = int(rng.integers(1, 5))
        corpus = random_text(int(rng.integers(1, 90)), k)
        pattern = rng.integers(0, k + 1, int(rng.integers(1, 40)))  # symbol k is not in the corpus
        lengths, offsets = matching_statistics(pattern, corpus, suffix_array(corpus))
        assert lengths.tolist() == brute_matches(pattern.tolist(), corpus.tolist())
        for i, (n, at) in enumerate(zip(lengths, offsets, strict=True)):
            assert (at == -1) if n == 0 else corpus[at : at + n].tolist() == pattern[i : i + n].tolist()


def test_novelty_equals_brute_force():
    for _ in range(150):
        k = int(rng.integers(1, 4))
        corpus = random_text(int(rng.integers(1, 60)), k)
        # half the samples quote the corpus in places
        pattern = np.concatenate([rng.integers(0, k + 1, 8), corpus[5:25], rng.integers(0, k + 1, 8)])
        span = int(rng.integers(1, 8))
        got = novelty(pattern, corpus, suffix_array(corpus), copy_span=span)
        inside = brute_copied(pattern.tolist(), corpus.tolist(), span)
        assert got.longest == max(brute_matches(pattern.tolist(), corpus.tolist()))
        assert got.copied == len(inside)
        assert {i for a, b in got.spans for i in range(a, b)} == inside
        if got.longest:
            a, n = got.sample_offset, got.longest
            assert corpus[got.corpus_offset : got.corpus_offset + n].tolist() == pattern[a : a + n].tolist()


def test_a_table_compares_symbols_whatever_the_ids():
    """A fine-tuned model's vocabulary is not sorted: the index sorts by symbol, and one array serves both."""
    text = "".join(rng.choice(list("abcde"), 300))
    sorted_vocab = Vocab(tuple(sorted(map(ord, set(text)))))
    shuffled = Vocab(tuple(reversed(sorted_vocab.symbols)) + (ord("z"),))
    own = Corpus(sorted_vocab.encode(text), sorted_vocab, "x" * 64, "t", DataConfig())
    other = Corpus(shuffled.encode(text), shuffled, "x" * 64, "t", DataConfig())
    a, b = corpus_index(own), corpus_index(other)
    assert a.sa.tolist() == b.sa.tolist()
    sample = text[40:90] + "zz" + text[7:30]
    assert a.check(sample) == b.check(sample) == b.check(shuffled.encode(sample), shuffled)
    assert a.check(sample).longest == 50


def test_the_line_and_the_share():
    found = Novelty(100, 43, 3, 12345, 20, 12, ((3, 15),))
    assert found.line() == (
        "novelty: longest copied span 43 characters (corpus offset 12,345); 12% of characters in copied "
        "spans of 20 or more"
    )
    assert Novelty(10, 0, 0, None, 20, 0).line() == (
        "novelty: longest copied span 0 characters; 0% of characters in copied spans of 20 or more"
    )
    assert (percent(0.004), percent(0.0), percent(1.0)) == ("<1%", "0%", "100%")


def test_without_pydivsufsort_numpy_builds_up_to_its_limit(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydivsufsort", None)
    ids = random_text(500, 3)
    assert suffix_array(ids).tolist() == suffix_array_numpy(ids).tolist()
    with pytest.raises(ImportError, match=r"charnn\[novelty\]"):
        suffix_array(ids, numpy_limit=100)


# --- the cache ----------------------------------------------------------------------------------------------------


def tiny_corpus_obj(tmp_path) -> Corpus:
    path = tmp_path / "tiny.txt"
    path.write_text(TINY_TEXT, encoding="utf-8")
    return encode_file(path, DataConfig())


def test_the_index_is_cached_read_back_and_rebuilt_when_damaged(tmp_path, monkeypatch):
    corpus = tiny_corpus_obj(tmp_path)
    cache = tmp_path / "cache"
    first = corpus_index(corpus, [cache])
    meta_path, sa_path = index_paths(cache, corpus)
    assert sa_path.stat().st_size == 4 * len(corpus.ids) and json.loads(meta_path.read_text())["count"] == len(
        corpus.ids
    )
    monkeypatch.setattr(novelty_index, "suffix_array", lambda ids: pytest.fail("built again"))
    again = corpus_index(corpus, [tmp_path / "elsewhere", cache])  # found in any of the directories
    assert isinstance(again.sa, np.memmap) and again.sa.tolist() == first.sa.tolist()
    monkeypatch.undo()
    raw = bytearray(sa_path.read_bytes())
    raw[10] ^= 1
    sa_path.write_bytes(bytes(raw))
    with pytest.warns(CharnnWarning, match="is damaged"):
        rebuilt = corpus_index(corpus, [cache])
    assert rebuilt.sa.tolist() == first.sa.tolist() and sa_path.read_bytes() == first.sa.tobytes()


def test_a_corpus_too_large_for_the_index_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(novelty_index, "MAX_INDEX_CHARS", 100)
    with pytest.raises(NoveltyUnavailable, match="covers corpora of up to 100"):
        corpus_index(tiny_corpus_obj(tmp_path))


# --- a run: the CLI, samples.jsonl, the server, the report ----------------------------------------------------------


@pytest.fixture
def novelty_run(run_dir, tmp_path, monkeypatch):
    """A copy of the base run reading its own copy of the corpus, with the working directory in tmp_path (so no
    checkpoints/.cache of the checkout)."""
    monkeypatch.chdir(tmp_path)
    corpus = tmp_path / "corpus.txt"
    shutil.copyfile(corpus_of(run_dir), corpus)
    config = json.loads((run_dir / "config.json").read_text())
    config["corpus"]["path"] = str(corpus)
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


def test_sample_prints_one_novelty_line_per_sample(novelty_run):
    res = invoke("sample", novelty_run, "--length", 60, "--seed", 3, "--novelty", "--copy-span", 4)
    assert res.exit_code == 0, res.output
    index = run_index(load_run(novelty_run))
    text = res.stdout.removesuffix("\n").removeprefix("\n")  # an unprimed sample starts after a newline
    assert res.stderr.splitlines() == [index.check(text, copy_span=4).line()]
    res = invoke("sample", novelty_run, "--length", 30, "--num-samples", 2, "--novelty")
    assert [line.split(":")[0] for line in res.stderr.splitlines()] == ["novelty of sample 1", "novelty of sample 2"]


def test_sample_prints_no_novelty_unless_asked_off_a_terminal(novelty_run):
    for flags in ((), ("--no-novelty",)):
        res = invoke("sample", novelty_run, "--length", 30, *flags)
        assert res.exit_code == 0 and res.stderr == ""


def test_a_missing_or_changed_corpus_is_one_line_and_nothing_fails(novelty_run):
    corpus = corpus_of(novelty_run)
    saved = corpus.read_bytes()
    corpus.write_bytes(saved + b"more")
    res = invoke("sample", novelty_run, "--length", 30, "--novelty")
    assert res.exit_code == 0 and len(res.stdout) > 30
    assert res.stderr.splitlines() == [
        f"novelty unavailable: {corpus} is not the corpus this model was trained on (it changed since training: "
        f"sha256 differs)"
    ]
    corpus.unlink()
    res = invoke("sample", novelty_run, "--length", 30, "--novelty")
    assert res.exit_code == 0
    [line] = res.stderr.splitlines()
    assert line.startswith(f"novelty unavailable: the corpus of run {novelty_run}: ") and "Traceback" not in line


def test_training_records_novelty_in_samples_jsonl(tiny_run):
    records = [json.loads(line) for line in (tiny_run / "samples.jsonl").read_text().splitlines()]
    assert records
    index = corpus_index(encode_file(corpus_of(tiny_run), DataConfig()))
    for r in records:
        assert r["novelty"] == index.check(r["text"]).to_json()


def test_training_shows_novelty_beside_each_sample_and_caches_the_index(tiny_corpus, tmp_path):
    from charnn.training.train import train
    from tests.conftest import tiny_configs

    model, cfg, data = tiny_configs(max_iters=10, sample_every=5)
    events = []
    cache = tmp_path / "cache"
    out = tmp_path / "r"
    train(
        tiny_corpus,
        model_cfg=model,
        train_cfg=cfg,
        data_cfg=data,
        out_dir=out,
        on_progress=events.append,
        cache_dir=cache,
    )
    samples = [p for p in events if p.kind == "sample"]
    assert len(samples) == 2 and all(p.novelty.startswith("novelty: longest copied span ") for p in samples)
    corpus = encode_file(tiny_corpus, data)
    assert all(p.exists() for p in index_paths(cache, corpus))


def test_the_server_returns_novelty_on_request(novelty_run):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from charnn.serve import create_app

    loaded = load_run(novelty_run)
    with TestClient(create_app(loaded)) as client:
        plain = client.post("/v1/generate", json={"length": 40, "seed": 1}).json()
        asked = client.post("/v1/generate", json={"length": 40, "seed": 1, "novelty": True, "num_samples": 2}).json()
    assert "novelty" not in plain
    expected = RunNovelty(loaded).texts(asked["texts"])
    assert asked["novelty"] == expected and len(expected) == 2 and "longest" in expected[0]


def test_the_report_charts_novelty_and_marks_copied_spans(tiny_run):
    from charnn.report.analysis import read_run_log, read_samples
    from charnn.report.curves import curve_charts
    from charnn.report.record import marked, timeline

    samples = read_samples(tiny_run)
    assert samples and all(s["novelty"] is not None for s in samples)
    html, points = curve_charts(read_run_log(tiny_run))
    assert 'id="novelty"' in html and len(points["novelty"]) == 2 * len(samples)
    assert marked("a<b copied c", [(4, 10)]) == 'a&lt;b <mark class="copied">copied</mark> c'
    assert "longest copied span" in timeline(samples)


def test_export_with_novelty_carries_the_index_only_when_asked(novelty_run, tmp_path, monkeypatch):
    from charnn.export import html as export_html_module

    plain = invoke("export", novelty_run, "-o", tmp_path / "plain.html")
    asked = invoke("export", novelty_run, "-o", tmp_path / "novelty.html", "--with-novelty")
    assert plain.exit_code == asked.exit_code == 0, asked.output
    assert "charnn-novelty" not in (tmp_path / "plain.html").read_text()
    assert (tmp_path / "novelty.html").read_text().count('id="charnn-novelty') == 2
    monkeypatch.setattr(export_html_module, "MAX_PAGE_NOVELTY_BYTES", 1000)
    res = invoke("export", novelty_run, "-o", tmp_path / "big.html", "--with-novelty")
    assert res.exit_code == 2 and res.stderr.startswith("error: the training text's index would add ")
    assert len(res.stderr.splitlines()) == 1 and not (tmp_path / "big.html").exists()


def test_page_marks_what_python_finds(novelty_run, tmp_path):
    from tests.test_export import CHROMIUM, open_page

    if CHROMIUM is None:
        pytest.skip("headless browser test needs Debian's `chromium` package")
    loaded = load_run(novelty_run)
    page = tmp_path / "model.html"
    assert invoke("export", novelty_run, "-o", page, "--with-novelty").exit_code == 0
    got = open_page(page, tmp_path / "profile", prime="First", length=120, greedy=1, autorun=1)
    generated = got["output"].removeprefix("First")
    expected = run_index(loaded).check(generated).line()
    assert got["console"] == [], got["console"]
    line = got["dom"].split('<p id="novelty" class="note">')[1].split("</p>")[0]
    assert line.replace("&lt;", "<") == expected + " (marked below)"


def test_without_warnings_on_a_sound_cache(tmp_path):
    corpus = tiny_corpus_obj(tmp_path)
    corpus_index(corpus, [tmp_path / "c"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        corpus_index(corpus, [tmp_path / "c"])
