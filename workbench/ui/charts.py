"""Small inline SVG charts: histogram, horizontal bars, line curves.

Pure functions from numbers to an SVG string. Inline SVG renders in microseconds (a feature
page stays far under its time budget), scales crisply, needs nothing from the network, and
every mark carries a ``<title>`` so hovering shows the exact number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

ACCENT = "#e8590c"
BLUE = "#1971c2"
GREEN = "#2f9e44"
RED = "#c92a2a"
GREY = "#868e96"
FONT = "font-family:system-ui,sans-serif"


def fmt(x: float | None, digits: int = 3) -> str:
    """A number short enough for a label: 0.000123 -> 1.23e-4, 12345 -> 12,345."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) < 10 ** -(digits - 1):
        return f"{x:.{digits - 1}e}".replace("e-0", "e-")
    return f"{x:.{digits}g}"


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (
        f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-label="{escape(label)}" style="{FONT};max-width:{width}px">'
        + "".join(body)
        + "</svg>"
    )


def histogram(
    bins: Sequence[tuple[int, float, float, int]],
    title: str = "",
    xlabel: str = "activation (log scale)",
    unit: str = "tokens",
    height: int = 200,
) -> str:
    """Bars of a log-binned histogram: (bin index, lo, hi, count); missing bins are empty.

    Log-spaced bins are equally wide on a log axis, so bars are drawn one slot per bin index
    and the axis is labelled with the bin edges.
    """
    if not bins:
        return '<p class="wb-empty">No activations recorded for this feature.</p>'
    first, last = min(b[0] for b in bins), max(b[0] for b in bins)
    by_index = {b[0]: b for b in bins}
    n = last - first + 1
    width, left, bottom, top = 560, 44, 34, 14
    slot = (width - left - 8) / n
    peak = max(b[3] for b in bins)
    body = [f'<text x="{left}" y="11" font-size="12" fill="#343a40">{escape(title)}</text>']
    for i in range(n):
        b = by_index.get(first + i)
        if b is None:
            continue
        h = (height - bottom - top) * b[3] / peak
        x, y = left + i * slot, height - bottom - h
        tip = f"{fmt(b[1])} – {fmt(b[2])}: {b[3]:,} {unit}"
        body.append(
            f'<rect class="wb-bar" x="{x:.1f}" y="{y:.1f}" width="{max(slot - 1, 1):.1f}" '
            f'height="{h:.1f}" fill="{ACCENT}"><title>{tip}</title></rect>'
        )
    geometry = (width, height, left, bottom, peak)
    body += _histogram_axes(by_index, first, n, slot, geometry, xlabel)
    return _svg(width, height, body, title or "activation histogram")


