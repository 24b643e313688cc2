"""The training report: the numbers behind each picture (charnn.inspect), the page, the CLI, and a browser."""

import fnmatch
import json
import math
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from charnn.config import ModelConfig
from charnn.errors import CharnnWarning
from charnn.evaluate import evaluate_ids
from charnn.inspect import find_correlated, gate_stats, pearson, surprise, text_properties, trace, unit_series
from charnn.model import CharRNN
from charnn.report import build_report, page_json, passage_ids, write_report
from charnn.report.page import asset
from charnn.report.svg import MAX_CURVE_POINTS, thin, ticks
from charnn.store.rundir import load_run
from tests.conftest import REPO, TINY_FLAGS, TINY_TEXT, invoke

N, T, E, H, V = 2, 150, 6, 8, 11  # layers, characters, embedding, hidden units, vocabulary


def _model(kind: str, layers: int = N, **options) -> CharRNN:
    torch.manual_seed(0)
    return CharRNN(ModelConfig(model=kind, layers=layers, hidden=H, embed=E, **options), V).eval()


@pytest.mark.parametrize(
    "kind,options",
    [("lstm", {}), ("gru", {}), ("rnn", {}), ("lstm", {"layer_norm": True}), ("gru", {"layer_norm": True})],
)
def test_step_loop_reproduces_the_models_logits(kind, options):
    model = _model(kind, **options)
    if model.cfg.layer_norm:
        with torch.no_grad():  # away from the identity init, so a norm the step loop skipped would show
            model.ln.weight.uniform_(0.5, 2.0)
            model.ln.bias.uniform_(-1.0, 1.0)
    ids = np.random.default_rng(0).integers(0, V, size=T)
    segment = 64  # T spans three segments: the state must reset where evaluation resets it
    tr = trace(model, ids, segment=segment)
    with torch.no_grad():
        expected = torch.cat([model(torch.as_tensor(ids[s : s + segment])[None])[0][0] for s in range(0, T, segment)])
    torch.testing.assert_close(tr.logits, expected, atol=1e-5, rtol=1e-5)
    assert [layer.hidden.shape for layer in tr.layers] == [(T, H)] * N
    if kind == "lstm":  # the cell and gates are the ones that produced h: h = o * tanh(c)
        for layer in tr.layers:
            np.testing.assert_allclose(layer.hidden, layer.gates["output"] * np.tanh(layer.cell), atol=1e-6)
    assert sorted(tr.layers[0].gates) == sorted(
        {"lstm": ["input", "forget", "output"], "gru": ["reset", "update"], "rnn": []}[kind]
    )


def test_surprise_is_evaluates_per_char_loss():
    model = _model("lstm")
    ids = np.random.default_rng(1).integers(0, V, size=T)
    sur = surprise(trace(model, ids, segment=64))
    res = evaluate_ids(model, ids, segment=64, per_char=True)
    np.testing.assert_allclose(sur.loss, res.per_char, atol=1e-5)
    assert sur.mean == pytest.approx(res.loss, abs=1e-6)
    # the five likeliest next symbols, most likely first
    assert sur.top_ids.shape == (T - 1, 5) and np.all(np.diff(sur.top_probs, axis=1) <= 0)


def test_report_surprise_equals_charnn_eval_on_the_same_text(tiny_run, tmp_path):
    text = tmp_path / "passage.txt"
    text.write_text(TINY_TEXT[:1500], encoding="utf-8")
    out = invoke("eval", str(tiny_run), str(text), "--json", "--device", "cpu")
    assert out.exit_code == 0, out.output
    expected = json.loads(out.stdout.strip().splitlines()[-1])["nats_per_char"]
    loaded = load_run(tiny_run)
    passage = passage_ids(loaded, text, max_chars=10_000)
    segment = loaded.meta.train_cfg.eval_segment
    mean = surprise(trace(loaded.model, passage.ids, segment=segment)).mean
    assert mean == pytest.approx(expected, abs=1e-6)


