"""The report sections about one passage of text read by the model: the surprise heatmap's frame, the neuron
explorer with the units that follow properties of the text, and gate saturation (bars and per-unit scatter).
The page script fills the passage in; every text that came from a file is escaped here.
"""

from __future__ import annotations

import html

from charnn.inspect import Correlations, GateStats
from charnn.report.analysis import Analysis, Passage
from charnn.report.markup import note
from charnn.report.svg import unit_scatter

GATE_COLORS = {"input": "#2563eb", "forget": "#16a34a", "output": "#dc2626", "reset": "#9333ea", "update": "#ea580c"}


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
