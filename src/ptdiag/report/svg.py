"""Plots as inline SVG, written by hand: the HTML report must open with no network and
no plotting library, and print as sharp as it shows.

The functions take plain data (series of (x, y) points, named parts), not runs, so any
specialist's measurements can be plotted without this module knowing where they come
from. Every piece of text is escaped here: labels can be user-controlled (module names,
parameter names).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Callable, Sequence

WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 84, 16, 30, 42
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf")
NONFINITE_COLOUR = "#d62728"
MAX_POINTS = 1500  # per series; beyond it each bucket keeps its min and max (spikes stay visible)
MAX_BARS = 300  # beyond it neighbouring steps are averaged into one bar
DOTS_UP_TO = 60  # points drawn as dots (with a hover title) when a series is this short
LOG_SPAN_DECADES = 3  # a positive series spanning more than this gets a log axis


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[float, float]]  # (x, y); a non-finite y is a gap with a marker


@dataclass(frozen=True)
class Marker:
    """A vertical line at x with a label, e.g. the first non-finite step."""

    x: float
    label: str
    colour: str = NONFINITE_COLOUR


@dataclass
class _Axis:
    lo: float
    hi: float
    log: bool = False
    ticks: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.log:
            self.lo, self.hi = math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi))
            if self.hi == self.lo:
                self.hi += 1
            step = max(1, math.ceil((self.hi - self.lo) / 6))
            self.ticks = [10.0 ** e for e in range(int(self.lo), int(self.hi) + 1, step)]
            return
        if self.hi == self.lo:
            self.lo, self.hi = self.lo - (abs(self.lo) or 1) * 0.5, self.hi + (abs(self.hi) or 1) * 0.5
        step = _nice_step((self.hi - self.lo) / 5)
        self.lo, self.hi = math.floor(self.lo / step) * step, math.ceil(self.hi / step) * step
        count = round((self.hi - self.lo) / step)
        self.ticks = [self.lo + i * step for i in range(count + 1)]

    def fraction(self, value: float) -> float:
        value = math.log10(value) if self.log else value
        return (value - self.lo) / (self.hi - self.lo)


def _nice_step(raw: float) -> float:
    """1, 2 or 5 times a power of ten: ticks people can read."""
    if raw <= 0 or not math.isfinite(raw):
        return 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.2g}"
    return f"{value:.4g}"


def thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """At most about MAX_POINTS: min and max of each bucket, non-finite points all kept."""
    if len(points) <= MAX_POINTS:
        return points
    size = math.ceil(len(points) / (MAX_POINTS // 2))
    kept = []
    for start in range(0, len(points), size):
        bucket = points[start:start + size]
        finite = [p for p in bucket if math.isfinite(p[1])]
        chosen = {min(finite, key=lambda p: p[1]), max(finite, key=lambda p: p[1])} if finite else set()
        chosen |= {p for p in bucket if not math.isfinite(p[1])}
        kept.extend(sorted(chosen))
    return kept


def _frame(plot_id: str, title: str, body: list[str], x_axis: _Axis, y_axis: _Axis, x_label: str,
           y_label: str, legend: list[tuple[str, str]], x_format: Callable, y_format: Callable) -> str:
    parts = [f'<svg class="plot" data-plot="{escape(plot_id)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(title)}</title>",
             f'<rect class="plot-area" x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}"/>']
    for tick in y_axis.ticks:
        y = TOP + PLOT_H * (1 - y_axis.fraction(tick))
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(y_format(tick))}</text>')
    for tick in x_axis.ticks:
        x = LEFT + PLOT_W * x_axis.fraction(tick)
        parts.append(f'<text class="tick" x="{x:.1f}" y="{TOP + PLOT_H + 16}" text-anchor="middle">'
                     f"{escape(x_format(tick))}</text>")
    parts.extend(body)
    parts.append(f'<text class="axis-label" x="{LEFT + PLOT_W / 2}" y="{HEIGHT - 6}" text-anchor="middle">'
                 f"{escape(x_label)}</text>")
    parts.append(f'<text class="axis-label" x="14" y="{TOP + PLOT_H / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {TOP + PLOT_H / 2})">{escape(y_label)}</text>')
    x = LEFT
    for label, colour in legend:
        parts.append(f'<rect x="{x}" y="8" width="10" height="10" fill="{colour}"/>'
                     f'<text class="legend" x="{x + 14}" y="17">{escape(label)}</text>')
        x += 24 + 7 * len(label)
    parts.append("</svg>")
    return "".join(parts)


def _integer_ticks(axis: _Axis) -> _Axis:
    """Steps are whole numbers: no tick at step 2.5."""
    axis.ticks = [t for t in axis.ticks if float(t).is_integer()]
    return axis


def line_chart(plot_id: str, title: str, series: Sequence[Series], *, x_label: str, y_label: str,
               markers: Sequence[Marker] = (), log_y: bool | None = None,
               y_format: Callable[[float], str] = number) -> str:
    """One line per series; non-finite values drawn as red crosses on the top edge."""
    thinned = [(s, thin(sorted(s.points))) for s in series]
    xs = [x for _, pts in thinned for x, _ in pts] + [m.x for m in markers]
    ys = [y for _, pts in thinned for _, y in pts if math.isfinite(y)]
    if not xs:
        return ""
    if log_y is None:
        log_y = bool(ys) and min(ys) > 0 and math.log10(max(ys) / min(ys)) > LOG_SPAN_DECADES
    if log_y:
        ys = [y for y in ys if y > 0]
    x_axis = _integer_ticks(_Axis(min(xs), max(xs)))
    y_axis = _Axis(min(ys), max(ys), log=log_y) if ys else _Axis(0.0, 1.0)
    px = lambda x: LEFT + PLOT_W * x_axis.fraction(x)  # noqa: E731
    py = lambda y: TOP + PLOT_H * (1 - y_axis.fraction(y))  # noqa: E731
    body, legend, crosses = [], [], 0
    for i, (s, pts) in enumerate(thinned):
        colour = PALETTE[i % len(PALETTE)]
        legend.append((s.label, colour))
        segment: list[str] = []
        for x, y in pts + [(math.nan, math.nan)]:
            drawable = math.isfinite(y) and (y > 0 or not log_y)
            if drawable:
                segment.append(f"{px(x):.1f},{py(y):.1f}")
                continue
            if len(segment) > 1:
                body.append(f'<polyline class="line" fill="none" stroke-width="1.6" stroke="{colour}" points="{" ".join(segment)}"/>')
            elif segment:
                body.append(f'<circle cx="{segment[0].split(",")[0]}" cy="{segment[0].split(",")[1]}" r="2.5" fill="{colour}"/>')
            segment = []
            if math.isfinite(x):
                crosses += 1
                body.append(f'<text class="nonfinite" x="{px(x):.1f}" y="{TOP + 10}" text-anchor="middle" '
                            f'fill="{NONFINITE_COLOUR}">×<title>{escape(s.label)} at {number(x)}: {escape(str(y))}</title></text>')
        if len(pts) <= DOTS_UP_TO:
            body.extend(f'<circle class="dot" cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{colour}">'
                        f"<title>{escape(s.label)} at {number(x)}: {escape(y_format(y))}</title></circle>"
                        for x, y in pts if math.isfinite(y) and (y > 0 or not log_y))
    if crosses:
        legend.append(("non-finite", NONFINITE_COLOUR))
    for m in markers:
        x = px(m.x)
        body.append(f'<line class="marker" stroke-dasharray="5 4" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + PLOT_H}" stroke="{m.colour}"/>'
                    f'<text class="marker-label" x="{x - 4:.1f}" y="{TOP + PLOT_H - 6}" text-anchor="end" '
                    f'fill="{m.colour}">{escape(m.label)}</text>')
    return _frame(plot_id, title, body, x_axis, y_axis, x_label, y_label + (" (log scale)" if log_y else ""),
                  legend, number, y_format)


def average_buckets(x: list[float], parts: dict[str, list[float]]) -> tuple[list[float], dict[str, list[float]]]:
    """At most about MAX_BARS bars: neighbouring x averaged into one, each part alike."""
    if len(x) <= MAX_BARS:
        return x, parts
    size = math.ceil(len(x) / MAX_BARS)
    starts = range(0, len(x), size)
    return ([x[s] for s in starts],
            {k: [sum(v[s:s + size]) / len(v[s:s + size]) for s in starts] for k, v in parts.items()})


def stacked_bars(plot_id: str, title: str, x: Sequence[float], parts: dict[str, Sequence[float]], *,
                 x_label: str, y_label: str, y_format: Callable[[float], str] = number) -> str:
    """One bar per x, split into the named parts (in the order given), e.g. a step's phases."""
    x, parts = average_buckets(list(x), {k: [max(0.0, v) for v in vs] for k, vs in parts.items()})
    if not x:
        return ""
    totals = [sum(vs[i] for vs in parts.values()) for i in range(len(x))]
    gap = min((b - a for a, b in zip(x, x[1:])), default=1.0) or 1.0
    x_axis = _integer_ticks(_Axis(min(x), max(x)))
    x_axis.lo, x_axis.hi = min(x) - gap / 2, max(x) + gap / 2  # the bars fill the plot's width
    x_axis.ticks = [t for t in x_axis.ticks if x_axis.lo <= t <= x_axis.hi]
    y_axis = _Axis(0.0, max(totals) or 1.0)
    width = max(1.0, 0.8 * PLOT_W * gap / (x_axis.hi - x_axis.lo))
    body, legend = [], []
    base = [0.0] * len(x)
    for i, (name, values) in enumerate(parts.items()):
        colour = PALETTE[i % len(PALETTE)]
        legend.append((name, colour))
        for j, value in enumerate(values):
            if value <= 0:
                continue
            top = TOP + PLOT_H * (1 - y_axis.fraction(base[j] + value))
            height = PLOT_H * (y_axis.fraction(base[j] + value) - y_axis.fraction(base[j]))
            cx = LEFT + PLOT_W * x_axis.fraction(x[j])
            body.append(f'<rect class="bar" x="{cx - width / 2:.1f}" y="{top:.1f}" width="{width:.1f}" '
                        f'height="{height:.1f}" fill="{colour}"><title>{number(x[j])}: {escape(name)} '
                        f"{escape(y_format(value))}</title></rect>")
            base[j] += value
    return _frame(plot_id, title, body, x_axis, y_axis, x_label, y_label, legend, number, y_format)


