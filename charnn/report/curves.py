"""The report's training curves: loss against iteration and wall time (nats and bits), the learning rate, the
gradient norm with how often clipping fired, from the run's metrics.jsonl (`charnn.report.analysis.RunLog`), and how
much the training samples copy from the corpus (samples.jsonl's novelty).
"""

from __future__ import annotations

from charnn.report.analysis import LN2, RunLog, is_number, number
from charnn.report.svg import Series, chart


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


def _novelty_chart(samples: list[dict]) -> list[tuple[str, str, list]]:
    """Each training sample's share of characters in copied spans (left) and its longest copied span (right)
    against iteration: memorisation shows as these rising while validation loss rises. None without novelty."""
    rows = [r for r in samples if r.get("novelty")]
    if not rows:
        return []

    def tip(r: dict) -> str:
        n = r["novelty"]
        return (
            f"step {r['step']} · longest copied span {n['longest']:,} characters · {100 * n['share']:.0f}% in "
            f"copied spans of {n['copy_span']} or more"
        )

    svg, pts = chart(
        "novelty",
        "Copying from the training text (samples)",
        [
            Series("share in copied spans", [(r["step"], r["novelty"]["share"], tip(r)) for r in rows], "#db2777"),
            Series(
                "longest copied span",
                [(r["step"], r["novelty"]["longest"], tip(r)) for r in rows],
                "#0891b2",
                right=True,
                dash=True,
                dots=True,
            ),
        ],
        x_label="iteration",
        y_label="share of characters in copied spans",
        right_label="longest copied span (characters)",
        zero=True,
    )
    return [("novelty", svg, pts)]


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
    """The curve charts as HTML (loss twice, the samples' novelty when recorded, learning rate, gradient norm)
    and their hover points by chart id."""
    charts = (
        _loss_charts(log.train, log.evals)
        + _novelty_chart(log.samples)
        + [_lr_chart(log.train), _grad_chart(log.train, log.config)]
    )
    return "".join(f"<figure>{svg}</figure>" for _, svg, _ in charts), {cid: pts for cid, _, pts in charts}


def clip_percent(train: list[dict]) -> float:
    """How often clipping fired over the whole run, in percent of steps."""
    clips = [r["clip_frac"] for r in train if is_number(r.get("clip_frac"))]
    return 100 * (sum(clips) / len(clips) if clips else 0.0)
