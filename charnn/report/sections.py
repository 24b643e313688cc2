"""The HTML of each report section (curves, samples, surprise, neurons, gates, memory, configuration, final metrics),
from the records and analysis of `charnn.report.analysis`. Every text that came from a file is escaped here.
The page around the sections is `charnn.report.page`.
"""

from __future__ import annotations

import html
import math
import time
from typing import Any

from charnn.config import ModelConfig
from charnn.inspect import Correlations, GateStats
from charnn.memory import Memory, log_spaced, reach
from charnn.report.analysis import LN2, Analysis, Passage, RunLog, is_number, number
from charnn.report.svg import Series, chart, unit_scatter
from charnn.store.checkpoint import LoadedModel

PATH_COLORS = ["#16a34a", "#ea580c", "#9333ea", "#0891b2", "#be123c"]  # the cell-path curves, one per layer
MEMORY_FLOOR = 1e-12  # gradients below this fraction of a curve's peak are not drawn: the tail is all decay
GATE_COLORS = {"input": "#2563eb", "forget": "#16a34a", "output": "#dc2626", "reset": "#9333ea", "update": "#ea580c"}


def note(text: str) -> str:
    return f'<p class="note">{text}</p>'


# --- training curves ---------------------------------------------------------------------------------------


def _loss_tip(r: dict, key: str, what: str) -> str:
    v = r[key]
    return f"{what} · step {r['step']} · {number(r, 'elapsed'):.1f} s · {v:.4f} nats/char ({v / LN2:.4f} bits/char)"


def _loss_charts(train: list[dict], evals: list[dict]) -> list[tuple[str, str, list]]:
    """Train and validation loss against iteration and against wall time, in nats (left) and bits (right)."""
    last_t = max([r["elapsed"] for r in train + evals if is_number(r.get("elapsed"))] or [0])
    t_div, t_unit = (3600, "h") if last_t > 3 * 3600 else (60, "min") if last_t > 600 else (1, "s")
    out = []
    for cid, x_key, x_label in (("loss-steps", "step", "iteration"), ("loss-time", "elapsed", f"wall time ({t_unit})")):
        div = t_div if x_key == "elapsed" else 1
        svg, pts = chart(
            cid,
            f"Loss against {x_label}",
            [
                Series(
                    "train",
                    [
                        (r[x_key] / div, r.get("train_loss"), _loss_tip(r, "train_loss", "train"))
                        for r in train
                        if is_number(r.get(x_key))
                    ],
                    "#2563eb",
                ),
                Series(
                    "validation",
                    [
                        (r[x_key] / div, r.get("val_loss"), _loss_tip(r, "val_loss", "validation"))
                        for r in evals
                        if is_number(r.get(x_key))
                    ],
                    "#dc2626",
                    dots=True,
                ),
            ],
            x_label=x_label,
            y_label="nats/char",
            right_label="bits/char",
            right_scale=1 / LN2,
        )
        out.append((cid, svg, pts))
    return out


def _lr_chart(train: list[dict]) -> tuple[str, str, list]:
    svg, pts = chart(
        "lr",
        "Learning rate",
        [
            Series(
                "learning rate",
                [(r["step"], number(r, "lr"), f"step {r['step']} · lr {number(r, 'lr'):.3g}") for r in train],
                "#059669",
            )
        ],
        x_label="iteration",
        y_label="learning rate",
        zero=True,
    )
    return "lr", svg, pts


def _grad_chart(train: list[dict], config: dict) -> tuple[str, str, list]:
    """The pre-clip gradient norm (left), the fraction of clipped steps (right) and the clip threshold."""
    clip = (config.get("train") or {}).get("grad_clip")
    clip = clip if is_number(clip) and clip > 0 else None
    svg, pts = chart(
        "grad",
        "Gradient norm and clipping",
        [
            Series(
                "grad norm",
                [
                    (r["step"], number(r, "grad_norm"), f"step {r['step']} · grad norm {number(r, 'grad_norm'):.4g}")
                    for r in train
                ],
                "#7c3aed",
            ),
            Series(
                "clipped (fraction of steps)",
                [
                    (
                        r["step"],
                        number(r, "clip_frac"),
                        f"step {r['step']} · clipping fired in {100 * number(r, 'clip_frac'):.0f}% of steps",
                    )
                    for r in train
                ],
                "#ea580c",
                right=True,
                dash=True,
            ),
        ],
        x_label="iteration",
        y_label="global gradient norm (pre-clip)",
        right_label="fraction clipped",
        zero=True,
        hlines=[(clip, f"clip at {clip:g}")] if clip else [],
    )
    return "grad", svg, pts


