"""Hand-written SVG charts for the report page: a line chart with a left axis (linear or logarithmic), an
optional right axis and hover points, and a unit-square scatter. Strings in, strings out: no plotting library,
no knowledge of runs or models.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, replace

W, H, ML, MR, MT, MB = 560, 256, 58, 58, 24, 40  # chart size and margins (px)
PW, PH = W - ML - MR, H - MT - MB  # the plot area inside the margins
MAX_CURVE_POINTS = 800  # per series; longer logs are thinned evenly (the last point is always kept)

Point = tuple[float, float, str]  # (x, y, tooltip)


@dataclass(frozen=True)
class Series:
    name: str
    points: list[Point]
    color: str
    right: bool = False  # plotted against the right axis
    dots: bool = False
    dash: bool = False


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) from `lo` to `hi`."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def log_ticks(lo: float, hi: float) -> list[tuple[float, float]]:
    """(log10 position, value) ticks for a log axis spanning log10 values `lo` to `hi`: powers of ten (every
    n-th one over many decades), with 2 and 5 times them when under two decades fit."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return []
    exps = list(range(math.ceil(lo - 1e-9), math.floor(hi + 1e-9) + 1))
    if len(exps) >= 2:
        stride = math.ceil(len(exps) / 7)
        return [(e, 10.0**e) for e in exps[::stride]]
    values = [m * 10.0**e for e in range(math.floor(lo), math.ceil(hi) + 1) for m in (1, 2, 5)]
    out = [(math.log10(v), v) for v in values if lo - 1e-9 <= math.log10(v) <= hi + 1e-9]
    if len(out) >= 2:
        return out
    return [(math.log10(v), v) for v in ticks(10.0**lo, 10.0**hi) if v > 0]


def fmt(v: float) -> str:
    exp = round(math.log10(abs(v))) if v else 0
    if abs(exp) >= 4 and v == 10.0**exp:  # a power of ten, as a log axis labels it: short
        return f"1e{exp}"
    return f"{v:.4g}"


def value_range(values: list[float], *, zero: bool = False) -> tuple[float, float]:
    """The axis range of `values` (finite ones) with 5% padding; `zero` keeps 0 in range and unpadded."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if zero:
        lo = min(lo, 0.0)
    pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 1.0
    return (lo if zero and lo == 0 else lo - pad), hi + pad


def thin(points: list[tuple]) -> list[tuple]:
    """At most about MAX_CURVE_POINTS points, taken at an even stride; the last point is kept."""
    if len(points) <= MAX_CURVE_POINTS:
        return points
    stride = math.ceil(len(points) / MAX_CURVE_POINTS)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


@dataclass(frozen=True)
class _Frame:
    """A line chart's data ranges and the plot area they map onto."""

    x0: float
    x1: float
    y0: float  # left axis
    y1: float
    r0: float  # right axis (the left range when no series uses the right one)
    r1: float
    empty: bool

    def sx(self, x: float) -> float:
        return ML + (x - self.x0) / (self.x1 - self.x0) * PW

    def sy(self, y: float) -> float:  # left axis
        return MT + PH - (y - self.y0) / (self.y1 - self.y0) * PH

    def sr(self, y: float) -> float:  # right axis
        return MT + PH - (y - self.r0) / (self.r1 - self.r0) * PH


def _frame(
    series: list[Series], hlines: list[tuple[float, str]], *, zero: bool, x_range: tuple[float, float] | None = None
) -> _Frame:
    xs = [p[0] for s in series for p in s.points] + list(x_range or ())
    left = [p[1] for s in series if not s.right for p in s.points] + [v for v, _ in hlines]
    right = [p[1] for s in series if s.right for p in s.points]
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x1 <= x0:
        x1 = x0 + 1
    y0, y1 = value_range(left, zero=zero)
    r0, r1 = value_range(right, zero=True) if right else (y0, y1)
    return _Frame(x0, x1, y0, y1, r0, r1, empty=not xs)