def horizontal_bars(plot_id: str, title: str, items: Sequence[tuple[str, float]], *,
                    value_format: Callable[[float], str] = number, colours: Sequence[str] = PALETTE) -> str:
    """Named amounts side by side, e.g. what the memory peak was made of; row i in
    colours[i % len(colours)] (two colours: pairs of rows, before and after)."""
    items = [(name, value) for name, value in items if math.isfinite(value) and value >= 0]
    if not items:
        return ""
    row, label_w = 24, 150
    height = TOP + row * len(items) + 10
    largest = max(v for _, v in items) or 1.0
    parts = [f'<svg class="plot" data-plot="{escape(plot_id)}" viewBox="0 0 {WIDTH} {height}" role="img" '
             f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for i, (name, value) in enumerate(items):
        y = TOP + i * row
        w = (WIDTH - label_w - 120) * value / largest
        parts.append(f'<text class="tick" x="{label_w - 8}" y="{y + 15}" text-anchor="end">{escape(name)}</text>'
                     f'<rect class="bar" x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" '
                     f'fill="{colours[i % len(colours)]}"/>'
                     f'<text class="tick" x="{label_w + w + 6:.1f}" y="{y + 15}">{escape(value_format(value))}</text>')
    parts.append("</svg>")
    return "".join(parts)
