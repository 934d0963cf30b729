"""Inline SVG charts drawn from Python: a time-series line chart and a horizontal bar chart.

Every chart is `<svg class="plot" data-plot="<id>">`; every drawn data element (line, point,
bar) has class "mark" and a `data-series` name, so a test can count what was drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from html import escape

WIDTH, HEIGHT = 560, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 52  # margins in px; the legend sits under the x axis
TIME_FORMAT = {"minute": "%H:%M", "hour": "%m-%d %H:00", "day": "%Y-%m-%d"}

Series = list[tuple[float, float]]  # (x, y) points, x in unix seconds


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) covering lo..hi."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    v = start
    while v < hi + step * 0.999:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _open(plot_id: str, title: str) -> list[str]:
    return [
        f'<figure class="chart"><figcaption>{escape(title)}</figcaption>',
        f'<svg class="plot" data-plot="{escape(plot_id)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
    ]


def _legend(names: list[str], colors: dict[str, str], y: float) -> list[str]:
    out, x = [], LEFT
    for name in names:
        out.append(
            f'<rect x="{x}" y="{y - 9}" width="10" height="10" rx="2" fill="{colors[name]}"/>'
            f'<text x="{x + 14}" y="{y}" class="legend">{escape(name)}</text>'
        )
        x += 24 + 7 * len(name)
    return out


def line_chart(
    plot_id: str,
    title: str,
    series: dict[str, Series],
    colors: dict[str, str],
    *,
    bucket: str,
    y_format: Callable[[float], str],
    y_min: float | None = 0.0,
    y_max: float | None = None,
    marker: tuple[float, str] | None = None,
) -> str:
    """Lines over time, one per series, with a point per bucket (a lone point still shows);
    `marker` (x, label) draws a dashed vertical line, e.g. where a new model version starts."""
    drawn = {k: v for k, v in series.items() if v}
    parts = _open(plot_id, title)
    if not drawn:
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" class="empty">no data</text>')
        return "\n".join([*parts, "</svg></figure>"])
    xs = [x for pts in drawn.values() for x, _ in pts]
    ys = [y for pts in drawn.values() for _, y in pts]
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_ticks = nice_ticks(
        min(ys) if y_min is None else min(y_min, *ys), max(ys) if y_max is None else y_max
    )
    y_lo, y_hi = y_ticks[0], y_ticks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return TOP + plot_h - (y - y_lo) / ((y_hi - y_lo) or 1.0) * plot_h

    for t in y_ticks:
        y = f"{py(t):.1f}"
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y}" y2="{y}"/>'
            f'<text class="tick" x="{LEFT - 6}" y="{py(t) + 4:.1f}" text-anchor="end">'
            f"{escape(y_format(t))}</text>"
        )
    fmt = TIME_FORMAT[bucket]
    all_x = sorted(set(xs))
    step = max(1, math.ceil(len(all_x) / 5))
    for x in all_x[::step]:
        label = datetime.fromtimestamp(x, UTC).strftime(fmt)
        parts.append(
            f'<text class="tick" x="{px(x):.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">'
            f"{label}</text>"
        )
    if marker is not None and x_lo <= marker[0] <= x_hi:
        mx = f"{px(marker[0]):.1f}"
        parts.append(
            f'<line class="split" x1="{mx}" x2="{mx}" y1="{TOP}" y2="{TOP + plot_h}" '
            f'stroke="#98a2b3" stroke-dasharray="4 3"/>'
            f'<text class="tick" x="{mx}" y="{TOP - 4}" text-anchor="middle">'
            f"{escape(marker[1])}</text>"
        )
    for name, pts in drawn.items():
        color = colors[name]
        d = " ".join(
            f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for i, (x, y) in enumerate(pts)
        )
        if len(pts) > 1:  # a path through one point draws nothing: the point alone shows it
            parts.append(
                f'<path class="mark line" data-series="{escape(name)}" d="{d}" stroke="{color}"/>'
            )
        for x, y in pts:
            when = datetime.fromtimestamp(x, UTC).strftime("%Y-%m-%d %H:%M")
            parts.append(
                f'<circle class="mark point" data-series="{escape(name)}" cx="{px(x):.1f}" '
                f'cy="{py(y):.1f}" r="3" fill="{color}"><title>{escape(name)} {when}: '
                f"{escape(y_format(y))}</title></circle>"
            )
    parts += _legend(list(drawn), colors, HEIGHT - 8)
    return "\n".join([*parts, "</svg></figure>"])


def bar_chart(
    plot_id: str,
    title: str,
    values: dict[str, float | None],
    colors: dict[str, str],
    *,
    x_format: Callable[[float], str],
    x_max: float | None = None,
) -> str:
    """One horizontal bar per name; a None value gets a label and no bar."""
    parts = _open(plot_id, title)
    known = [v for v in values.values() if v is not None]
    hi = x_max if x_max is not None else (max(known) if known else 1.0) or 1.0
    row_h = min(36.0, (HEIGHT - TOP - 24) / max(len(values), 1))
    label_w = 130
    bar_w = WIDTH - label_w - RIGHT - 70
    for i, (name, v) in enumerate(values.items()):
        y = TOP + i * row_h
        parts.append(
            f'<text class="tick" x="{label_w - 8}" y="{y + row_h / 2 + 4:.1f}" text-anchor="end">'
            f"{escape(name[:18])}</text>"
        )
        if v is None:
            mid = f"{y + row_h / 2 + 4:.1f}"
            parts.append(f'<text class="tick" x="{label_w + 4}" y="{mid}">no feedback</text>')
            continue
        w = max(1.0, v / hi * bar_w)
        parts.append(
            f'<rect class="mark bar" data-series="{escape(name)}" x="{label_w}" y="{y + 4:.1f}" '
            f'width="{w:.1f}" height="{row_h - 8:.1f}" rx="3" fill="{colors[name]}">'
            f"<title>{escape(name)}: {escape(x_format(v))}</title></rect>"
            f'<text class="tick" x="{label_w + w + 6:.1f}" y="{y + row_h / 2 + 4:.1f}">'
            f"{escape(x_format(v))}</text>"
        )
    return "\n".join([*parts, "</svg></figure>"])