def _axes(
    f: _Frame,
    *,
    x_label: str,
    y_label: str,
    right_label: str | None,
    right_scale: float | None,
    log_x: bool = False,
    log_y: bool = False,
) -> list[str]:
    """Grid lines, ticks and axis labels: left and bottom always, right when `right_label` is given. A log
    axis's frame is in log10 units: its ticks are placed there and labelled with the values."""
    out = []
    for t, label in log_ticks(f.y0, f.y1) if log_y else [(t, t) for t in ticks(f.y0, f.y1)]:
        y = f.sy(t)
        out.append(
            f'<line class="grid" x1="{ML}" x2="{ML + PW}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{ML - 6}" y="{y + 4:.1f}" text-anchor="end">{fmt(label)}</text>'
        )
    for t, label in log_ticks(f.x0, f.x1) if log_x else [(t, t) for t in ticks(f.x0, f.x1, 6)]:
        x = f.sx(t)
        out.append(
            f'<line class="tickline" x1="{x:.1f}" x2="{x:.1f}" y1="{MT + PH}" y2="{MT + PH + 4}"/>'
            f'<text class="tick" x="{x:.1f}" y="{MT + PH + 16}" text-anchor="middle">{fmt(label)}</text>'
        )
    if right_label:
        if right_scale:  # the right axis re-labels the left one in other units
            right = [(t, f.sy(t / right_scale)) for t in ticks(f.y0 * right_scale, f.y1 * right_scale)]
        else:
            right = [(t, f.sr(t)) for t in ticks(f.r0, f.r1)]
        for t, y in right:
            out.append(f'<text class="tick right" x="{ML + PW + 6}" y="{y + 4:.1f}">{fmt(t)}</text>')
        out.append(
            f'<text class="axis" transform="translate({W - 12},{MT + PH / 2}) rotate(90)" '
            f'text-anchor="middle">{html.escape(right_label)}</text>'
        )
    out.append(
        f'<text class="axis" x="{ML + PW / 2}" y="{H - 6}" text-anchor="middle">'
        f"{html.escape(x_label)}</text>"
        f'<text class="axis" transform="translate(14,{MT + PH / 2}) rotate(-90)" '
        f'text-anchor="middle">{html.escape(y_label)}</text>'
    )
    return out


def _lines(f: _Frame, series: list[Series]) -> tuple[list[str], list]:
    """Each series as a polyline (and dots), and the hover points [px, py, tooltip, colour] of all of them."""
    out, hover = [], []
    for s in series:
        ys = f.sr if s.right else f.sy
        pts = [(f.sx(x), ys(y), tip) for x, y, tip in s.points]
        if not pts:
            continue
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _ in pts)
        dash = ' stroke-dasharray="4 3"' if s.dash else ""
        out.append(
            f'<polyline class="series" points="{path}" stroke="{s.color}"{dash}>'
            f"<title>{html.escape(s.name)}</title></polyline>"
        )
        if s.dots or len(pts) == 1:
            out.extend(
                f'<circle class="pt" cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{s.color}">'
                f"<title>{html.escape(tip)}</title></circle>"
                for px, py, tip in pts
            )
        hover.extend([round(px, 1), round(py, 1), tip, s.color] for px, py, tip in pts)
    return out, hover


def _legend(series: list[Series]) -> list[str]:
    out, x = [], ML
    for s in series:
        out.append(
            f'<rect x="{x}" y="{MT - 12}" width="10" height="3" fill="{s.color}"/>'
            f'<text class="legend" x="{x + 14}" y="{MT - 7}">{html.escape(s.name)}</text>'
        )
        x += 22 + 7 * len(s.name)
    return out


def _shown(p: Point, log_x: bool, log_y: bool) -> bool:
    """Whether a point can be drawn: a finite y, and above 0 on a log axis."""
    x, y = p[0], p[1]
    return y is not None and math.isfinite(y) and (not log_x or x > 0) and (not log_y or y > 0)


def _logged(p: Point, log_x: bool, log_y: bool) -> Point:
    return (math.log10(p[0]) if log_x else p[0], math.log10(p[1]) if log_y else p[1], p[2])


