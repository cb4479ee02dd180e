"""The report's charts: inline SVG (no scripts, no CDN), with axes a reader can trust.

``line_chart`` draws time series over the whole period asked (``x_range``), so
a version that served only the last hour of a week shows as the last hour of
the week, not as a week of its own. Its y axis has round steps (1, 2, 2.5 or 5
times a power of ten), counts are never split below 1, and its time axis is
marked at whole hours or days of UTC, each label once, the marks far enough apart
for their labels never to touch. ``histogram_chart`` puts a drift feature's
reference and current shares side by side.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from modelyard.store import DriftResult

_COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563")
_W, _H, _PAD = 640, 220, 52
Series = Mapping[str, Sequence[tuple[float, float]]]
_HOUR, _DAY = 3600, 86400
# steps of the time axis, the first giving at most _MAX_X_TICKS marks is used
_TIME_STEPS = (
    _HOUR, 2 * _HOUR, 3 * _HOUR, 6 * _HOUR, 12 * _HOUR, _DAY, 2 * _DAY, 7 * _DAY, 14 * _DAY,
    30 * _DAY, 91 * _DAY, 365 * _DAY,
)  # fmt: skip
_MAX_X_TICKS = 8
# The width of a time label's character (11 px text: DejaVu Sans's digits, the widest of
# the usual sans fonts, are 0.64 em) and the least room between two labels: adjacent marks
# are at least a label's width and this gap apart, so no two labels touch
_CHAR_PX, _LABEL_GAP_PX = 7.0, 10.0
_PATTERNS = ("%m-%d %H:%M", "%m-%d")  # steps under a day, and of whole days


def _esc(text: object) -> str:
    return html.escape(str(text))


def nice(v: float) -> str:
    """A number as a reader wants it on an axis or in a tooltip."""
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def nice_ticks(lo: float, hi: float, *, count: int = 5, whole: bool = False) -> list[float]:
    """Round ticks covering ``lo``..``hi``: a step of 1, 2, 2.5 or 5 times a power of ten,
    about ``count`` of them; ``whole``: at least 1 apart (counts)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"axis bounds must be finite, not {lo!r}..{hi!r}")
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, count - 1)
    if whole:
        raw = max(raw, 1.0)
    power = 10.0 ** math.floor(math.log10(raw))
    steps = (1, 2, 5, 10) if whole else (1, 2, 2.5, 5, 10)  # 2.5 of a count is no count
    step = next(m * power for m in steps if m * power >= raw * (1 - 1e-9))
    first, last = math.floor(lo / step), math.ceil(hi / step)
    return [i * step for i in range(first, last + 1)]


def time_ticks(x0: float, x1: float, *, width: float = _W - 2 * _PAD) -> tuple[list[float], str]:
    """Marks at whole hours or days (UTC) within ``x0``..``x1``, and their label format:
    the shortest step whose marks, drawn over ``width`` pixels, are at most
    ``_MAX_X_TICKS`` and each a label's width and a gap apart (a day's 3-hour marks are
    67 px apart: their 11-character labels, ``12-06 09:00``, ran into each other)."""
    span = max(x1 - x0, 1.0)

    def fits(step: int) -> bool:
        label = datetime.fromtimestamp(0, UTC).strftime(_PATTERNS[step >= _DAY])
        room = _CHAR_PX * len(label) + _LABEL_GAP_PX
        return span / step <= _MAX_X_TICKS and (step / span * width >= room or step >= span)

    longest = _TIME_STEPS[-1]  # past it: its whole multiples
    steps = itertools.chain(_TIME_STEPS, (k * longest for k in itertools.count(2)))
    step = next(s for s in steps if fits(s))
    first = math.ceil(x0 / step) * step
    ticks = [float(t) for t in range(int(first), int(x1) + 1, step)]
    if not ticks:  # a span shorter than an hour: its two ends
        ticks = [x0, x1]
    return ticks, _PATTERNS[step >= _DAY]


def _empty(title: str, why: str = "no data") -> str:
    caption = f"<figcaption>{_esc(title)}</figcaption>"
    return f'<figure>{caption}<p class="empty">{_esc(why)}</p></figure>'