def _planted_quote_model(vocab: str, unit: int = 3) -> CharRNN:
    """A one-layer LSTM whose cell `unit` flips sign at every `"`: +1 inside quotes, 0 or -1 outside.

    One-hot embedding. On a quote the input gate opens and the forget gate closes; the candidate is
    tanh(7.6 - 20 h), i.e. +1 when h is 0 or -0.76 (outside) and -1 when h is +0.76 (inside). Elsewhere the
    cell keeps its value (forget ~ 1, input ~ 0). The other units have small random weights and do not see it.
    """
    v = len(vocab)
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(model="lstm", layers=1, hidden=H, embed=v), v).eval()
    q = vocab.index('"')
    i, f, g, o = (k * H + unit for k in range(4))
    with torch.no_grad():
        model.embed.weight.copy_(torch.eye(v))
        for p in model.rnn.parameters():
            p.mul_(0.3)
        rnn = model.rnn
        w_ih, w_hh, b_ih, b_hh = rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0
        w_hh[:, unit] = 0  # no other unit reads the planted one, so none can inherit its signal
        for row in (i, f, g, o):
            w_ih[row], w_hh[row], b_ih[row], b_hh[row] = 0, 0, 0, 0
        w_ih[i, q], b_ih[i] = 20, -10
        w_ih[f, q], b_ih[f] = -20, 10
        w_hh[g, unit], b_ih[g] = -20, 7.6
        b_ih[o] = 10
    return model


def test_correlation_finder_recovers_a_planted_quote_unit():
    text = (
        'he said "no" and then (after a while) "yes, of course" she\nsaid. "a" b "quoted stretch here"\n'
        'plain text with no quotes at all here\n"another one" end\n'
    ) * 3
    vocab = "".join(sorted(set(text)))
    model = _planted_quote_model(vocab, unit=3)
    ids = np.array([vocab.index(c) for c in text])
    tr = trace(model, ids)
    props = text_properties(text)
    found = find_correlated(unit_series(tr), props).by_property["inside quotes"]
    best = found[0]
    assert (best.layer, best.unit) == (0, 3) and best.r > 0.9, found
    assert all(u.unit == 3 for u in found if abs(u.r) > 0.5)


def test_text_properties_and_pearson_on_planted_activations():
    text = 'ab "cd" (e\nf) g\n'
    props = text_properties(text)
    assert props["inside quotes"].tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert props["position in line"].tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0]
    assert props["inside brackets"].tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]
    assert props["after a newline"].tolist() == [0] * 10 + [1] + [0] * 4 + [1]
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(len(text), 6))
    acts[:, 4] = -props["position in line"] + 0.01 * rng.normal(size=len(text))
    assert pearson(acts, props["position in line"])[4] == pytest.approx(-1, abs=1e-3)
    found = find_correlated(
        [(1, "hidden", acts)], {"position in line": props["position in line"], "flat": np.ones(len(text))}, top=3
    )
    assert (found.by_property["position in line"][0].unit, found.constant) == (4, ["flat"])


def test_gate_saturation_fractions():
    tr = trace(_model("lstm"), np.arange(T) % V)
    stats = gate_stats(tr)
    gates = ("input", "forget", "output")
    assert [(s.layer, s.gate) for s in stats] == [(k, g) for k in range(N) for g in gates]
    for s in stats:
        assert s.left + s.middle + s.right == pytest.approx(1)
        assert s.unit_left.shape == (H,) and 0 <= s.unit_left.min() and s.unit_right.max() <= 1


