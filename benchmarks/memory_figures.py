"""Draw the figures of docs/memory.md: the report's "How far back does it look?" curves of several runs, as
standalone SVG files (the report's own chart code and style). Not part of the package.

    python3 benchmarks/memory_figures.py /tmp/mem-rnn /tmp/mem-gru /tmp/mem-lstm --out docs
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from charnn.memory import memory, reach
from charnn.report.analysis import MAX_CHARS, passage_ids
from charnn.report.lookback import PATH_COLORS, memory_series
from charnn.report.page import asset
from charnn.report.svg import chart
from charnn.store.rundir import load_run

COLORS = {"rnn": "#dc2626", "gru": "#ea580c", "lstm": "#2563eb"}


def standalone(svg: str) -> str:
    """A chart from the page made to stand alone: the namespace, a white ground, the page's chart style."""
    css = asset("page.css")
    colours = dict(re.findall(r"--(\w+):(#[0-9a-f]+)", css))
    rules = "\n".join(line for line in css.splitlines() if line.startswith("svg"))
    rules = re.sub(r"var\(--(\w+)\)", lambda m: colours[m.group(1)], rules)
    head, rest = svg.split(">", 1)
    return (
        f'{head} xmlns="http://www.w3.org/2000/svg"><style>{rules}</style>'
        f'<rect width="100%" height="100%" fill="#fff"/>{rest}\n'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    inputs = []
    for run in args.runs:
        loaded = load_run(run)
        passage = passage_ids(loaded, None, max_chars=MAX_CHARS)  # the report's passage: the validation split
        start = time.perf_counter()
        mem = memory(loaded.model, passage.ids)
        seconds = time.perf_counter() - start
        kind, val = loaded.model_cfg.model, loaded.val_loss or float("nan")
        print(
            f"{run}: {kind}, step {loaded.step}, val {val:.4f} nats/char; {mem.anchors} anchors, "
            f"k = 0..{mem.max_back}, {seconds:.2f} s"
        )
        for name, curve in {"input": mem.inputs, **mem.paths}.items():
            ratios = " | ".join(f"{curve[k] / curve[0]:.2g}" for k in (1, 10, 30, 100))
            print(f"| {kind} | {name} | {curve[0]:.3g} | {ratios} | {reach(curve)} | {reach(curve, fraction=1e-6)} |")
        series = [memory_series("input (embedding)", mem.inputs, "#2563eb")]
        series += [
            memory_series(name, curve, color, dash=True)
            for (name, curve), color in zip(mem.paths.items(), PATH_COLORS, strict=False)
        ]
        svg, _ = chart(
            "memory",
            f"{kind}: gradient against distance back",
            series,
            x_label="k, characters back",
            y_label="mean gradient norm",
            log_x=True,
            log_y=True,
            x_range=(1, mem.max_back),
        )
        if mem.paths:  # a plain RNN's one curve is in the comparison figure
            (args.out / f"memory-{kind}.svg").write_text(standalone(svg), encoding="utf-8")
        inputs.append(memory_series(f"{kind} (val {val:.3f})", mem.inputs, COLORS.get(kind, "#555")))
    svg, _ = chart(
        "memory",
        "Gradient of the loss against distance back, input",
        inputs,
        x_label="k, characters back",
        y_label="mean |dL_t / dx_(t-k)|",
        log_x=True,
        log_y=True,
        x_range=(1, 256),
    )
    (args.out / "memory-inputs.svg").write_text(standalone(svg), encoding="utf-8")


if __name__ == "__main__":
    main()
