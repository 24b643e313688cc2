"""The report sections that show the run's own record: the summary line under the title, the final metrics, the
samples written during training, and the configuration (config.json, the training plan). Every text that came from
a file is escaped here.
"""

from __future__ import annotations

import html
import math
import time

from charnn.config import ModelConfig
from charnn.report.analysis import LN2, Analysis, Passage, RunLog, number
from charnn.report.markup import kv_table, note
from charnn.store.checkpoint import LoadedModel


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
        novelty = s.get("novelty")
        copied = (
            f" · longest copied span {novelty['longest']:,} characters, {100 * novelty['share']:.0f}% in copied "
            f"spans of {novelty['copy_span']} or more (marked)"
            if novelty
            else ""
        )
        items.append(
            f'<li><div class="meta"><b>iteration {int(s.get("step", 0))}</b> · {val_txt} · '
            f"{float(s.get('elapsed', 0)):.0f} s · temperature {s.get('temperature', '?')}{copied}</div>"
            f"<pre>{marked(str(s.get('text', '')), novelty['spans'] if novelty else [])}</pre></li>"
        )
    return f'<ol class="timeline" id="timeline">{"".join(items)}</ol>'


def marked(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` escaped, with each [start, end) of `spans` (copied from the corpus) in a <mark>."""
    out, at = [], 0
    for start, end in sorted(spans):
        start, end = max(start, at), min(end, len(text))
        if start >= end:
            continue
        out += [html.escape(text[at:start]), f'<mark class="copied">{html.escape(text[start:end])}</mark>']
        at = end
    return "".join(out) + html.escape(text[at:])


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
            (f"weight drop {m.weight_drop:g}", m.weight_drop > 0),
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