def curve_charts(log: RunLog) -> tuple[str, dict[str, list]]:
    """The four curve charts as HTML and their hover points by chart id."""
    charts = _loss_charts(log.train, log.evals) + [_lr_chart(log.train), _grad_chart(log.train, log.config)]
    return "".join(f"<figure>{svg}</figure>" for _, svg, _ in charts), {cid: pts for cid, _, pts in charts}


def clip_percent(train: list[dict]) -> float:
    """How often clipping fired over the whole run, in percent of steps."""
    clips = [r["clip_frac"] for r in train if is_number(r.get("clip_frac"))]
    return 100 * (sum(clips) / len(clips) if clips else 0.0)


# --- samples, tables -------------------------------------------------------------------------------------


def timeline(samples: list[dict]) -> str:
    if not samples:
        return note("No samples saved yet.")
    items = []
    for s in samples:
        val = s.get("val_loss")
        val_txt = (
            f"val {val:.4f} nats/char ({val / LN2:.3f} bits/char)"
            if isinstance(val, (int, float))
            else "no validation yet"
        )
        items.append(
            f'<li><div class="meta"><b>iteration {int(s.get("step", 0))}</b> · {val_txt} · '
            f"{float(s.get('elapsed', 0)):.0f} s · temperature {s.get('temperature', '?')}</div>"
            f"<pre>{html.escape(str(s.get('text', '')))}</pre></li>"
        )
    return f'<ol class="timeline" id="timeline">{"".join(items)}</ol>'


def kv_table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f'<table class="kv">{cells}</table>'


def config_tables(config: dict) -> str:
    parts = []
    plan = config.get("plan")
    if isinstance(plan, dict) and isinstance(plan.get("lines"), list):  # what the training plan chose, and why
        lines = "\n".join(str(line) for line in plan["lines"])
        parts.append(f'<div class="plan"><h3>training plan</h3><pre>{html.escape(lines)}</pre></div>')
    for section in ("model", "train", "data", "corpus", "init_from"):  # init_from: the weights it started from
        values = config.get(section)
        if isinstance(values, dict):
            parts.append(f"<div><h3>{section}</h3>{kv_table(list(values.items()))}</div>")
    return "".join(parts) or note("config.json missing or unreadable.")