def line_chart(
    title: str,
    series: Series,
    *,
    x_range: tuple[float, float] | None = None,
    unit: str = "",
    percent: bool = False,
    whole: bool = False,
) -> str:
    """An SVG line chart; x is epoch seconds (over ``x_range`` when given), one line per
    series. ``unit`` is written above the y axis; ``percent``: y is a share shown as %;
    ``whole``: y counts things, so its steps are whole numbers."""
    points = [p for s in series.values() for p in s]
    if not points:
        return _empty(title)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = x_range if x_range is not None else (min(xs), max(xs))
    x0, x1 = min(x0, *xs), max(x1, *xs)
    x1 = x1 if x1 > x0 else x0 + 1
    yt = nice_ticks(min(0.0, min(ys)), max(ys), whole=whole and not percent)
    if percent and yt[-1] > 1 >= max(ys):
        yt = [y for y in yt if y <= 1] or yt
    y0, y1 = yt[0], yt[-1]

    def sx(x: float) -> float:
        return _PAD + (x - x0) / (x1 - x0) * (_W - 2 * _PAD)

    def sy(y: float) -> float:
        return _H - _PAD + 8 - (y - y0) / (y1 - y0) * (_H - 2 * _PAD)

    parts = [
        f'<svg viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img" '
        f'aria-label="{_esc(title)}">'
    ]
    for y in yt:
        label = f"{y * 100:.4g}%" if percent else nice(y)
        parts.append(
            f'<line x1="{_PAD}" x2="{_W - _PAD}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" '
            f'class="grid"/><text x="{_PAD - 4}" y="{sy(y) + 4:.1f}" '
            f'text-anchor="end">{label}</text>'
        )
    if unit:
        parts.append(
            f'<text x="{_PAD - 4}" y="{sy(y1) - 12:.1f}" text-anchor="end">{_esc(unit)}</text>'
        )
    ticks, pattern = time_ticks(x0, x1)
    shown: set[str] = set()
    for x in ticks:
        label = datetime.fromtimestamp(x, UTC).strftime(pattern)
        if label in shown:
            continue
        shown.add(label)
        parts.append(
            f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{sy(y0):.1f}" y2="{sy(y0) + 4:.1f}" '
            f'class="grid"/><text x="{sx(x):.1f}" y="{sy(y0) + 16:.1f}" '
            f'text-anchor="middle">{_esc(label)}</text>'
        )
    for i, (name, pts) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sorted(pts))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        for x, y in pts:
            shown_y = f"{y:.1%}" if percent else nice(y)
            when = datetime.fromtimestamp(x, UTC).strftime("%Y-%m-%d %H:%M")
            parts.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}">'
                f"<title>{_esc(name)} at {when} UTC: {shown_y}</title></circle>"
            )
        parts.append(
            f'<rect x="{_PAD + 130 * i}" y="6" width="10" height="10" fill="{colour}"/>'
            f'<text x="{_PAD + 14 + 130 * i}" y="15">{_esc(name)}</text>'
        )
    parts.append("</svg>")
    return f"<figure><figcaption>{_esc(title)}</figcaption>{''.join(parts)}</figure>"


def histogram_chart(result: DriftResult) -> str:
    """Reference and current shares over the same bins, side by side."""
    d = result.details
    edges, ref, cur = d.get("edges"), d.get("reference"), d.get("current")
    title = result.feature
    if result.method != "-":
        title += f": {result.method}"
        if result.value is not None:
            title += f" = {result.value:.4g}"
    title += " — drifted" if result.drifted else ""
    if "mmd2" in d:  # embeddings have no histogram: say what the test saw
        text = f"MMD² {d['mmd2']:.4g} over {d.get('dimensions')} dimensions ({d.get('model')})"
        cls = ' class="drifted"' if result.drifted else ""
        return f"<figure{cls}><figcaption>{_esc(title)}</figcaption><p>{_esc(text)}</p></figure>"
    if not edges or not ref or not cur:
        return _empty(title, result.status.replace("_", " "))
    w, h, pad = 300, 150, 28
    top = max(max(ref), max(cur)) or 1.0
    n = len(ref)
    bw = (w - 2 * pad) / n
    parts = [
        f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
        f'aria-label="{_esc(title)}">'
    ]
    for i, (a, b) in enumerate(zip(ref, cur, strict=True)):
        x = pad + i * bw
        ha, hb = a / top * (h - 2 * pad), b / top * (h - 2 * pad)
        parts.append(
            f'<rect x="{x:.1f}" y="{h - pad - ha:.1f}" width="{bw / 2:.1f}" '
            f'height="{ha:.1f}" fill="#94a3b8"><title>reference {a:.1%}</title></rect>'
        )
        parts.append(
            f'<rect x="{x + bw / 2:.1f}" y="{h - pad - hb:.1f}" width="{bw / 2:.1f}" '
            f'height="{hb:.1f}" fill="#2563eb"><title>current {b:.1%}</title></rect>'
        )
    parts.append(
        f'<text x="{pad}" y="{h - 10}">{nice(edges[0])}</text>'
        f'<text x="{w - pad}" y="{h - 10}" text-anchor="end">{nice(edges[-1])}</text>'
        f'<rect x="{pad}" y="4" width="8" height="8" fill="#94a3b8"/>'
        f'<text x="{pad + 11}" y="12">reference</text>'
        f'<rect x="{pad + 80}" y="4" width="8" height="8" fill="#2563eb"/>'
        f'<text x="{pad + 91}" y="12">current</text></svg>'
    )
    cls = ' class="drifted"' if result.drifted else ""
    return f"<figure{cls}><figcaption>{_esc(title)}</figcaption>{''.join(parts)}</figure>"


__all__ = ["histogram_chart", "line_chart", "nice", "nice_ticks", "time_ticks"]
