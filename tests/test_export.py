"""Export: the playground page against PyTorch and `charnn sample` in headless Chromium, the ONNX step model against
PyTorch in onnxruntime, the documented onnxruntime example, and the CLI's errors."""

import functools
import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import torch

from charnn.config import DataConfig, ModelConfig
from charnn.data import Vocab
from charnn.export import CELL_LAYOUT, build_page, export_html, export_onnx
from charnn.export.spec import STATE_NAMES
from charnn.shapes import CELLS
from charnn.store.rundir import load_run
from tests.conftest import PYTHON, REPO, TINY_TEXT, invoke, tiny_configs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless browser test needs Debian's `chromium` package (apt-get install chromium)"
)
try:
    import onnx  # noqa: F401
    import onnxruntime as ort
except ImportError:
    ort = None
needs_onnx = pytest.mark.skipif(ort is None, reason="needs the onnx extra (pip install 'charnn[onnx]')")

HOSTILE = "<script>alert(1)</script> &amp; café"
CORPUS = TINY_TEXT.replace("All:\n", f"All: {HOSTILE}\n")
PRIME = CORPUS[CORPUS.index("<script>") - 60 :][:200]  # 200 characters holding the hostile text
VARIANTS = {  # name: (model, data)
    "lstm": (ModelConfig(model="lstm", layers=2, hidden=32, embed=16), DataConfig()),
    "gru": (ModelConfig(model="gru", layers=1, hidden=32, embed=16), DataConfig()),
    "rnn": (ModelConfig(model="rnn", layers=1, hidden=32, embed=16), DataConfig()),
    "deep": (ModelConfig(model="lstm", layers=2, hidden=24, embed=24, layer_norm=True, tie_weights=True), DataConfig()),
    "bytes": (ModelConfig(model="gru", layers=2, hidden=24, embed=8), DataConfig(bytes_mode=True)),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """name -> a run directory trained 40 steps on CORPUS (once per module)."""
    from charnn.training.train import train

    root = tmp_path_factory.mktemp("export-runs")
    corpus = root / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")

    @functools.cache
    def get(name: str) -> Path:
        model_cfg, data_cfg = VARIANTS[name]
        _, cfg, _ = tiny_configs(max_iters=40, eval_every=40, sample_every=None)
        train(corpus, model_cfg=model_cfg, train_cfg=cfg, data_cfg=data_cfg, out_dir=root / name)
        return root / name

    return get


def open_page(page: Path, profile: Path, probe: str = "", **params) -> dict:
    """Load the page headless with query parameters; the DOM afterwards, #output's text and attributes, the
    debug logits and the console messages."""
    if probe:
        probed = page.with_name("probed.html")
        probed.write_text(page.read_text(encoding="utf-8").replace("</body>", probe + "</body>"), encoding="utf-8")
        page = probed
    return open_url(page.as_uri(), profile, **params)


def open_url(url: str, profile: Path, **params) -> dict:
    """open_page for a page at `url` (a file, or a server's)."""
    url += "?" + "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())
    res = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=60000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    attrs, text = re.search(r'<pre id="output"([^>]*)>(.*?)</pre>', dom, re.S).groups()
    debug = re.search(r'<pre id="debug"[^>]*>(.*?)</pre>', dom, re.S)[1]
    return {
        "dom": dom,
        "attrs": attrs,
        "output": html.unescape(text),
        "console": _console(res.stderr),
        "logits": json.loads(html.unescape(debug)) if debug else None,
    }


def _console(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def _greedy_cli(run: Path, loaded) -> str:
    res = invoke("sample", run, "--greedy", "--prime", PRIME, "--length", 200, "--device", "cpu")
    assert res.exit_code == 0, res.output
    if loaded.vocab.bytes_mode:
        return res.stdout_bytes.decode("utf-8", "replace").removesuffix("\n")
    return res.stdout.removesuffix("\n")


@needs_chromium
@pytest.mark.parametrize("name", list(VARIANTS))
def test_page_logits_equal_pytorchs_and_greedy_text_equals_charnn_sample(name, trained, tmp_path):
    run = trained(name)
    loaded = load_run(run)
    page = export_html(loaded, tmp_path / "model.html")
    got = open_page(page, tmp_path / "profile", prime=PRIME, length=200, greedy=1, autorun=1, debug=1)
    assert 'data-done="1"' in got["attrs"] and "data-error" not in got["attrs"] and got["console"] == []
    expected = _greedy_cli(run, loaded)
    assert expected.startswith(PRIME) and len(expected) > 300
    assert got["output"] == expected  # 200 greedy characters, character for character
    data = got["output"].encode("utf-8") if loaded.vocab.bytes_mode else got["output"]  # valid UTF-8 here
    ids = torch.as_tensor(loaded.vocab.encode(data))[None]
    with torch.no_grad():
        reference = loaded.model(ids)[0][0, :256]  # (256, V): the prime's 200 steps, then 56 generated
    page_logits = torch.tensor(got["logits"], dtype=torch.float64)
    assert page_logits.shape == reference.shape
    assert (page_logits - reference.double()).abs().max() < 1e-4
    # Nothing from the vocabulary or the prime became markup: the page's own four scripts and no other.
    assert got["dom"].count("<script") == 4 and "&lt;script&gt;alert(1)&lt;/script&gt; &amp;amp;" in got["dom"]


@needs_chromium
def test_fp16_page_is_within_1e_2_and_half_the_size(trained, tmp_path):
    loaded = load_run(trained("deep"))
    full = export_html(loaded, tmp_path / "fp32.html")
    half = export_html(loaded, tmp_path / "fp16.html", precision="fp16")
    weights = [len(re.search(r'id="charnn-weights">([^<]*)<', p.read_text())[1]) for p in (full, half)]
    assert weights[1] * 2 == pytest.approx(weights[0], abs=4)
    got = open_page(half, tmp_path / "profile", prime=PRIME, length=10, autorun=1, debug=1, seed=5)
    ids = torch.as_tensor(loaded.vocab.encode(PRIME))[None]
    with torch.no_grad():
        reference = loaded.model(ids)[0][0].double()
    assert (torch.tensor(got["logits"][:200], dtype=torch.float64) - reference).abs().max() < 1e-2
    again = open_page(half, tmp_path / "profile", prime=PRIME, length=10, autorun=1, seed=5)
    assert again["output"] == got["output"] and len(got["output"]) == 210  # same seed, same text


@needs_chromium
def test_page_sampler_filters_as_charnn_does(trained, tmp_path):
    """top-k 1, and a top-p below every probability, leave only the likeliest character: the greedy text."""
    run = trained("gru")
    loaded = load_run(run)
    page = export_html(loaded, tmp_path / "model.html")
    expected = _greedy_cli(run, loaded)
    for option in ({"top_k": 1}, {"top_p": 0.001}):
        got = open_page(
            page, tmp_path / "profile", prime=PRIME, length=200, seed=11, temperature=1.5, autorun=1, **option
        )
        assert got["output"] == expected, option


PROBE = """<script>
window.addEventListener("load", function () {
  const ed = document.getElementById("editor");
  ed.value = "First Citizen"; ed.setSelectionRange(13, 13); ed.dispatchEvent(new Event("input"));
  setTimeout(function () {
    ed.dispatchEvent(new KeyboardEvent("keydown", {key: "Tab", bubbles: true, cancelable: true}));
    setTimeout(function () { document.body.dataset.probed = JSON.stringify(ed.value); }, 500);
  }, 500);
});
</script>"""


@needs_chromium
def test_writing_box_predicts_accepts_with_tab_and_colours_and_a_bad_prime_says_why(trained, tmp_path):
    loaded = load_run(trained("lstm"))
    page = export_html(loaded, tmp_path / "model.html")
    got = open_page(page, tmp_path / "profile", probe=PROBE, prime="Citizen €~", autorun=1)
    assert got["console"] == [] and 'data-done="1"' in got["attrs"] and 'data-error="1"' in got["attrs"]
    message = re.search(r'<p id="message"[^>]*>(.*?)</p>', got["dom"], re.S)[1]
    assert "vocabulary lacks" in message and "“€”" in message and "“~”" in message
    assert got["output"] == "" and '<div id="page-error" class="error" role="alert" hidden="">' in got["dom"]
    ids = torch.as_tensor(loaded.vocab.encode("\nFirst Citizen"))[None]  # the box starts after a newline
    with torch.no_grad():
        best = int(loaded.model(ids)[0][0, -1].argmax())
    typed = json.loads(html.unescape(re.search(r'data-probed="([^"]*)"', got["dom"])[1]))
    assert typed == "First Citizen" + chr(loaded.vocab.symbols[best])  # Tab took the likeliest character
    predictions = re.search(r'<ol id="predictions"[^>]*>(.*?)</ol>', got["dom"], re.S)[1]
    assert predictions.count("<li>") == 5 and "%" in predictions
    view = re.search(r'<div id="surprise-view"[^>]*>(.*?)</div>', got["dom"], re.S)[1]
    assert view.count("<span") == len(typed) and "bits" in view


def test_page_is_self_contained_and_embeds_the_layout_table(trained):
    loaded = load_run(trained("gru"))
    page = build_page(loaded)
    assert not re.search(r"""(src|href)\s*=|https?://|@import|url\(""", page.split('id="charnn-spec"')[0])
    assert "default-src 'none'" in page  # the page may fetch nothing
    spec = json.loads(re.search(r'id="charnn-spec">(.*?)</script>', page, re.S)[1])
    assert spec["layout"] == CELL_LAYOUT and spec["dtype"] == "float32"
    assert "<" not in re.search(r'id="charnn-spec">(.*?)</script>', page, re.S)[1]  # escaped as \u003c
    assert {k: (tuple(v["blocks"]), tuple(v["gates"])) for k, v in CELL_LAYOUT.items()} == {
        k: (cell.blocks, cell.gates) for k, cell in CELLS.items()
    }  # the model's own table, as the page reads it


def test_tied_weights_are_stored_once(trained):
    spec_names = [t["name"] for t in _spec(build_page(load_run(trained("deep"))))["tensors"]]
    assert "embed.weight" in spec_names and "head.weight" not in spec_names and "ln.weight" in spec_names


def _spec(page: str) -> dict:
    return json.loads(re.search(r'id="charnn-spec">(.*?)</script>', page, re.S)[1])


@needs_onnx
@pytest.mark.parametrize("name", ["lstm", "gru", "rnn", "deep"])
def test_onnxruntime_logits_equal_pytorchs_with_the_state_carried(name, trained, tmp_path):
    loaded = load_run(trained(name))
    path = export_onnx(loaded, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert Vocab.from_json(meta["charnn.vocab"]) == loaded.vocab
    assert json.loads(meta["charnn.model_config"])["model"] == loaded.model_cfg.model
    names = [i.name for i in session.get_inputs()]
    assert names == ["ids", *STATE_NAMES[loaded.model_cfg.model]]
    rng = np.random.default_rng(0)
    cfg = loaded.model_cfg
    state = [np.zeros((cfg.layers, 3, cfg.hidden), dtype=np.float32) for _ in STATE_NAMES[cfg.model]]
    hidden = None
    for steps in (7, 4):  # a batch of 3 streams, two calls, the state carried
        ids = rng.integers(0, len(loaded.vocab), size=(3, steps))
        logits, *state = session.run(None, dict(zip(names, [ids, *state], strict=True)))
        with torch.no_grad():
            expected, hidden = loaded.model(torch.as_tensor(ids), hidden)
        assert np.abs(logits - expected.numpy()).max() < 1e-4
        flat = hidden if isinstance(hidden, tuple) else (hidden,)
        assert max(np.abs(a - b.numpy()).max() for a, b in zip(state, flat, strict=True)) < 1e-4


@needs_onnx
def test_the_documented_onnxruntime_example_samples(trained, tmp_path):
    doc = (REPO / "docs" / "export.md").read_text(encoding="utf-8")
    snippet = re.search(r"<!-- onnxruntime example -->\n```python\n(.*?)```", doc, re.S)[1]
    export_onnx(load_run(trained("lstm")), tmp_path / "model.onnx")
    res = subprocess.run([PYTHON, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("First") and len(res.stdout) == len("First") + 200 + 1
    assert "torch" not in snippet and "charnn" not in snippet.replace('"charnn.', "")


def test_cli_writes_the_page_and_needs_force_to_overwrite(trained, tmp_path):
    out = tmp_path / "model.html"
    res = invoke("export", trained("rnn"), "-o", out, "--which", "latest")
    assert res.exit_code == 0 and out.read_text().startswith("<!DOCTYPE html>") and res.stdout == ""
    res = invoke("export", trained("rnn"), "-o", out)
    assert res.exit_code == 2 and res.stderr == f"error: {out} exists; pass --force to overwrite it\n"
    out.write_text("old")
    res = invoke("export", trained("rnn"), "-o", out, "--force", "--precision", "fp16")
    assert res.exit_code == 0 and out.read_text().startswith("<!DOCTYPE html>")


def test_cli_errors_are_one_line(trained, tmp_path, monkeypatch):
    bad = tmp_path / "step-00000001.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      " + bytes(64))
    res = invoke("export", bad, "-o", tmp_path / "m.html")
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and res.stderr.count("\n") == 1
    assert res.stderr == invoke("sample", bad).stderr  # the same error as sample's
    res = invoke("export", trained("lstm"), "-o", tmp_path / "m.onnx", "--format", "onnx", "--precision", "fp16")
    assert res.exit_code == 2 and res.stderr.startswith("error: --precision")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the extra were not installed
    res = invoke("export", trained("lstm"), "-o", tmp_path / "m.onnx", "--format", "onnx")
    assert res.exit_code == 2
    assert res.stderr == "error: ONNX export needs the onnx package: pip install 'charnn[onnx]'\n"
    assert not (tmp_path / "m.onnx").exists()
