"""The training report: one self-contained HTML page (inline SVG, CSS and JS; nothing fetched) built from a
run directory: loss, learning-rate and gradient curves, the sample timeline, a surprise heatmap, a neuron
explorer, gate saturation, and the run's configuration. The numbers come from `charnn.inspect`; the page's
script and style are in `charnn.report_assets`. Writes a file; never prints.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from charnn.checkpoint import LoadedModel
from charnn.errors import CharnnError, CharnnWarning, CheckpointWriteError, DataError
from charnn.inspect import (
    Correlations,
    GateStats,
    Surprise,
    find_correlated,
    gate_stats,
    surprise,
    text_properties,
    trace,
    unit_series,
)
from charnn.report_assets import PAGE_CSS, PAGE_JS
from charnn.rundir import load_run

MAX_CHARS = 5000  # passage length shown by default
MAX_ACTIVATION_BYTES = 3_000_000  # int8 activations embedded for the explorer; beyond it the passage is cut
MAX_CURVE_POINTS = 800  # per series; longer logs are thinned evenly (the last point is always kept)
LN2 = math.log(2)


@dataclass(frozen=True)
class Passage:
    ids: np.ndarray
    source: str  # "validation split" or the file name


# --- reading the run directory --------------------------------------------------------------------------

def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a .jsonl file; a missing file is empty; a torn line (a crash mid-write) is skipped."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(train records, eval records), each by step; a resumed run's repeated steps keep their last record."""
    by_kind: dict[str, dict[int, dict]] = {"train": {}, "eval": {}}
    needs = {"train": "train_loss", "eval": "val_loss"}
    for rec in read_jsonl(run_dir / "metrics.jsonl"):
        kind = rec.get("kind")
        if kind in by_kind and isinstance(rec.get("step"), int) and _is_number(rec.get(needs[kind])):
            by_kind[kind][rec["step"]] = rec
    return [by_kind["train"][s] for s in sorted(by_kind["train"])], [by_kind["eval"][s] for s in
                                                                     sorted(by_kind["eval"])]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_config(run_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def passage_ids(loaded: LoadedModel, text: str | os.PathLike | None, *, max_chars: int) -> Passage:
    """The passage to analyse: the first `max_chars` of `text` (a file) or of the run's validation split."""
    from charnn.data import read_ids
    from charnn.evaluate import validation_ids

    if text is None:
        ids, source = validation_ids(loaded), "validation split"
    else:
        ids, unknown = read_ids(text, loaded.vocab, loaded.data_cfg, skip_unknown=True)
        source = Path(text).name
        if unknown:
            shown = ", ".join(loaded.vocab.symbol_str(s) for s in list(unknown)[:10])
            warnings.warn(f"{text}: skipped {sum(unknown.values())} character(s) not in the model's "
                          f"vocabulary ({shown})", CharnnWarning, stacklevel=3)
    ids = np.asarray(ids[:max_chars]).astype(np.int64)
    if len(ids) < 2:
        raise DataError(f"{source}: need at least 2 characters to analyse, found {len(ids)}")
    return Passage(ids, source)


def display_symbols(loaded: LoadedModel) -> list[str]:
    """How each vocabulary symbol is drawn: itself, or an escape for control characters and raw bytes."""
    out = []
    for s in loaded.vocab.symbols:
        if loaded.vocab.bytes_mode and not (32 <= s < 127 or s in (9, 10)):
            out.append(f"\\x{s:02x}")
            continue
        ch = chr(s)
        out.append(ch if ch.isprintable() or ch in "\n\t" else ch.encode("unicode_escape").decode("ascii"))
    return out


# --- SVG charts -----------------------------------------------------------------------------------------

W, H, ML, MR, MT, MB = 560, 256, 58, 58, 24, 40  # chart size and margins (px)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _range(values: list[float], *, zero: bool = False) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if zero:
        lo = min(lo, 0.0)
    pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 1.0
    return (lo if zero and lo == 0 else lo - pad), hi + pad


def _thin(points: list[tuple]) -> list[tuple]:
    if len(points) <= MAX_CURVE_POINTS:
        return points
    stride = math.ceil(len(points) / MAX_CURVE_POINTS)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


@dataclass
class Series:
    name: str
    points: list[tuple[float, float, str]]  # (x, y, tooltip)
    color: str
    right: bool = False  # plotted against the right axis
    dots: bool = False
    dash: bool = False


def chart(cid: str, title: str, series: list[Series], *, x_label: str, y_label: str,
          right_label: str | None = None, right_scale: float | None = None, zero: bool = False,
          hlines: list[tuple[float, str]] = ()) -> tuple[str, list]:
    """An SVG line chart and its hover points [(px, py, tooltip, colour)].

    The right axis either re-labels the left one (`right_scale`: bits = nats / ln 2) or has its own series.
    """
    series = [Series(s.name, _thin([p for p in s.points if p[1] is not None and math.isfinite(p[1])]),
                     s.color, s.right, s.dots, s.dash) for s in series]
    pw, ph = W - ML - MR, H - MT - MB
    xs = [p[0] for s in series for p in s.points]
    left = [p[1] for s in series if not s.right for p in s.points] + [v for v, _ in hlines]
    right = [p[1] for s in series if s.right for p in s.points]
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x1 <= x0:
        x1 = x0 + 1
    y0, y1 = _range(left, zero=zero)
    r0, r1 = _range(right, zero=True) if right else (y0, y1)
    sx = lambda x: ML + (x - x0) / (x1 - x0) * pw  # noqa: E731
    sy = lambda y, lo=y0, hi=y1: MT + ph - (y - lo) / (hi - lo) * ph  # noqa: E731
    out = [f'<svg class="chart" id="{cid}" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
           f'aria-label="{html.escape(title)}"><title>{html.escape(title)}</title>']
    out.append(f'<rect class="plot" x="{ML}" y="{MT}" width="{pw}" height="{ph}"/>')
    for t in _ticks(y0, y1):
        y = sy(t)
        out.append(f'<line class="grid" x1="{ML}" x2="{ML + pw}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="tick" x="{ML - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in _ticks(x0, x1, 6):
        x = sx(t)
        out.append(f'<line class="tickline" x1="{x:.1f}" x2="{x:.1f}" y1="{MT + ph}" y2="{MT + ph + 4}"/>'
                   f'<text class="tick" x="{x:.1f}" y="{MT + ph + 16}" text-anchor="middle">{_fmt(t)}</text>')
    if right_label:
        if right_scale:
            lo, hi = y0 * right_scale, y1 * right_scale
            ticks = [(t, sy(t / right_scale)) for t in _ticks(lo, hi)]
        else:
            ticks = [(t, sy(t, r0, r1)) for t in _ticks(r0, r1)]
        for t, y in ticks:
            out.append(f'<text class="tick right" x="{ML + pw + 6}" y="{y + 4:.1f}">{_fmt(t)}</text>')
        out.append(f'<text class="axis" transform="translate({W - 12},{MT + ph / 2}) rotate(90)" '
                   f'text-anchor="middle">{html.escape(right_label)}</text>')
    out.append(f'<text class="axis" x="{ML + pw / 2}" y="{H - 6}" text-anchor="middle">'
               f'{html.escape(x_label)}</text>'
               f'<text class="axis" transform="translate(14,{MT + ph / 2}) rotate(-90)" '
               f'text-anchor="middle">{html.escape(y_label)}</text>')
    for value, label in hlines:
        y = sy(value)
        out.append(f'<line class="hline" x1="{ML}" x2="{ML + pw}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="tick" x="{ML + pw - 4}" y="{y - 4:.1f}" text-anchor="end">'
                   f'{html.escape(label)}</text>')
    hover = []
    for s in series:
        ys = (lambda y: sy(y, r0, r1)) if s.right else sy
        pts = [(sx(x), ys(y), tip) for x, y, tip in s.points]
        if not pts:
            continue
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _ in pts)
        dash = ' stroke-dasharray="4 3"' if s.dash else ""
        out.append(f'<polyline class="series" points="{path}" stroke="{s.color}"{dash}>'
                   f'<title>{html.escape(s.name)}</title></polyline>')
        if s.dots or len(pts) == 1:
            out.extend(f'<circle class="pt" cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{s.color}">'
                       f'<title>{html.escape(tip)}</title></circle>' for px, py, tip in pts)
        hover.extend([round(px, 1), round(py, 1), tip, s.color] for px, py, tip in pts)
    legend_x = ML
    for s in series:
        out.append(f'<rect x="{legend_x}" y="{MT - 12}" width="10" height="3" fill="{s.color}"/>'
                   f'<text class="legend" x="{legend_x + 14}" y="{MT - 7}">{html.escape(s.name)}</text>')
        legend_x += 22 + 7 * len(s.name)
    if not xs:
        out.append(f'<text class="empty" x="{ML + pw / 2}" y="{MT + ph / 2}" text-anchor="middle">'
                   f'no data yet</text>')
    out.append('<circle class="hl" r="5" cx="-10" cy="-10"/></svg>')
    return "".join(out), hover


def _get(record: dict, key: str) -> float:
    value = record.get(key)
    return float(value) if _is_number(value) else math.nan


def curve_charts(train: list[dict], evals: list[dict], config: dict) -> tuple[str, dict[str, list]]:
    """The four curve charts as HTML and their hover points by chart id."""
    def loss_tip(r: dict, key: str, what: str) -> str:
        v = r[key]
        return (f"{what} · step {r['step']} · {_get(r, 'elapsed'):.1f} s · {v:.4f} nats/char "
                f"({v / LN2:.4f} bits/char)")

    last_t = max([r["elapsed"] for r in train + evals if _is_number(r.get("elapsed"))] or [0])
    t_div, t_unit = (3600, "h") if last_t > 3 * 3600 else (60, "min") if last_t > 600 else (1, "s")
    charts, hover = [], {}
    for cid, x_key, x_label in (("loss-steps", "step", "iteration"),
                                ("loss-time", "elapsed", f"wall time ({t_unit})")):
        div = t_div if x_key == "elapsed" else 1
        svg, pts = chart(cid, f"Loss against {x_label}", [
            Series("train", [(r[x_key] / div, r.get("train_loss"), loss_tip(r, "train_loss", "train"))
                             for r in train if _is_number(r.get(x_key))], "#2563eb"),
            Series("validation", [(r[x_key] / div, r.get("val_loss"), loss_tip(r, "val_loss", "validation"))
                                  for r in evals if _is_number(r.get(x_key))], "#dc2626", dots=True),
        ], x_label=x_label, y_label="nats/char", right_label="bits/char", right_scale=1 / LN2)
        charts.append(svg)
        hover[cid] = pts
    svg, pts = chart("lr", "Learning rate", [
        Series("learning rate", [(r["step"], _get(r, "lr"), f"step {r['step']} · lr {_get(r, 'lr'):.3g}")
                                 for r in train], "#059669")], x_label="iteration", y_label="learning rate",
        zero=True)
    charts.append(svg)
    hover["lr"] = pts
    clip = (config.get("train") or {}).get("grad_clip")
    clip = clip if _is_number(clip) and clip > 0 else None
    svg, pts = chart("grad", "Gradient norm and clipping", [
        Series("grad norm", [(r["step"], _get(r, "grad_norm"), f"step {r['step']} · grad norm "
                             f"{_get(r, 'grad_norm'):.4g}") for r in train], "#7c3aed"),
        Series("clipped (fraction of steps)",
               [(r["step"], _get(r, "clip_frac"), f"step {r['step']} · clipping fired in "
                 f"{100 * _get(r, 'clip_frac'):.0f}% of steps") for r in train],
               "#ea580c", right=True, dash=True),
    ], x_label="iteration", y_label="global gradient norm (pre-clip)", right_label="fraction clipped",
        zero=True, hlines=[(clip, f"clip at {clip:g}")] if clip else [])
    charts.append(svg)
    hover["grad"] = pts
    return "".join(f'<figure>{c}</figure>' for c in charts), hover


def gate_charts(stats: list[GateStats]) -> str:
    """Per layer: bars of left/middle/right saturation per gate, and the per-unit scatter (2015 paper)."""
    if not stats:
        return '<p class="note">This model has no gates (plain RNN).</p>'
    colors = {"input": "#2563eb", "forget": "#16a34a", "output": "#dc2626", "reset": "#9333ea",
              "update": "#ea580c"}
    parts = []
    for layer in sorted({s.layer for s in stats}):
        rows = [s for s in stats if s.layer == layer]
        bar = ['<table class="gates"><tr><th>gate</th><th>left-saturated (&lt; 0.1)</th><th>between</th>'
               '<th>right-saturated (&gt; 0.9)</th><th></th></tr>']
        for s in rows:
            segs = "".join(f'<span class="{k}" style="width:{100 * v:.2f}%"></span>'
                           for k, v in (("left", s.left), ("mid", s.middle), ("right", s.right)))
            bar.append(f'<tr><td>{s.gate}</td><td>{100 * s.left:.1f}%</td><td>{100 * s.middle:.1f}%</td>'
                       f'<td>{100 * s.right:.1f}%</td><td><div class="stack">{segs}</div></td></tr>')
        bar.append("</table>")
        size, m = 240, 34
        svg = [f'<svg class="scatter" viewBox="0 0 {size} {size}" width="{size}" height="{size}" role="img" '
               f'aria-label="gate saturation, layer {layer + 1}">'
               f'<rect class="plot" x="{m}" y="8" width="{size - m - 8}" height="{size - m - 8}"/>'
               f'<line class="grid" x1="{m}" y1="8" x2="{size - 8}" y2="{size - m}"/>']
        span = size - m - 8
        for t in (0, 0.5, 1):
            svg.append(f'<text class="tick" x="{m + t * span:.1f}" y="{size - m + 14}" '
                       f'text-anchor="middle">{t:g}</text><text class="tick" x="{m - 4}" '
                       f'y="{size - m - t * span + 4:.1f}" text-anchor="end">{t:g}</text>')
        svg.append(f'<text class="axis" x="{m + span / 2}" y="{size - 4}" text-anchor="middle">fraction left-'
                   f'saturated</text><text class="axis" transform="translate(10,{8 + span / 2}) rotate(-90)" '
                   f'text-anchor="middle">fraction right-saturated</text>')
        for s in rows:
            for unit, (a, b) in enumerate(zip(s.unit_left, s.unit_right, strict=True)):
                svg.append(f'<circle cx="{m + a * span:.1f}" cy="{size - m - b * span:.1f}" r="2.2" '
                           f'fill="{colors.get(s.gate, "#555")}" fill-opacity="0.6"><title>layer {layer + 1} '
                           f'{s.gate} gate, unit {unit}: left {a:.2f}, right {b:.2f}</title></circle>')
        svg.append("</svg>")
        legend = " ".join(f'<span class="key" style="--c:{colors.get(s.gate, "#555")}">{s.gate}</span>'
                          for s in rows)
        parts.append(f'<div class="gate-layer"><h3>Layer {layer + 1}</h3>{"".join(bar)}<div>{"".join(svg)}'
                     f'<div class="legend">{legend}</div></div></div>')
    return "".join(parts)


# --- the page -------------------------------------------------------------------------------------------

def _timeline(samples: list[dict]) -> str:
    if not samples:
        return '<p class="note">No samples saved yet.</p>'
    items = []
    for s in samples:
        val = s.get("val_loss")
        val_txt = f"val {val:.4f} nats/char ({val / LN2:.3f} bits/char)" if isinstance(val, (int, float)) \
            else "no validation yet"
        items.append(f'<li><div class="meta"><b>iteration {int(s.get("step", 0))}</b> · {val_txt} · '
                     f'{float(s.get("elapsed", 0)):.0f} s · temperature {s.get("temperature", "?")}</div>'
                     f'<pre>{html.escape(str(s.get("text", "")))}</pre></li>')
    return f'<ol class="timeline" id="timeline">{"".join(items)}</ol>'


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f'<table class="kv">{cells}</table>'


def _config_tables(config: dict) -> str:
    parts = []
    for section in ("model", "train", "data", "corpus"):
        values = config.get(section)
        if isinstance(values, dict):
            parts.append(f"<div><h3>{section}</h3>{_table(list(values.items()))}</div>")
    return "".join(parts) or '<p class="note">config.json missing or unreadable.</p>'


def _final_metrics(train: list[dict], evals: list[dict], loaded: LoadedModel, sur: Surprise | None,
                   passage: Passage | None) -> list[tuple[str, str]]:
    rows = [("checkpoint analysed", f"{loaded.path.name} (step {loaded.step})"),
            ("parameters", f"{sum(p.numel() for p in loaded.model.parameters()):,}"),
            ("vocabulary", f"{len(loaded.vocab)} symbols")]
    if train:
        last = train[-1]
        rows += [("steps", f"{last['step']:,}"), ("wall time", f"{_get(last, 'elapsed'):.1f} s"),
                 ("last train loss", f"{last['train_loss']:.4f} nats/char"),
                 ("speed", f"{_get(last, 'chars_per_s'):,.0f} chars/s")]
    if evals:
        last = evals[-1]
        best = min(evals, key=lambda r: r["val_loss"] if math.isfinite(r["val_loss"]) else math.inf)
        rows += [("last validation loss", f"{last['val_loss']:.4f} nats/char, {last['val_loss'] / LN2:.4f} "
                  f"bits/char (step {last['step']})"),
                 ("best validation loss", f"{best['val_loss']:.4f} nats/char (step {best['step']})")]
    if sur is not None and passage is not None:
        rows.append(("passage", f"{len(passage.ids):,} characters of {passage.source}: "
                     f"{sur.mean:.4f} nats/char ({sur.mean / LN2:.4f} bits/char)"))
    return rows


def page_json(data: Any) -> str:
    """JSON for a <script type="application/json"> block: no `<`, `>` or `&` survive, so no `</script>`."""
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _quantized(values: np.ndarray) -> str:
    """(T, H) activations in [-1, 1] as base64 int8, unit-major (H rows of T)."""
    q = np.clip(np.rint(values.T * 127), -127, 127).astype(np.int8)
    return base64.b64encode(np.ascontiguousarray(q).tobytes()).decode("ascii")


def analyse(loaded: LoadedModel, passage: Passage, *, segment: int) -> dict[str, Any]:
    """Surprise, activations, correlations and gate statistics of a passage, as page data and parts."""
    tr = trace(loaded.model, passage.ids, segment=segment)
    sur = surprise(tr)
    series = unit_series(tr)
    text_chars = [chr(s) for s in loaded.vocab.decode_symbols(passage.ids)]
    corr = find_correlated(series, text_properties("".join(text_chars)))
    n_units = sum(a.shape[1] for _, _, a in series)
    shown = max(2, min(len(passage.ids), MAX_ACTIVATION_BYTES // max(n_units, 1)))
    units = [{"layer": k, "kind": kind, "size": acts.shape[1],
              "data": _quantized(np.tanh(acts[:shown]) if kind == "cell" else acts[:shown])}
             for k, kind, acts in series]
    return {"surprise": sur, "correlations": corr, "gates": gate_stats(tr), "units": units, "shown": shown}


def _correlation_table(corr: Correlations) -> str:
    rows = []
    for prop, found in corr.by_property.items():
        for rank, u in enumerate(found):
            label = f"layer {u.layer + 1} {u.kind} {u.unit}"
            name = html.escape(prop) if rank == 0 else ""
            rows.append(f'<tr data-unit="{u.layer}:{u.kind}:{u.unit}"><td>{name}</td>'
                        f'<td><a href="#neurons">{label}</a></td><td>{u.r:+.3f}</td></tr>')
    for prop in corr.constant:
        rows.append(f'<tr><td>{html.escape(prop)}</td><td colspan="2" class="note">does not vary in this '
                    f'passage</td></tr>')
    return ('<table class="corr" id="correlations"><tr><th>property</th><th>unit</th><th>Pearson r</th></tr>'
            f'{"".join(rows)}</table>')


def build_report(run_dir: str | os.PathLike, *, text: str | os.PathLike | None = None,
                 max_chars: int = MAX_CHARS, which: str = "best") -> str:
    """The report page for a run directory, as HTML text.

    The passage is `text` (a file) or the run's validation split, cut to `max_chars`. Without either (the
    corpus moved or changed) the passage sections say so and the rest of the page is still built.
    """
    loaded = load_run(run_dir, which=which, device="cpu")
    run_dir = loaded.path.parent  # RUN may also name one checkpoint file of the run
    config = read_config(run_dir)
    train, evals = read_metrics(run_dir)
    samples = read_jsonl(run_dir / "samples.jsonl")
    segment = loaded.eval_segment

    passage, analysis, missing = None, None, ""
    try:
        passage = passage_ids(loaded, text, max_chars=max_chars)
    except DataError as err:
        if text is not None:
            raise
        missing = f"{err}. Pass --text FILE to analyse another passage."
        warnings.warn(f"report without passage sections: {err}", CharnnWarning, stacklevel=2)
    if passage is not None:
        analysis = analyse(loaded, passage, segment=segment)

    curves, hover = curve_charts(train, evals, config)
    data: dict[str, Any] = {"charts": hover}
    if analysis is not None:
        sur: Surprise = analysis["surprise"]
        data.update({
            "vocab": display_symbols(loaded),
            "ids": passage.ids.tolist(),
            "loss": [round(float(v), 3) for v in np.nan_to_num(sur.loss, nan=99.0, posinf=99.0)],
            "top_ids": sur.top_ids.astype(int).ravel().tolist(),
            "top_probs": [round(float(v), 3) for v in np.nan_to_num(sur.top_probs.ravel())],
            "k": int(sur.top_ids.shape[1]),
            "units": analysis["units"],
            "shown": analysis["shown"],
        })
    title = f"charnn report · {run_dir.name}"
    m = loaded.model_cfg
    extras = [name for name, on in (("layer norm", m.layer_norm), ("tied embedding", m.tie_weights),
                                     (f"dropout {m.dropout:g}", m.dropout > 0),
                                     (f"locked dropout {m.locked_dropout:g}", m.locked_dropout > 0)) if on]
    summary = (f"{m.model.upper()}, {m.layers} layer(s) × {m.hidden} units, embedding {m.embed}"
               f"{''.join(', ' + e for e in extras)}; generated {time.strftime('%Y-%m-%d %H:%M:%S')}")
    final = _table(_final_metrics(train, evals, loaded, analysis and analysis["surprise"], passage))
    clips = [r["clip_frac"] for r in train if _is_number(r.get("clip_frac"))]
    clip_rate = sum(clips) / len(clips) if clips else 0.0

    if analysis is None:
        passage_html = neuron_html = gate_html = f'<p class="note">{html.escape(missing)}</p>'
    else:
        source = html.escape(passage.source)
        passage_html = (f'<p class="note">{len(passage.ids):,} characters of {source}, each coloured by the '
                        f'model\'s loss predicting it from the characters before it (state reset every '
                        f'{segment:,} characters, as <code>charnn eval</code> scores). Point at a character '
                        f'for the five characters the model expected there.</p>'
                        f'<div class="passage-wrap"><div class="passage" id="surprise-text"></div>'
                        f'<aside class="panel" id="surprise-panel">Point at a character.</aside></div>'
                        f'<div class="scale surprise-scale"><span>0 nats</span><i></i><span>≥ 6 nats</span>'
                        f'</div>')
        cut = "" if analysis["shown"] == len(passage.ids) else (
            f' The explorer shows the first {analysis["shown"]:,} characters (activations of every unit are '
            f'embedded in the page; correlations use the whole passage).')
        neuron_html = (f'<p class="note">The passage coloured by one unit\'s activation after reading each '
                       f'character (hidden state h, or tanh of the cell state c), blue negative, red '
                       f'positive.{cut}</p><div class="controls"><label>unit <select id="unit-select">'
                       f'</select></label>'
                       f'<span id="unit-value"></span></div>'
                       f'<div class="passage" id="neuron-text"></div>'
                       f'<h3>Units that follow properties of the text</h3>'
                       f'{_correlation_table(analysis["correlations"])}')
        gate_html = gate_charts(analysis["gates"])

    body = f"""<header><h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p>
<div id="report-error" class="error" hidden></div></header>
<nav><a href="#curves">curves</a><a href="#samples">samples</a><a href="#surprise">surprise</a>
<a href="#neurons">neurons</a><a href="#gates">gates</a><a href="#config">configuration</a></nav>
<section id="summary"><h2>Final metrics</h2>{final}</section>
<section id="curves"><h2>Training curves</h2>
<p class="note">Loss in nats per character (left) and bits per character (right). Clipping fired in
{100 * clip_rate:.1f}% of steps overall. Hover for values.</p><div class="charts">{curves}</div>
<div id="tooltip" class="tooltip" hidden></div></section>
<section id="samples"><h2>Samples during training</h2>{_timeline(samples)}</section>
<section id="surprise"><h2>Surprise</h2>{passage_html}</section>
<section id="neurons"><h2>Neuron explorer</h2>{neuron_html}</section>
<section id="gates"><h2>Gate saturation</h2><p class="note">How often each gate is left-saturated (below 0.1),
right-saturated (above 0.9) or in between over the passage (Karpathy, Johnson &amp; Fei-Fei 2015, fig. 3).</p>
{gate_html}</section>
<section id="config"><h2>Configuration</h2><div class="config">{_config_tables(config)}</div></section>"""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{html.escape(title)}</title><style>{PAGE_CSS}</style></head>\n<body>{body}\n'
            f'<script type="application/json" id="report-data">{page_json(data)}</script>\n'
            f'<script>{PAGE_JS}</script></body></html>\n')


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, **kw) -> Path:
    """Build the report and write it atomically (default `RUN/report.html`); returns the path written."""
    page = build_report(run_dir, **kw)
    run = Path(run_dir)
    path = Path(out) if out is not None else (run.parent if run.is_file() else run) / "report.html"
    if path.is_dir():
        path = path / "report.html"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CheckpointWriteError(f"cannot write the report {path}: {err.strerror or err}") from None
    return path


class ReportRefresher:
    """A `train(on_progress=...)` callback that rewrites RUN/report.html after each checkpoint and at the end.

    It wraps another callback (the display). A report that cannot be built is a warning, never a failed run.
    """

    def __init__(self, inner=None, *, max_chars: int = MAX_CHARS) -> None:
        self.inner = inner
        self.max_chars = max_chars
        self.path: Path | None = None
        self._run_dir: Path | None = None

    def __call__(self, progress) -> None:
        if self.inner is not None:
            self.inner(progress)
        if progress.kind == "checkpoint" and progress.text:
            self._run_dir = Path(progress.text).parent
            self.refresh()
        elif progress.kind == "end" and self._run_dir is not None:
            self.refresh()

    def refresh(self) -> None:
        try:
            self.path = write_report(self._run_dir, which="latest", max_chars=self.max_chars)
        except CharnnError as err:
            warnings.warn(f"report not refreshed: {err}", CharnnWarning, stacklevel=2)