def _histogram_axes(by_index, first, n, slot, geometry, xlabel: str) -> list[str]:
    width, height, left, bottom, peak = geometry
    y0 = height - bottom
    out = [f'<line x1="{left}" y1="{y0}" x2="{width - 8}" y2="{y0}" stroke="{GREY}"/>']
    for i in sorted({0, n // 2, n - 1}):
        b = by_index.get(first + i)
        lo = b[1] if b else None
        if lo is None:
            continue
        x = left + i * slot
        out.append(f'<text x="{x:.1f}" y="{y0 + 14}" font-size="11" fill="{GREY}">{fmt(lo)}</text>')
    out.append(
        f'<text x="{width - 8}" y="{height - 4}" font-size="11" fill="{GREY}" '
        f'text-anchor="end">{escape(xlabel)}</text>'
    )
    out.append(f'<text x="4" y="{y0}" font-size="11" fill="{GREY}">0</text>')
    out.append(f'<text x="4" y="24" font-size="11" fill="{GREY}">{fmt(peak)}</text>')
    return out


def hbars(
    items: Sequence[tuple[str, float]],
    lo: float,
    hi: float,
    ref: float | None = None,
    color: str = BLUE,
    neg_color: str = RED,
    title: str = "",
    narrow: bool = False,
) -> str:
    """Horizontal bars from ``ref`` (or ``lo``) to each value on the axis [lo, hi].

    Used for concept AUROCs (axis 0..1, reference 0.5 = chance) and for logit effects
    (axis symmetric around 0, negative bars in ``neg_color``).
    """
    if not items:
        return '<p class="wb-empty">Nothing to show.</p>'
    row, label_w, width = (20, 100, 380) if narrow else (20, 210, 580)
    height = 22 + row * len(items) + 18
    scale = (width - label_w - 60) / (hi - lo if hi > lo else 1.0)
    x_of = lambda v: label_w + (min(max(v, lo), hi) - lo) * scale  # noqa: E731
    base = x_of(ref if ref is not None else lo)
    body = [f'<text x="0" y="12" font-size="12" fill="#343a40">{escape(title)}</text>']
    for i, (name, value) in enumerate(items):
        y = 22 + i * row
        x1, x2 = sorted((base, x_of(value)))
        fill = neg_color if ref is not None and value < ref else color
        body.append(
            f'<text x="{label_w - 6}" y="{y + 13}" font-size="12" text-anchor="end" '
            f'fill="#212529">{escape(name[: 14 if narrow else 32])}</text>'
            f'<rect x="{x1:.1f}" y="{y + 2}" width="{max(x2 - x1, 1):.1f}" height="{row - 5}" '
            f'fill="{fill}" rx="2"><title>{escape(name)}: {fmt(value)}</title></rect>'
            f'<text x="{max(x1, x2) + 4:.1f}" y="{y + 13}" font-size="11" '
            f'fill="{GREY}">{fmt(value)}</text>'
        )
    y_end = 22 + row * len(items)
    if ref is not None:
        body.append(
            f'<line x1="{base:.1f}" y1="18" x2="{base:.1f}" y2="{y_end}" stroke="#495057" '
            'stroke-dasharray="3,3"/>'
            f'<text x="{base:.1f}" y="{y_end + 13}" font-size="10" fill="{GREY}" '
            f'text-anchor="middle">{fmt(ref)}</text>'
        )
    return _svg(width, height, body, title or "bar chart")


def line(
    points: Sequence[tuple[float, float]], title: str, color: str = BLUE, log_y: bool = False
) -> str:
    """One curve (x, y) with its first and last values written at the ends."""
    pts = [(x, y) for x, y in points if y is not None and math.isfinite(y)]
    if log_y:
        pts = [(x, math.log10(y)) for x, y in pts if y > 0]
    if len(pts) < 2:
        return f'<p class="wb-empty">{escape(title)}: not enough points yet.</p>'
    width, height, left, right, top, bottom = 360, 170, 44, 12, 20, 26
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = (width - left - right) / ((x1 - x0) or 1.0)
    sy = (height - top - bottom) / ((y1 - y0) or 1.0)
    path = " ".join(
        f"{'M' if i == 0 else 'L'}{left + (x - x0) * sx:.1f},{height - bottom - (y - y0) * sy:.1f}"
        for i, (x, y) in enumerate(pts)
    )
    shown = (lambda v: fmt(10**v)) if log_y else fmt
    body = [
        f'<text x="{left}" y="13" font-size="12" fill="#343a40">{escape(title)}</text>',
        f'<path d="{path}" fill="none" stroke="{color}" stroke-width="2"/>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" '
        f'stroke="{GREY}"/>',
        f'<text x="4" y="{top + 8}" font-size="10" fill="{GREY}">{shown(y1)}</text>',
        f'<text x="4" y="{height - bottom}" font-size="10" fill="{GREY}">{shown(y0)}</text>',
        f'<text x="{left}" y="{height - 8}" font-size="10" fill="{GREY}">{fmt(x0)}</text>',
        f'<text x="{width - right}" y="{height - 8}" font-size="10" fill="{GREY}" '
        f'text-anchor="end">step {fmt(x1)}</text>',
    ]
    return _svg(width, height, body, title)


def colour_bar(
    stops: Sequence[Sequence[int]], vmax: float, label: str = "activation", width: int = 260
) -> str:
    """A horizontal colour bar from 0 to ``vmax`` through the RGB ``stops`` (heatmap scale)."""
    grad = "".join(
        f'<stop offset="{i / (len(stops) - 1):.2f}" stop-color="rgb({r},{g},{b})"/>'
        for i, (r, g, b) in enumerate(stops)
    )
    body = [
        f'<defs><linearGradient id="wb-ramp">{grad}</linearGradient></defs>',
        f'<rect x="0" y="2" width="{width}" height="10" rx="2" fill="url(#wb-ramp)"/>',
    ]
    for frac, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
        body.append(
            f'<text x="{frac * width:.0f}" y="25" font-size="11" fill="{GREY}" '
            f'text-anchor="{anchor}">{fmt(frac * vmax)}</text>'
        )
    body.append(
        f'<text x="{width / 2:.0f}" y="38" font-size="11" fill="{GREY}" '
        f'text-anchor="middle">{escape(label)}</text>'
    )
    return _svg(width, 40, body, f"colour scale 0 to {fmt(vmax)}")
