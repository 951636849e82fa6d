"""Server-side SVG line charts: pure (no I/O), so a chart is in the HTML a screenshot or a
browser without scripts shows, and the page needs no charting library or CDN.

Every text that came from a user is escaped; the SVG carries a ``<title>`` and an
``aria-label`` so a screen reader announces what it plots, and the page keeps the numbers
in a table beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 560, 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 28, 32
# Distinguishable for common colour blindness (Okabe-Ito), in order of use.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")


@dataclass(frozen=True, slots=True)
class Line:
    label: str
    points: Sequence[tuple[float, float]]  # (x, y), in x order


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    if high == low:
        return [low]
    step = (high - low) / count
    return [low + i * step for i in range(count + 1)]


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def line_chart(title: str, lines: Sequence[Line], *, x_label: str = "step") -> str:
    """An SVG document fragment plotting ``lines`` on shared axes."""
    points = [p for line in lines for p in line.points]
    label = escape(title)
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{label}" class="chart">'
        f"<title>{label}</title>"
        f'<text x="{_LEFT}" y="18" class="chart-title">{label}</text>'
    )
    if not points:
        return head + f'<text x="{_LEFT}" y="{HEIGHT // 2}">no points logged</text></svg>'
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if y0 == y1:  # a flat line sits mid-height instead of on an axis
        y0, y1 = y0 - 1, y1 + 1
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM

    def sx(x: float) -> float:
        return _LEFT + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return _TOP + (1 - (y - y0) / (y1 - y0)) * plot_h

    parts = [head]
    for tick in _ticks(y0, y1):
        y = sy(tick)
        parts.append(
            f'<line x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(tick)}</text>'
        )
    for tick in _ticks(x0, x1):
        x = sx(tick)
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - _BOTTOM + 16}" text-anchor="middle">{_fmt(tick)}</text>'
        )
    parts.append(
        f'<text x="{WIDTH - _RIGHT}" y="{HEIGHT - 4}" text-anchor="end">{escape(x_label)}</text>'
    )
    for index, line in enumerate(lines):
        colour = PALETTE[index % len(PALETTE)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in line.points)
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
            if len(line.points) > 1
            else ""
        )
        parts.extend(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}">'
            f"<title>{escape(line.label)} {x:g}: {_fmt(y)}</title></circle>"
            for x, y in line.points[-200:]  # dots only where they can still be told apart
        )
        if len(lines) > 1:
            parts.append(
                f'<text x="{WIDTH - _RIGHT}" y="{_TOP + 14 * index}" text-anchor="end" '
                f'fill="{colour}">{escape(line.label)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(title: str, bars: Sequence[tuple[str, float]]) -> str:
    """Horizontal bars, one per labelled value (e.g. a metric across compared versions)."""
    label = escape(title)
    height = _TOP + 24 * max(len(bars), 1) + 8
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}" role="img" aria-label="{label}" class="chart">'
        f"<title>{label}</title>"
        f'<text x="{_LEFT}" y="18" class="chart-title">{label}</text>'
    ]
    values = [v for _, v in bars]
    top = max([abs(v) for v in values] + [1e-12])
    for index, (name, value) in enumerate(bars):
        y = _TOP + 24 * index
        w = abs(value) / top * (WIDTH - _LEFT - _RIGHT - 60)
        parts.append(
            f'<text x="{_LEFT - 6}" y="{y + 15}" text-anchor="end">{escape(name)}</text>'
            f'<rect x="{_LEFT}" y="{y + 3}" width="{w:.1f}" height="16" '
            f'fill="{PALETTE[index % len(PALETTE)]}"/>'
            f'<text x="{_LEFT + w + 4:.1f}" y="{y + 15}">{_fmt(value)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