@pytest.mark.parametrize("kind,bytes_mode", [("gru", False), ("rnn", True)])
def test_report_for_gru_and_byte_level_rnn_runs(tiny_corpus, tmp_path, kind, bytes_mode):
    from charnn.config import DataConfig, TrainConfig
    from charnn.training.train import train

    run = tmp_path / "run"
    train(
        tiny_corpus,
        model_cfg=ModelConfig(model=kind, layers=2, hidden=16, embed=8, layer_norm=bytes_mode),
        train_cfg=TrainConfig(
            batch_size=4, seq_len=16, max_iters=6, eval_every=3, sample_every=3, sample_length=10, device="cpu"
        ),
        data_cfg=DataConfig(bytes_mode=bytes_mode),
        out_dir=run,
    )
    page = write_report(run, max_chars=400).read_text(encoding="utf-8")
    assert 'id="neuron-text"' in page and page.count('<li><div class="meta">') == 2
    assert ("no gates (plain RNN)" in page) == (kind == "rnn") and ("reset gate" in page) == (kind == "gru")
    assert ("embedding 8, layer norm;" in page) == bytes_mode  # the options are named in the summary line


def test_page_json_cannot_close_its_script_block():
    text = page_json({"t": "</script><!-- & -->", "u": "\u2028é"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"t": "</script><!-- & -->", "u": "\u2028é"}


def test_chart_ticks_are_round_and_thinning_keeps_the_last_point():
    assert ticks(0, 1) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert ticks(3, 3) == [3] and ticks(math.nan, 1) == []
    points = [(x, x, "") for x in range(2 * MAX_CURVE_POINTS + 2)]
    thinned = thin(points)
    assert len(thinned) <= MAX_CURVE_POINTS + 1 and thinned[0] == points[0] and thinned[-1] == points[-1]


def test_page_inlines_the_packaged_style_and_script(tiny_run):
    page = build_report(tiny_run)
    assert f"<style>\n{asset('page.css')}</style>" in page and f"<script>\n{asset('page.js')}</script>" in page
    assert page.endswith("</body></html>\n")


def test_every_report_asset_is_shipped_as_package_data():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["charnn"]
    for path in (REPO / "charnn" / "report").iterdir():
        if path.is_file() and path.suffix != ".py":
            name = f"report/{path.name}"
            assert any(fnmatch.fnmatch(name, p) for p in patterns), f"{name} is not package data"


def test_report_has_curves_timeline_and_escaped_text(tiny_run):
    with open(tiny_run / "samples.jsonl", "a", encoding="utf-8") as f:
        f.write(
            json.dumps(
                {
                    "step": 99,
                    "elapsed": 1.0,
                    "val_loss": None,
                    "temperature": 0.8,
                    "text": "</pre><script>alert(1)</script>",
                }
            )
            + "\n"
        )
        f.write('{"torn line\n')
    page = build_report(tiny_run)
    for chart in ("loss-steps", "loss-time", "lr", "grad"):
        assert f'<svg class="chart" id="{chart}"' in page
    assert page.count("<polyline") >= 5 and 'id="timeline"' in page
    assert page.count('<li><div class="meta"><b>iteration') == 3  # two training samples and the planted one
    assert "&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    block = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)[1]
    data = json.loads(block)
    loaded = load_run(tiny_run)
    expected = loaded.vocab.decode(passage_ids(loaded, None, max_chars=5000).ids)
    assert "".join(data["vocab"][i] for i in data["ids"]) == expected
    assert len(data["loss"]) == len(data["ids"]) - 1 and len(data["top_ids"]) == 5 * len(data["loss"])
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched: the page works offline


def test_report_without_the_corpus_still_has_the_curves(tiny_run, tiny_corpus):
    tiny_corpus.unlink()
    with pytest.warns(CharnnWarning, match="report without passage sections"):
        page = build_report(tiny_run)
    assert 'id="loss-steps"' in page and "Pass --text FILE" in page and 'id="surprise-text"' not in page


def test_cli_report_writes_the_page_and_maps_errors(tiny_run, tmp_path):
    out = tmp_path / "r.html"
    res = invoke("report", str(tiny_run), "-o", str(out), "--chars", "300")
    assert res.exit_code == 0, res.output
    assert out.read_text().startswith("<!DOCTYPE html>") and res.stdout == ""
    res = invoke("report", str(tmp_path / "nope"))
    assert res.exit_code == 2
    assert res.stderr.strip() == (
        f"error: {tmp_path / 'nope'}: no such run directory, checkpoint file or bundled model "
        "(`charnn models` lists them)"
    )
    res = invoke("report", str(tiny_run), "--text", str(tmp_path / "missing.txt"))
    assert res.exit_code == 2 and res.stderr.startswith("error: ")


def test_train_report_flag_writes_report_at_each_evaluation(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    args = [
        "train",
        str(tiny_corpus),
        "--out",
        str(out),
        *TINY_FLAGS,
        "--max-iters",
        "10",
        "--eval-every",
        "5",
        "--device",
        "cpu",
        "--sample-every",
        "5",
        "--sample-length",
        "20",
        "-q",
    ]
    res = invoke(*args, "--report")
    assert res.exit_code == 0, res.output
    page = (out / "report.html").read_text()
    assert "step-00000010" in page and page.count('<li><div class="meta"><b>iteration') == 2
    assert f"report: {out / 'report.html'}" in res.stderr
    res = invoke(*args[:3], tmp_path / "plain", *args[4:])
    assert res.exit_code == 0 and not (tmp_path / "plain" / "report.html").exists()  # off by default


def test_write_report_refuses_an_unwritable_path(tiny_run, tmp_path):
    from charnn.errors import CharnnError

    with pytest.raises(CharnnError, match="cannot write the report"):
        write_report(tiny_run, tmp_path / "no-such-dir" / "r.html", max_chars=100)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# Appended to a copy of the page: points at a character of each passage, picks a unit, hovers a chart.
PROBE = """<script>
window.addEventListener("load", function () {
  const over = function (el) { el.dispatchEvent(new MouseEvent("mouseover", {bubbles: true})); };
  over(document.querySelector('#surprise-text span[data-t="12"]'));
  const select = document.getElementById("unit-select");
  select.value = select.options[3].value;
  select.dispatchEvent(new Event("change"));
  over(document.querySelector('#neuron-text span[data-t="5"]'));
  const svg = document.getElementById("loss-steps"), box = svg.getBoundingClientRect();
  svg.dispatchEvent(new MouseEvent("mousemove", {clientX: box.left + box.width / 2,
                                                 clientY: box.top + box.height / 2, bubbles: true}));
  document.body.dataset.probed = "1";
});
</script></body>"""


def _console(stderr: str) -> list[str]:
    """Console messages Chromium logs with --enable-logging=stderr; the page itself logs none."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless browser test needs Debian's `chromium` package "
    "(apt-get install chromium; .ci/run installs it when it can)",
)
def test_report_loads_in_headless_chromium_without_console_errors(tiny_run, tmp_path):
    page = write_report(tiny_run, tmp_path / "report.html")
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1250,2400",
    ]
    shot = tmp_path / "report.png"
    res = subprocess.run(flags + [f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _console(res.stderr) == []  # an uncaught error or a failed script would show here
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE), encoding="utf-8")
    dom = subprocess.run(flags + ["--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert _console(dom.stderr) == []
    html = dom.stdout
    assert 'data-ready="1"' in html and 'data-probed="1"' in html  # the script ran to its end
    assert '<div id="report-error" class="error" hidden="">' in html
    assert '<svg class="chart" id="loss-steps"' in html and "<polyline" in html and 'id="timeline"' in html
    assert html.count('<span data-t="') > 100  # the heatmap and the explorer were built from the data
    panel = re.search(r'<aside class="panel" id="surprise-panel">(.*?)</aside>', html, re.S)[1]
    assert "the model expected:" in panel and panel.count('<div class="row') == 5
    assert re.search(r'<span id="unit-value">\S+ at 5: activation -?\d\.\d\d</span>', html)
    assert re.search(r'<div id="tooltip" class="tooltip" style="[^"]*">[^<]*step \d+', html)
