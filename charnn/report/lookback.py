"""The report section "How far back does it look?": the gradient of the loss against distance back along the
passage, on log axes, for the input and each layer's cell path (`charnn.memory` measures it), and how to read it.
"""

from __future__ import annotations

import html

from charnn.memory import Memory, log_spaced, reach
from charnn.report.markup import note
from charnn.report.svg import Series, chart

PATH_COLORS = ["#16a34a", "#ea580c", "#9333ea", "#0891b2", "#be123c"]  # the cell-path curves, one per layer
MEMORY_FLOOR = 1e-12  # gradients below this fraction of a curve's peak are not drawn: the tail is all decay


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