def chart(
    cid: str,
    title: str,
    series: list[Series],
    *,
    x_label: str,
    y_label: str,
    right_label: str | None = None,
    right_scale: float | None = None,
    zero: bool = False,
    hlines: list[tuple[float, str]] = (),
    log_x: bool = False,
    log_y: bool = False,
    x_range: tuple[float, float] | None = None,
) -> tuple[str, list]:
    """An SVG line chart and its hover points [(px, py, tooltip, colour)].

    The right axis either re-labels the left one (`right_scale`: bits = nats / ln 2) or has its own series.
    Points whose y is None or not finite are left out; `hlines` are labelled horizontal reference lines.
    `log_x` and `log_y` make the x axis and the left axis logarithmic; points not above 0 there are left out.
    The x axis spans at least `x_range`.
    """
    series = [
        replace(
            s,
            points=thin(
                [_logged(p, log_x, log_y and not s.right) for p in s.points if _shown(p, log_x, log_y and not s.right)]
            ),
        )
        for s in series
    ]
    if log_y:
        hlines = [(math.log10(v), label) for v, label in hlines if v > 0]
    if log_x and x_range:
        x_range = (math.log10(x_range[0]), math.log10(x_range[1])) if min(x_range) > 0 else None
    f = _frame(series, hlines, zero=zero and not log_y, x_range=x_range)
    out = [
        f'<svg class="chart" id="{cid}" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
        f'aria-label="{html.escape(title)}"><title>{html.escape(title)}</title>',
        f'<rect class="plot" x="{ML}" y="{MT}" width="{PW}" height="{PH}"/>',
    ]
    out += _axes(
        f, x_label=x_label, y_label=y_label, right_label=right_label, right_scale=right_scale, log_x=log_x, log_y=log_y
    )
    for value, label in hlines:
        y = f.sy(value)
        out.append(
            f'<line class="hline" x1="{ML}" x2="{ML + PW}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{ML + PW - 4}" y="{y - 4:.1f}" text-anchor="end">'
            f"{html.escape(label)}</text>"
        )
    lines, hover = _lines(f, series)
    out += lines + _legend(series)
    if f.empty:
        out.append(f'<text class="empty" x="{ML + PW / 2}" y="{MT + PH / 2}" text-anchor="middle">no data yet</text>')
    out.append('<circle class="hl" r="5" cx="-10" cy="-10"/></svg>')
    return "".join(out), hover


def unit_scatter(points: list[tuple[float, float, str, str]], *, label: str, x_label: str, y_label: str) -> str:
    """A square scatter of (x, y, colour, tooltip) points with x and y in [0, 1], and the diagonal drawn."""
    size, m = 240, 34
    span = size - m - 8
    svg = [
        f'<svg class="scatter" viewBox="0 0 {size} {size}" width="{size}" height="{size}" role="img" '
        f'aria-label="{html.escape(label)}">'
        f'<rect class="plot" x="{m}" y="8" width="{span}" height="{span}"/>'
        f'<line class="grid" x1="{m}" y1="8" x2="{size - 8}" y2="{size - m}"/>'
    ]
    for t in (0, 0.5, 1):
        svg.append(
            f'<text class="tick" x="{m + t * span:.1f}" y="{size - m + 14}" '
            f'text-anchor="middle">{t:g}</text><text class="tick" x="{m - 4}" '
            f'y="{size - m - t * span + 4:.1f}" text-anchor="end">{t:g}</text>'
        )
    svg.append(
        f'<text class="axis" x="{m + span / 2}" y="{size - 4}" text-anchor="middle">{html.escape(x_label)}'
        f'</text><text class="axis" transform="translate(10,{8 + span / 2}) rotate(-90)" '
        f'text-anchor="middle">{html.escape(y_label)}</text>'
    )
    for x, y, color, tip in points:
        svg.append(
            f'<circle cx="{m + x * span:.1f}" cy="{size - m - y * span:.1f}" r="2.2" '
            f'fill="{color}" fill-opacity="0.6"><title>{html.escape(tip)}</title></circle>'
        )
    svg.append("</svg>")
    return "".join(svg)