def model_summary(m: ModelConfig) -> str:
    """One line under the title: the architecture, its options, and when the page was generated."""
    extras = [
        name
        for name, on in (
            ("layer norm", m.layer_norm),
            ("tied embedding", m.tie_weights),
            (f"dropout {m.dropout:g}", m.dropout > 0),
            (f"locked dropout {m.locked_dropout:g}", m.locked_dropout > 0),
        )
        if on
    ]
    return (
        f"{m.model.upper()}, {m.layers} layer(s) × {m.hidden} units, embedding {m.embed}"
        f"{''.join(', ' + e for e in extras)}; generated {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )


def final_metrics(
    log: RunLog, loaded: LoadedModel, analysis: Analysis | None, passage: Passage | None
) -> list[tuple[str, str]]:
    rows = [
        ("checkpoint analysed", f"{loaded.path.name} (step {loaded.step})"),
        ("parameters", f"{sum(p.numel() for p in loaded.model.parameters()):,}"),
        ("vocabulary", f"{len(loaded.vocab)} symbols"),
    ]
    if log.train:
        last = log.train[-1]
        rows += [
            ("steps", f"{last['step']:,}"),
            ("wall time", f"{number(last, 'elapsed'):.1f} s"),
            ("last train loss", f"{last['train_loss']:.4f} nats/char"),
            ("speed", f"{number(last, 'chars_per_s'):,.0f} chars/s"),
        ]
    if log.evals:
        last = log.evals[-1]
        best = min(log.evals, key=lambda r: r["val_loss"] if math.isfinite(r["val_loss"]) else math.inf)
        rows += [
            (
                "last validation loss",
                f"{last['val_loss']:.4f} nats/char, {last['val_loss'] / LN2:.4f} bits/char (step {last['step']})",
            ),
            ("best validation loss", f"{best['val_loss']:.4f} nats/char (step {best['step']})"),
        ]
    if analysis is not None and passage is not None:
        mean = analysis.surprise.mean
        rows.append(
            (
                "passage",
                f"{len(passage.ids):,} characters of {passage.source}: "
                f"{mean:.4f} nats/char ({mean / LN2:.4f} bits/char)",
            )
        )
    return rows


# --- the passage sections --------------------------------------------------------------------------------


def surprise_section(passage: Passage, segment: int) -> str:
    """The heatmap's frame: the page script colours the passage and fills the panel."""
    return (
        note(
            f"{len(passage.ids):,} characters of {html.escape(passage.source)}, each coloured by the "
            f"model's loss predicting it from the characters before it (state reset every "
            f"{segment:,} characters, as <code>charnn eval</code> scores). Point at a character "
            f"for the five characters the model expected there."
        )
        + '<div class="passage-wrap"><div class="passage" id="surprise-text"></div>'
        '<aside class="panel" id="surprise-panel">Point at a character.</aside></div>'
        '<div class="scale surprise-scale"><span>0 nats</span><i></i><span>≥ 6 nats</span></div>'
    )


def correlation_table(corr: Correlations) -> str:
    rows = []
    for prop, found in corr.by_property.items():
        for rank, u in enumerate(found):
            label = f"layer {u.layer + 1} {u.kind} {u.unit}"
            name = html.escape(prop) if rank == 0 else ""
            rows.append(
                f'<tr data-unit="{u.layer}:{u.kind}:{u.unit}"><td>{name}</td>'
                f'<td><a href="#neurons">{label}</a></td><td>{u.r:+.3f}</td></tr>'
            )
    for prop in corr.constant:
        rows.append(
            f'<tr><td>{html.escape(prop)}</td><td colspan="2" class="note">does not vary in this passage</td></tr>'
        )
    return (
        '<table class="corr" id="correlations"><tr><th>property</th><th>unit</th><th>Pearson r</th></tr>'
        f"{''.join(rows)}</table>"
    )


def neuron_section(passage: Passage, analysis: Analysis) -> str:
    """The explorer's frame (the page script fills the unit list and colours the passage) and the
    table of units that follow properties of the text."""
    cut = (
        ""
        if analysis.shown == len(passage.ids)
        else (
            f" The explorer shows the first {analysis.shown:,} characters (activations of every unit are "
            f"embedded in the page; correlations use the whole passage)."
        )
    )
    return (
        note(
            f"The passage coloured by one unit's activation after reading each character (hidden state "
            f"h, or tanh of the cell state c), blue negative, red positive.{cut}"
        )
        + '<div class="controls"><label>unit <select id="unit-select"></select></label>'
        '<span id="unit-value"></span></div>'
        '<div class="passage" id="neuron-text"></div>'
        "<h3>Units that follow properties of the text</h3>"
        f"{correlation_table(analysis.correlations)}"
    )


def _gate_table(rows: list[GateStats]) -> str:
    out = [
        '<table class="gates"><tr><th>gate</th><th>left-saturated (&lt; 0.1)</th><th>between</th>'
        "<th>right-saturated (&gt; 0.9)</th><th></th></tr>"
    ]
    for s in rows:
        segs = "".join(
            f'<span class="{k}" style="width:{100 * v:.2f}%"></span>'
            for k, v in (("left", s.left), ("mid", s.middle), ("right", s.right))
        )
        out.append(
            f"<tr><td>{s.gate}</td><td>{100 * s.left:.1f}%</td><td>{100 * s.middle:.1f}%</td>"
            f'<td>{100 * s.right:.1f}%</td><td><div class="stack">{segs}</div></td></tr>'
        )
    out.append("</table>")
    return "".join(out)


def gate_section(stats: list[GateStats]) -> str:
    """Per layer: bars of left/middle/right saturation per gate, and the per-unit scatter (the 2015 paper's
    fig. 3)."""
    if not stats:
        return note("This model has no gates (plain RNN).")
    parts = []
    for layer in sorted({s.layer for s in stats}):
        rows = [s for s in stats if s.layer == layer]
        points = [
            (
                a,
                b,
                GATE_COLORS.get(s.gate, "#555"),
                f"layer {layer + 1} {s.gate} gate, unit {unit}: left {a:.2f}, right {b:.2f}",
            )
            for s in rows
            for unit, (a, b) in enumerate(zip(s.unit_left, s.unit_right, strict=True))
        ]
        scatter = unit_scatter(
            points,
            label=f"gate saturation, layer {layer + 1}",
            x_label="fraction left-saturated",
            y_label="fraction right-saturated",
        )
        legend = " ".join(
            f'<span class="key" style="--c:{GATE_COLORS.get(s.gate, "#555")}">{s.gate}</span>' for s in rows
        )
        parts.append(
            f'<div class="gate-layer"><h3>Layer {layer + 1}</h3>{_gate_table(rows)}<div>{scatter}'
            f'<div class="legend">{legend}</div></div></div>'
        )
    return "".join(parts)


# --- how far back it looks ------------------------------------------------------------------------------


def memory_series(name: str, curve, color: str, *, dash: bool = False) -> Series:
    """A curve at log-spaced k >= 1 (k = 0 has no place on a log axis), down to MEMORY_FLOOR of its peak."""
    floor = MEMORY_FLOOR * float(curve.max())
    return Series(
        name,
        [
            (int(k), float(curve[k]), f"{name} · k = {k} · {curve[k]:.3g}")
            for k in log_spaced(len(curve) - 1)
            if k > 0 and curve[k] >= floor
        ],
        color,
        dash=dash,
    )


def memory_section(mem: Memory) -> tuple[str, list]:
    """The gradient against distance back, both axes logarithmic, and how to read it; with its hover points."""
    if mem.max_back < 1:
        return note("The passage is too short to look back along."), []
    series = [memory_series("input (embedding)", mem.inputs, "#2563eb")]
    series += [
        memory_series(name, curve, PATH_COLORS[i % len(PATH_COLORS)], dash=True)
        for i, (name, curve) in enumerate(mem.paths.items())
    ]
    svg, hover = chart(
        "memory",
        "Gradient of the loss against distance back",
        series,
        x_label="k, characters back",
        y_label="mean gradient norm",
        log_x=True,
        log_y=True,
        x_range=(1, max(mem.max_back, 2)),
    )
    paths = {
        "lstm": " The dashed curves are the cell path: the gradient with respect to the cell state c "
        "k steps back, which the forget gates carry (the path that lets an LSTM remember).",
        "gru": " The dashed curves are the GRU's state h k steps back: its one state is its cell "
        "(h = z·h + (1 − z)·n, an LSTM cell with coupled gates), carried by the update gate.",
        "rnn": " A plain RNN has no cell path: everything it remembers passes through tanh and the "
        "recurrent matrix at every step.",
    }[mem.kind]
    text = (
        f"The size of the gradient of the loss at a step t (predicting the next character) with respect "
        f"to the character read k steps earlier, averaged over {mem.anchors} steps of the passage "
        f"(k = 0, the character just read: {mem.inputs[0]:.3g}). Read it as how much the prediction "
        f"would move if that character changed: where the curve has fallen by orders of magnitude, the "
        f"model no longer looks that far back. Here it stays within 1% of its peak up to "
        f"k = {reach(mem.inputs)} of the {mem.max_back} measured.{paths}"
    )
    return note(html.escape(text)) + f'<div class="charts"><figure>{svg}</figure></div>', hover
