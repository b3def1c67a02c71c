"""The HTML report written at the end of ``rampart demo``.

One self-contained file: inline CSS and inline SVG charts drawn here (no JavaScript, no external
URLs, no fonts to fetch), so it opens offline and can be attached to a ticket as is. Pure: it
turns samples, markers and tables into a string; :func:`write_report` is the only I/O.

Charts (issue 13): PnL in money (equity minus the allocated capital, so a promotion that changes
the capital is not drawn as a loss) and allocation, both over event time. The story spans days of
paper trading, days of canary and minutes of blue/green, so one linear time axis squeezed the
incident into a few pixels: the charts are drawn as one panel per phase (``phase`` markers start
them), each with its own time axis and value scale. A phase whose events are over early (a
rollback followed by an hour of trading) gets a broken axis: the events at full width, what came
after compressed to the right of a break. Events are numbered badges (colour, shape and line dash
per kind; cutover, breach and rollback named next to theirs) stacked in rows above the plot so no
two overlap, keyed by number in a list under each panel and in the events table. Times are UTC.
"""

from __future__ import annotations

import math
import os
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape
from itertools import pairwise
from pathlib import Path

import msgspec

NS = 1_000_000_000


class Sample(msgspec.Struct, frozen=True):
    """One algorithm's state at an event time (ns). Allocation and drawdown are fractions;
    ``max_drawdown`` is the core's own (exact, over every event), NaN when unknown. ``capital``
    is the capital allocated to it (the core's): PnL is ``equity - capital``; when it is NaN the
    report plots the change in equity since the algorithm's first sample instead.
    ``measurement`` names the measurement the sample belongs to when an algorithm has more than
    one (``"paper trading"`` before a promotion restarts it on real capital): the algorithms
    table has a row per algorithm and measurement."""

    ts: int
    algo: str
    equity: float
    allocation: float
    drawdown: float
    max_drawdown: float = math.nan
    capital: float = math.nan
    measurement: str = ""


class Marker(msgspec.Struct, frozen=True):
    """Something that happened at an event time (ns): ``kind`` is one of ``stage``, ``cutover``,
    ``breach``, ``rollback``, ``promotion``, ``approval``, ``info``, or ``phase``: not an event
    but the start of a phase of the story, drawn as a panel of its own titled ``text`` (the
    markers after it in time order, ties in list order, belong to it)."""

    ts: int
    kind: str
    text: str


# kind -> (colour, stroke-dasharray ("" for solid), stroke width). "info" and unknown kinds are
# listed in the events table but not drawn; "phase" markers start panels.
MARKER_STYLES: dict[str, tuple[str, str, float]] = {
    "stage": ("#2b8cbe", "5 3", 1.2),
    "cutover": ("#7b3294", "9 3 2 3", 1.8),
    "breach": ("#e6550d", "3 2", 1.8),
    "rollback": ("#c0101a", "", 2.4),
    "promotion": ("#31a354", "5 3", 1.2),
    "approval": ("#b8860b", "1 3", 1.6),
}
# kind -> badge shape; the kinds named next to their badge in the charts (a stage is a number)
MARKER_SHAPES: dict[str, str] = {
    "stage": "circle",
    "promotion": "circle",
    "approval": "circle",
    "cutover": "diamond",
    "breach": "triangle",
    "rollback": "square",
}
_NAMED = ("cutover", "breach", "rollback", "promotion", "approval")
PHASE = "phase"
INFO_COLOUR = "#8a8a8a"
ALGO_COLOURS = (
    "#253494",
    "#1b9e77",
    "#e7298a",
    "#8c510a",
    "#66a61e",
    "#525252",
    "#7570b3",
    "#a6761d",
)

# Chart geometry, in SVG user units. A chart is 640 units wide, shown at most 768 px wide (1.2 px
# a unit) and scaled down to fit a phone (0.56 px a unit at 390 px). Below _NARROW px the CSS
# enlarges the charts' text (ticks to _TICK_FONT_PHONE units), badges (by _PHONE) and legend (by
# _PHONE_LEGEND), to 8-11 px on a phone; every layout here (badge rows, legend rows, tick spacing)
# is computed for the enlarged sizes, so it holds at both.
_W = 640
_MAX_PX = 768
_LEFT = 66
_RIGHT = 20
_PNL_H = 160
_ALLOC_H = 80
_TOP = 6
_BOTTOM = 48
_GAP = 16  # between the two segments of a broken time axis
_NARROW = 600
_TICK_FONT, _TICK_FONT_PHONE = 11, 20
_TICK_CW = 0.65 * _TICK_FONT_PHONE  # advance of one tick-label character on a phone
_PHONE = 1.6
_R = 8.5  # badge radius; shapes reach _HALF of it sideways and 1.3 of it up and down
_HALF = {"circle": 1.0, "square": 0.95, "diamond": 1.25, "triangle": 1.5}
_BADGE_FONT = 10
_MK_CW = 0.62 * _BADGE_FONT  # advance of one character of a badge's name
_ROW_H = math.ceil(2 * 1.3 * _R * _PHONE + 4)  # one row of badges
_LEGEND_FONT = 12
_LEGEND_CW = 0.62 * _LEGEND_FONT
_PHONE_LEGEND = 1.6
_LEGEND_ROW = math.ceil(_LEGEND_FONT * _PHONE_LEGEND + 8)


# --- time ---------------------------------------------------------------------------------------


def _dt(ns: int) -> datetime | None:
    try:
        s, rem = divmod(ns, NS)
        return datetime.fromtimestamp(s, UTC) + timedelta(microseconds=rem // 1000)
    except (OverflowError, OSError, ValueError):
        return None


def fmt_utc(ns: int) -> str:
    """``YYYY-MM-DD HH:MM:SS.mmm`` in UTC (or ``<ns> ns`` if out of datetime's range)."""
    d = _dt(ns)
    if d is None:
        return f"{ns} ns"
    return d.strftime("%Y-%m-%d %H:%M:%S.") + f"{d.microsecond // 1000:03d}"


_SUBSECOND_STEPS = [m * 10**e for e in range(0, 9) for m in (1, 2, 5)]  # 1 ns .. 500 ms
_STEPS_NS = (
    [s for s in _SUBSECOND_STEPS if s < NS]
    + [s * NS for s in (1, 2, 5, 10, 15, 30)]
    + [m * 60 * NS for m in (1, 2, 5, 10, 15, 30)]
    + [h * 3600 * NS for h in (1, 2, 3, 6, 12)]
    + [d * 86400 * NS for d in (1, 2, 7, 14, 28)]
)


def _time_ticks(t0: int, t1: int, target: int = 7) -> tuple[list[int], int]:
    span = max(1, t1 - t0)
    step = next((s for s in _STEPS_NS if span / s <= target), 0)
    if step == 0:
        step = _STEPS_NS[-1] * max(1, math.ceil(span / (_STEPS_NS[-1] * target)))
    first = -(-t0 // step) * step
    return list(range(first, t1 + 1, step)), step


def _time_label(ns: int, step: int, with_date: bool) -> str:
    d = _dt(ns)
    if d is None:
        return str(ns)
    if step >= 86400 * NS:
        return d.strftime("%m-%d")
    if step < 1000:
        clock = d.strftime("%H:%M:%S.") + f"{ns % NS:09d}"
    elif step < NS // 1000:
        clock = d.strftime("%H:%M:%S.") + f"{d.microsecond:06d}"
    elif step < NS:
        clock = d.strftime("%H:%M:%S.") + f"{d.microsecond // 1000:03d}"
    elif step < 60 * NS:
        clock = d.strftime("%H:%M:%S")
    else:
        clock = d.strftime("%H:%M")
    return d.strftime("%m-%d ") + clock if with_date else clock


def _time_labels(ticks: list[int], step: int, t0: int, t1: int) -> list[str]:
    """Tick labels; when the range spans several UTC days, a tick on a new day gets its date."""
    a, b = _dt(t0), _dt(t1)
    multi_day = a is not None and b is not None and a.date() != b.date()
    out, last_date = [], None
    for t in ticks:
        d = _dt(t)
        date = None if d is None else d.date()
        out.append(_time_label(t, step, multi_day and date != last_date))
        last_date = date
    return out


def _time_axis_title(t0: int, t1: int) -> str:
    a, b = _dt(t0), _dt(t1)
    if a is None or b is None:
        return "event time (ns)"
    if a.date() == b.date():
        return f"event time, UTC ({a:%Y-%m-%d})"
    return f"event time, UTC ({a:%Y-%m-%d} to {b:%Y-%m-%d})"


# --- numbers ------------------------------------------------------------------------------------


def _nice_step(span: float, target: int = 5) -> float:
    raw = span / target
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= m * mag:
            return m * mag
    return 10.0 * mag


def _value_ticks(lo: float, hi: float, target: int = 5) -> tuple[float, float, list[float], int]:
    """Nice bounds covering [lo, hi], the ticks between them and the decimals to label them."""
    if hi - lo <= 1e-12 * max(1.0, abs(hi), abs(lo)):
        pad = max(abs(hi) * 0.01, 1.0)
        lo, hi = lo - pad, hi + pad
    step = _nice_step(hi - lo, target)
    start = math.floor(lo / step + 1e-9) * step
    stop = math.ceil(hi / step - 1e-9) * step
    n = round((stop - start) / step)
    ticks = [start + i * step for i in range(n + 1)]
    return start, stop, ticks, _decimals(step)


def _decimals(step: float) -> int:
    """Decimals that write a multiple of ``step`` exactly (2.5 -> 1, 0.25 -> 2, 5 -> 0)."""
    return next((d for d in range(6) if abs(round(step, d) - step) <= 1e-9 * abs(step)), 6)


def _f(x: float) -> str:
    return f"{x:.1f}"


def _fmt_ms(v: float) -> str:
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.3f}".rstrip("0").rstrip(".")


# --- panels -------------------------------------------------------------------------------------


@dataclass
class _Panel:
    """One phase of the story: its time range and the samples and markers in it."""

    number: int
    name: str
    t0: int
    t1: int
    samples: list[Sample] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)  # every kind but "phase", in order


def _panels(samples: Sequence[Sample], marks: Sequence[Marker]) -> list[_Panel]:
    """The phases (``phase`` markers, in order) as panels; one unnamed panel without them. A
    panel runs from its phase marker to the next one; markers follow the phase marker before them
    in ``marks`` (so ties go by list order), samples the phase that had started at their time."""
    times = [s.ts for s in samples] + [m.ts for m in marks if m.kind in MARKER_STYLES]
    if not times:
        return []
    lo, hi = min(times), max(times)
    phases = [m for m in marks if m.kind == PHASE]
    if not phases:
        panels = [_Panel(1, "", lo, hi, list(samples), [m for m in marks if m.kind != PHASE])]
    else:
        panels = []
        for i, ph in enumerate(phases):
            t0 = min(lo, ph.ts) if i == 0 else ph.ts
            t1 = phases[i + 1].ts if i + 1 < len(phases) else max(hi, ph.ts)
            panels.append(_Panel(i + 1, ph.text, t0, t1))
        k = 0
        for m in marks:
            if m.kind == PHASE:
                k = phases.index(m)
            else:
                panels[k].markers.append(m)
        starts = [p.t0 for p in panels]
        for s in samples:
            panels[max(0, bisect_right(starts, s.ts) - 1)].samples.append(s)
    for p in panels:
        if p.t1 <= p.t0:
            p.t0, p.t1 = p.t0 - NS, p.t0 + NS
    return panels


@dataclass(frozen=True)
class _Seg:
    """A stretch of a time axis: event times t0..t1 drawn from x0 to x1."""

    t0: int
    t1: int
    x0: float
    x1: float

    def x(self, t: int) -> float:
        return self.x0 + (t - self.t0) / (self.t1 - self.t0) * (self.x1 - self.x0)


def _segments(t0: int, t1: int, events: Sequence[int]) -> list[_Seg]:
    """A panel's time axis: one linear segment; or, when its events are over early (the time
    after the last one is more than 3x the time before it: a rollback, then an hour of trading),
    a broken axis: up to a third of the events' span after the last one at 72% of the width,
    the rest compressed after a break. Squeezing the events into a corner is what it avoids."""
    right = _W - _RIGHT
    if events:
        last = max(events)
        ev = last - t0
        if ev > 0 and t1 - last > 3 * ev:
            cut = last + max(1, ev // 3)
            split = _LEFT + 0.72 * (right - _LEFT)
            return [_Seg(t0, cut, _LEFT, split - _GAP / 2), _Seg(cut, t1, split + _GAP / 2, right)]
    return [_Seg(t0, t1, _LEFT, right)]


def _seg_of(segs: Sequence[_Seg], t: int) -> int:
    return next((i for i, s in enumerate(segs) if t <= s.t1), len(segs) - 1)


def _x_of(segs: Sequence[_Seg], t: int) -> float:
    seg = segs[_seg_of(segs, t)]
    return min(max(seg.x(t), seg.x0), seg.x1)


def _seg_ticks(segs: Sequence[_Seg], i: int, t0: int, t1: int) -> list[tuple[float, str]]:
    """Time ticks of segment ``i`` (labels dated as the panel's range t0..t1 needs): as many as
    fit with phone-sized labels, none whose label would run into the next segment's."""
    seg = segs[i]
    width, span = seg.x1 - seg.x0, seg.t1 - seg.t0
    for target in range(8, 0, -1):
        ticks, step = _time_ticks(seg.t0, seg.t1, target)
        labels = _time_labels(ticks, step, t0, t1)
        need = max((len(x) for x in labels), default=0) * _TICK_CW + 12
        if step / span * width >= need or target == 1:
            break
    lo = 4.0 if i == 0 else seg.x0 - _GAP / 2 + 2
    hi = _W - 4.0 if i == len(segs) - 1 else seg.x1 + _GAP / 2 - 2
    out = []
    for t, label in zip(ticks, labels, strict=True):
        x, half = seg.x(t), len(label) * _TICK_CW / 2
        if seg.t0 <= t <= seg.t1 and x - half >= lo and x + half <= hi:
            out.append((x, label))
    return out


# --- chart parts --------------------------------------------------------------------------------


class _Series(msgspec.Struct):
    algo: str
    colour: str
    points: list[tuple[int, float]]


def _decimate(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """At most first, lowest, highest and last point per pixel column: same picture, fewer
    points for long runs."""
    out: list[tuple[float, float]] = []
    i, n = 0, len(pts)
    while i < n:
        col = int(pts[i][0])
        j = i
        while j < n and int(pts[j][0]) == col:
            j += 1
        if j - i <= 4:
            out.extend(pts[i:j])
        else:
            bucket = range(i, j)
            lo = min(bucket, key=lambda k: pts[k][1])
            hi = max(bucket, key=lambda k: pts[k][1])
            out.extend(pts[k] for k in sorted({i, lo, hi, j - 1}))
        i = j
    return out


def _shape(shape: str, r: float) -> str:
    """An SVG path of a badge shape centred on (0, 0) (paths, not <circle>: those are data)."""
    if shape == "diamond":
        d = r * _HALF["diamond"]
        return f"M0,{_f(-d)}L{_f(d)},0L0,{_f(d)}L{_f(-d)},0Z"
    if shape == "triangle":  # apex up, base low and wide: its number sits below the centre
        w = r * _HALF["triangle"]
        return f"M0,{_f(-1.3 * r)}L{_f(w)},{_f(r)}L{_f(-w)},{_f(r)}Z"
    if shape == "square":
        d = r * _HALF["square"]
        return f"M{_f(-d)},{_f(-d)}H{_f(d)}V{_f(d)}H{_f(-d)}Z"
    return f"M{_f(-r)},0A{_f(r)},{_f(r)} 0 1 0 {_f(r)},0A{_f(r)},{_f(r)} 0 1 0 {_f(-r)},0Z"


def _legend(items: list[tuple[str, str, str, float, str]]) -> tuple[list[str], int]:
    """Legend entries (label, colour, dasharray, width, badge shape or "") flowed into rows,
    spaced for the phone's enlarged text. Returns the parts and the height they take."""
    parts: list[str] = []
    x, row = 12.0, 0
    for label, colour, dash, width, shape in items:
        item_w = (30 + _LEGEND_CW * len(label)) * _PHONE_LEGEND + 14
        if x + item_w > _W - 8 and x > 12:
            x, row = 12.0, row + 1
        y = _TOP + row * _LEGEND_ROW + _LEGEND_ROW / 2
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        mark = (
            f'<path d="{_shape(shape, 4.5)}" transform="translate(11,0)" fill="{colour}"/>'
            if shape
            else ""
        )
        parts.append(
            f'<g transform="translate({_f(x)},{_f(y)})"><g class="lg">'
            f'<line x1="0" y1="0" x2="22" y2="0" stroke="{colour}" stroke-width="{width}"'
            f"{dash_attr}/>{mark}"
            f'<text x="28" y="0" dy="4" class="legend">{escape(label)}</text></g></g>'
        )
        x += item_w
    return parts, (row + 1) * _LEGEND_ROW + 4 if items else 0


@dataclass(frozen=True)
class _Badge:
    x: float
    row: int
    number: int
    marker: Marker
    name: str  # the kind, written next to the badge ("" for a stage)
    left: bool  # name on the left (near the right edge)


def _badges(numbered: Sequence[tuple[int, Marker]], segs: Sequence[_Seg]) -> list[_Badge]:
    """Each drawn marker's badge, in the lowest row where it overlaps no other (extents at the
    phone's enlarged size, which is the larger): labels never overlap, whatever the spacing."""
    rows: list[list[tuple[float, float]]] = []
    out = []
    for n, m in numbered:
        x = _x_of(segs, m.ts)
        name = m.kind if m.kind in _NAMED else ""
        tw = 3 + len(name) * _MK_CW if name else 0.0
        r = _HALF[MARKER_SHAPES.get(m.kind, "circle")] * _R
        left = bool(name) and x + (r + tw) * _PHONE > _W - 2
        lo = x - (r + (tw if left else 0.0)) * _PHONE - 2
        hi = x + (r + (0.0 if left else tw)) * _PHONE + 2
        row = next(
            (i for i, r in enumerate(rows) if all(hi <= a or lo >= b for a, b in r)), len(rows)
        )
        if row == len(rows):
            rows.append([])
        rows[row].append((lo, hi))
        out.append(_Badge(x, row, n, m, name, left))
    return out


def _badge_svg(b: _Badge, y: float) -> str:
    colour = MARKER_STYLES[b.marker.kind][0]
    shape = MARKER_SHAPES.get(b.marker.kind, "circle")
    dy = _R * 0.3 if shape == "triangle" else 0.0
    small = ' style="font-size:8.5px"' if b.number >= 10 else ""
    name = ""
    if b.name:
        nx = -(_HALF[shape] * _R + 3) if b.left else _HALF[shape] * _R + 3
        anchor = "end" if b.left else "start"
        name = (
            f'<text x="{_f(nx)}" y="0" dy="3.6" text-anchor="{anchor}" fill="{colour}" '
            f'class="mk">{escape(b.name)}</text>'
        )
    return (
        f'<g transform="translate({_f(b.x)},{_f(y)})"><g class="bz">'
        f"<title>{b.number}. {escape(fmt_utc(b.marker.ts))} {escape(b.marker.kind)}: "
        f"{escape(b.marker.text)}</title>"
        f'<path d="{_shape(shape, _R)}" fill="{colour}" stroke="#fff" stroke-width="1.2"/>'
        f'<text x="0" y="{_f(dy)}" dy="3.5" text-anchor="middle" class="bn"{small}>'
        f"{b.number}</text>"
        f"{name}</g></g>"
    )


def _money_labels(ticks: list[float]) -> list[str]:
    """Compact money tick labels: 25k, 1.5M, 250."""
    big = max((abs(t) for t in ticks), default=0.0)
    unit, div = ("M", 1e6) if big >= 1e6 else ("k", 1e3) if big >= 1e4 else ("", 1.0)
    step = (ticks[1] - ticks[0]) / div if len(ticks) > 1 else 1.0
    decimals = _decimals(step)
    out = []
    for t in ticks:
        v = t / div
        if abs(v) < 1e-9 * max(1.0, step):
            out.append("0")  # not "-0" or "0k"
        else:
            out.append(f"{v:,.{decimals}f}{unit}")
    return out


def _panel_svg(
    panel: _Panel,
    segs: list[_Seg],
    series: list[_Series],
    badges: list[_Badge],
    *,
    percent: bool,
    steps: bool,
    legend: list[tuple[str, str, str, float, str]],
    aria: str,
) -> str:
    plot_h = _ALLOC_H if percent else _PNL_H
    legend_parts, legend_h = _legend(legend)
    # allocation: the events' lines only (their badges are on the PnL chart above)
    nrows = 0 if percent else max((b.row + 1 for b in badges), default=0)
    # room above the plot for the top tick label at its phone size, badges, legend
    top = _TOP + 8 + legend_h + nrows * _ROW_H + (4 if nrows else 0) + (8 if legend_h else 0)
    bottom = top + plot_h
    height = bottom + _BOTTOM

    values = [v for s in series for _, v in s.points]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if percent:
        lo, hi = min(0.0, lo), max(hi, 100.0)
    y0, y1, yticks, decimals = _value_ticks(lo, hi, 3 if percent else 4)
    pad = 0.04 * (y1 - y0)  # lines at the extremes stay off the plot's border
    y0, y1 = y0 - pad, y1 + pad

    def sy(v: float) -> float:
        return bottom - (v - y0) / (y1 - y0) * plot_h

    if percent:
        ylabels = [f"{0.0 if abs(v) < 1e-9 else v:,.{decimals}f}%" for v in yticks]
    else:
        ylabels = _money_labels(yticks)

    out = [
        f'<svg class="chart" role="img" aria-label="{escape(aria)}" width="{_W}" '
        f'height="{height}" viewBox="0 0 {_W} {height}">',
        *legend_parts,
    ]
    for seg in segs:
        out.append(
            f'<rect x="{_f(seg.x0)}" y="{top}" width="{_f(seg.x1 - seg.x0)}" height="{plot_h}" '
            'class="plot"/>'
        )
    for v, label in zip(yticks, ylabels, strict=True):
        ty = _f(sy(v))
        cls = "zero" if abs(v) < 1e-9 * (y1 - y0) and not percent and y0 < 0 else "grid"
        for seg in segs:
            out.append(
                f'<line x1="{_f(seg.x0)}" y1="{ty}" x2="{_f(seg.x1)}" y2="{ty}" class="{cls}"/>'
            )
        out.append(
            f'<text x="{_LEFT - 6}" y="{ty}" dy="4" text-anchor="end" class="tick">'
            f"{escape(label)}</text>"
        )
    for i in range(len(segs)):
        for x, label in _seg_ticks(segs, i, panel.t0, panel.t1):
            out.append(f'<line x1="{_f(x)}" y1="{top}" x2="{_f(x)}" y2="{bottom}" class="grid"/>')
            out.append(
                f'<text x="{_f(x)}" y="{bottom + 25}" text-anchor="middle" class="tick">'
                f"{escape(label)}</text>"
            )
    for prev, nxt in pairwise(segs):
        xm = (prev.x1 + nxt.x0) / 2
        for edge in (top, bottom):
            out.append(
                f'<path d="M{_f(xm - 7)},{edge + 6}L{_f(xm - 1)},{edge - 6}M{_f(xm + 1)},{edge + 6}'
                f'L{_f(xm + 7)},{edge - 6}" class="brk"/>'
            )
        if percent:  # said on the PnL chart (in its badges' room; none here)
            continue
        out.append(
            f'<text x="{_f(nxt.x0 + 2)}" y="{top - 8}" class="tick">compressed'
            f"<title>{escape(fmt_utc(nxt.t0))} to {escape(fmt_utc(nxt.t1))}: "
            f"{escape(_duration(nxt.t1 - nxt.t0))} on a compressed scale</title></text>"
        )
    out.append(
        f'<text x="{_f(_LEFT + (_W - _RIGHT - _LEFT) / 2)}" y="{bottom + 42}" '
        f'text-anchor="middle" class="axis">{escape(_time_axis_title(panel.t0, panel.t1))}</text>'
    )
    out.append(
        f'<text transform="translate(14,{_f(top + plot_h / 2)}) rotate(-90)" '
        f'text-anchor="middle" class="axis">{"allocation" if percent else "PnL"}</text>'
    )

    # marker lines, under the data; each from its badge down through the plot
    for b in badges:
        colour, dash, width = MARKER_STYLES[b.marker.kind]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        yb = top if percent else top - 4 - _ROW_H * (b.row + 0.5)
        out.append(
            f'<line x1="{_f(b.x)}" y1="{_f(yb)}" x2="{_f(b.x)}" y2="{bottom}" stroke="{colour}" '
            f'stroke-width="{width}"{dash_attr}/>'
        )

    for s in series:
        by_seg: list[list[tuple[float, float]]] = [[] for _ in segs]
        for t, v in s.points:
            k = _seg_of(segs, t)
            by_seg[k].append((segs[k].x(t), sy(v)))
        for raw in by_seg:
            pts = _decimate(raw)
            if steps and len(pts) > 1:
                path = [f"M{_f(pts[0][0])},{_f(pts[0][1])}"]
                for i, (x, y) in enumerate(pts[1:], start=1):
                    if y != pts[i - 1][1] or i == len(pts) - 1:
                        path.append(f"H{_f(x)}V{_f(y)}")
                out.append(
                    f'<path d="{"".join(path)}" fill="none" stroke="{s.colour}" '
                    f'stroke-width="2"><title>{escape(s.algo)}</title></path>'
                )
            elif len(pts) > 1:
                coords = " ".join(f"{_f(x)},{_f(y)}" for x, y in pts)
                out.append(
                    f'<polyline points="{coords}" fill="none" stroke="{s.colour}" '
                    f'stroke-width="2" stroke-linejoin="round"><title>{escape(s.algo)}</title>'
                    "</polyline>"
                )
            elif len(pts) == 1:
                x, y = pts[0]
                out.append(
                    f'<circle cx="{_f(x)}" cy="{_f(y)}" r="3.5" fill="{s.colour}">'
                    f"<title>{escape(s.algo)}</title></circle>"
                )

    for b in badges if not percent else []:
        out.append(_badge_svg(b, top - 4 - _ROW_H * (b.row + 0.5)))
    out.append("</svg>")
    return "\n".join(out)


def _duration(ns: int) -> str:
    s = max(0, ns) // NS
    d, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    if d:
        return f"{d} d {h} h" if h else f"{d} d"
    if h:
        return f"{h} h {m} min" if m else f"{h} h"
    if m:
        return f"{m} min {sec} s" if sec else f"{m} min"
    return f"{ns / NS:.3g} s"


def _badge_html(number: int, kind: str) -> str:
    colour = MARKER_STYLES.get(kind, (INFO_COLOUR, "", 1.0))[0]
    shape = MARKER_SHAPES.get(kind, "circle")
    return f'<span class="b {shape}" style="background:{colour}">{number}</span>'


def _short_time(ns: int) -> str:
    d = _dt(ns)
    return str(ns) if d is None else d.strftime("%m-%d %H:%M:%S")


def _key(numbered: Sequence[tuple[int, Marker]]) -> str:
    """The numbered badges of one panel, as a list under it."""
    items = [
        f'<li>{_badge_html(n, m.kind)}<span class="t">{escape(_short_time(m.ts))}</span>'
        f"{escape(m.text)}</li>"
        for n, m in numbered
    ]
    return '<ul class="key">' + "".join(items) + "</ul>" if items else ""


# --- tables -------------------------------------------------------------------------------------


_NUM = ' class="num"'


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, num_from: int = 1, text: int = -1
) -> str:
    """An HTML table of already-escaped cells; columns from ``num_from`` are right-aligned, column
    ``text`` is prose (it wraps anywhere). Scrolls sideways, not the page, when too wide."""

    def cls(i: int) -> str:
        return _NUM if i >= num_from else ' class="text"' if i == text else ""

    head = "".join(f"<th{_NUM if i >= num_from else ''}>{h}</th>" for i, h in enumerate(headers))
    body = "\n".join(
        "<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows
    )
    return (
        f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n'
        "</tbody>\n</table></div>"
    )


def _nodata(what: str) -> str:
    return f'<p class="nodata">no data: {escape(what)}</p>'


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%" if math.isfinite(v) else "n/a"


def _money(v: float) -> str:
    return f"{v:,.2f}" if math.isfinite(v) else "n/a"


def _per_algo(series: dict[str, list[Sample]], pnl: Callable[[Sample], float]) -> str:
    # one row per algorithm and measurement: numbers of two measurements never mix
    measured: dict[str, list[Sample]] = {}
    for algo, samples in series.items():
        for smp in samples:
            key = f"{algo} ({smp.measurement})" if smp.measurement else algo
            measured.setdefault(key, []).append(smp)
    rows = []
    for algo, ss in measured.items():
        first, last = ss[0], ss[-1]
        change = (last.equity / first.equity - 1.0) if first.equity else math.nan
        # the core's exact maximum when known: samples alone miss the peaks between them
        exact = [s.max_drawdown for s in ss if math.isfinite(s.max_drawdown)]
        dds = exact or [s.drawdown for s in ss if math.isfinite(s.drawdown)]
        rows.append(
            [
                escape(algo),
                str(len(ss)),
                _money(first.equity),
                _money(last.equity),
                _pct(change),
                _pct(max(dds)) if dds else "n/a",
                _pct(max(s.allocation for s in ss)),
                _pct(last.allocation),
                _money(pnl(last)),
            ]
        )
    return _table(
        [
            "algorithm",
            "samples",
            "first equity",
            "last equity",
            "change",
            "max drawdown",
            "max allocation",
            "last allocation",
            "last PnL",
        ],
        rows,
    )


def _rollback_table(steps: Sequence[tuple[str, float, float]]) -> str:
    rows = []
    for name, measured, target in steps:
        if not (math.isfinite(measured) and math.isfinite(target)):
            verdict = '<span class="na">n/a</span>'
        elif measured > target:
            verdict = '<span class="over">OVER</span>'
        else:
            verdict = '<span class="ok">OK</span>'
        rows.append([escape(name), _fmt_ms(measured), _fmt_ms(target), verdict])
    return _table(["step", "measured ms", "target ms", "result"], rows)


def _events_table(panels: Sequence[_Panel], numbers: dict[int, int], grouped: bool) -> str:
    """Every marker, by phase when there are phases; a drawn one with its badge's number."""
    rows = []
    for p in panels:
        if grouped:
            rows.append(f'<tr class="grp"><th colspan="4">{p.number}. {escape(p.name)}</th></tr>')
        for m in p.markers:
            colour = MARKER_STYLES.get(m.kind, (INFO_COLOUR, "", 1.0))[0]
            n = numbers.get(id(m))
            rows.append(
                f"<tr><td>{_badge_html(n, m.kind) if n else ''}</td>"
                f"<td{_NUM}>{escape(fmt_utc(m.ts))}</td>"
                f'<td><span class="kind" style="border-color:{colour}">{escape(m.kind)}</span>'
                f'</td><td class="text">{escape(m.text)}</td></tr>'
            )
    head = f"<tr><th>#</th><th{_NUM}>time (UTC)</th><th>kind</th><th>event</th></tr>"
    body = "\n".join(rows)
    return (
        f'<div class="scroll"><table class="events">\n<thead>{head}</thead>\n<tbody>\n{body}\n'
        "</tbody>\n</table></div>"
    )


_FONTS = 'system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif'
_CSS = """
body{font-family:$FONTS;
margin:24px auto;max-width:1000px;padding:0 16px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 4px}
h3{font-size:14px;margin:18px 0 2px}h3 .when{font-weight:400;color:#555;font-size:12px}
.meta,.note{color:#555;margin:0 0 12px}.note{font-size:13px;margin:0 0 6px}
table{border-collapse:collapse;font-size:13px;margin:4px 0}
th,td{border-bottom:1px solid #e3e3e3;padding:4px 12px 4px 0;text-align:left;vertical-align:top}
.scroll{overflow-x:auto;max-width:100%}td.text{overflow-wrap:anywhere;min-width:8em}
th{font-weight:600;border-bottom:2px solid #bbb}
tr.grp th{border-bottom:1px solid #bbb;padding-top:12px}
.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#237a2e;font-weight:600}.over{color:#c0161d;font-weight:700}.na{color:#888}
.kind{border-left:4px solid;padding-left:6px}
.nodata{color:#888;font-style:italic}
ul.key{list-style:none;padding:0;margin:4px 0 8px;font-size:13px;columns:2 340px;column-gap:28px}
ul.key li{margin:0 0 4px;break-inside:avoid;padding-left:30px;text-indent:-30px}
.b{display:inline-block;width:20px;height:20px;line-height:20px;text-align:center;color:#fff;
font-size:11px;font-weight:700;text-indent:0;vertical-align:middle;margin-right:8px}
.b.circle{border-radius:50%}.b.square{border-radius:1px;width:18px;height:18px;line-height:18px}
.b.diamond{clip-path:polygon(50% 0,100% 50%,50% 100%,0 50%);width:22px;height:22px;line-height:22px}
.b.triangle{clip-path:polygon(50% 0,100% 100%,0 100%);width:26px;height:23px;line-height:29px;
font-size:10px}
.t{color:#555;font-variant-numeric:tabular-nums;margin-right:8px}
svg.chart{display:block;width:100%;max-width:$MAXpx;height:auto;font-family:$FONTS}
svg .plot{fill:#fcfcfc;stroke:#ccc}
svg .grid{stroke:#ececec;stroke-width:1}
svg .zero{stroke:#9a9a9a;stroke-width:1}
svg .brk{stroke:#777;stroke-width:1.4;fill:none}
svg .tick{font-size:$TICKDpx;fill:#555}
svg .axis{font-size:12px;fill:#333}
svg .legend{font-size:12px;fill:#222}
svg .bn{font-size:$BADGEpx;font-weight:700;fill:#fff}
svg .mk{font-size:$BADGEpx;font-weight:600;paint-order:stroke;stroke:#fff;stroke-width:3px}
@media (max-width:$NARROWpx){
body{margin:12px auto;padding:0 10px}
svg .tick{font-size:$TICKpx}
svg .axis{display:none}
svg .bz{transform:scale($PHONE)}
svg .lg{transform:scale($LGPHONE)}
}
""".strip()
_CSS = (
    _CSS.replace("$FONTS", _FONTS)
    .replace("$NARROW", str(_NARROW))
    .replace("$TICKD", str(_TICK_FONT))
    .replace("$TICK", str(_TICK_FONT_PHONE))
    .replace("$PHONE", str(_PHONE))
    .replace("$LGPHONE", str(_PHONE_LEGEND))
    .replace("$MAX", str(_MAX_PX))
    .replace("$BADGE", str(_BADGE_FONT))
)


def _pnl_of(by_algo: dict[str, list[Sample]]) -> tuple[Callable[[Sample], float], str]:
    """PnL of a sample (equity minus its capital; where an algorithm's capital is not known,
    its change in equity since its first sample) and the chart's title saying which."""
    known = {a: all(math.isfinite(s.capital) for s in ss) for a, ss in by_algo.items()}
    base = {
        a: next((s.equity for s in ss if math.isfinite(s.equity)), math.nan)
        for a, ss in by_algo.items()
    }

    def pnl(s: Sample) -> float:
        return s.equity - (s.capital if known.get(s.algo) else base.get(s.algo, math.nan))

    if all(known.values()):
        title = "PnL (money): equity minus allocated capital"
    elif not any(known.values()):
        title = "Change in equity since each algorithm's first sample (money)"
    else:
        unknown = ", ".join(a for a, k in known.items() if not k)
        title = (
            "PnL (money): equity minus allocated capital "
            f"({unknown}: change in equity since its first sample)"
        )
    return pnl, title


def render_html(
    samples: Sequence[Sample],
    markers: Sequence[Marker],
    *,
    title: str,
    summary: list[tuple[str, str]],
    rollback_steps: list[tuple[str, float, float]],
) -> str:
    """The whole report as one self-contained HTML document. ``summary`` is (key, value) pairs;
    ``rollback_steps`` is (step, measured ms, target ms). Empty inputs give "no data" notes."""
    ordered = sorted(samples, key=lambda s: s.ts)
    by_algo: dict[str, list[Sample]] = {}
    for s in ordered:
        by_algo.setdefault(s.algo, []).append(s)
    colour = {a: ALGO_COLOURS[i % len(ALGO_COLOURS)] for i, a in enumerate(by_algo)}
    marks = sorted(markers, key=lambda m: m.ts)  # stable: ties keep the caller's order
    pnl, pnl_title = _pnl_of(by_algo)
    panels = _panels(ordered, marks)
    grouped = any(m.kind == PHASE for m in marks)
    drawn = [m for p in panels for m in p.markers if m.kind in MARKER_STYLES]
    numbers = {id(m): i for i, m in enumerate(drawn, start=1)}
    kinds = list(dict.fromkeys(m.kind for m in drawn))
    legend = [(a, c, "", 2.0, "") for a, c in colour.items()] + [
        (k, *MARKER_STYLES[k], MARKER_SHAPES.get(k, "circle")) for k in kinds
    ]

    def series_of(p: _Panel, value: Callable[[Sample], float]) -> list[_Series]:
        pts: dict[str, list[tuple[int, float]]] = {}
        for s in p.samples:
            v = value(s)
            if math.isfinite(v):
                pts.setdefault(s.algo, []).append((s.ts, v))
        return [_Series(a, colour[a], pts[a]) for a in by_algo if a in pts]

    pnl_parts: list[str] = []
    alloc_parts: list[str] = []
    first = {"pnl": True, "alloc": True}
    for p in panels:
        numbered = [(numbers[id(m)], m) for m in p.markers if id(m) in numbers]
        segs = _segments(p.t0, p.t1, [m.ts for _, m in numbered])
        badges = _badges(numbered, segs)
        heading = ""
        if grouped:
            heading = (
                f'<h3>{p.number}. {escape(p.name)} <span class="when">'
                f"{escape(_short_time(p.t0))} to {escape(_short_time(p.t1))} UTC, "
                f"{escape(_duration(p.t1 - p.t0))}</span></h3>"
            )
        what = f"phase {p.number}, {p.name}" if grouped else "all of the run"
        for key, parts, value, percent in (
            ("pnl", pnl_parts, pnl, False),
            ("alloc", alloc_parts, lambda s: 100.0 * s.allocation, True),
        ):
            ss = series_of(p, value)
            note = ""
            if not percent:  # a flat, unallocated line says nothing and squashes the others
                idle = [
                    s.algo
                    for s in ss
                    if max(v for _, v in s.points) - min(v for _, v in s.points) < 1e-9
                    and all(x.allocation == 0 for x in p.samples if x.algo == s.algo)
                ]
                if idle and len(idle) < len(ss):
                    ss = [s for s in ss if s.algo not in idle]
                    note = (
                        f'<p class="note">not drawn: {escape(", ".join(idle))} '
                        "(flat, no allocation: not trading in this phase)</p>"
                    )
            if not ss and not numbered:
                body = '<p class="note">no samples in this phase</p>'
            else:
                body = _panel_svg(
                    p,
                    segs,
                    ss,
                    badges,
                    percent=percent,
                    steps=percent,
                    legend=legend if first[key] else [],
                    aria=("Allocation" if percent else pnl_title) + f", {what}",
                )
                first[key] = False
            parts.append(heading + note + body + ("" if percent else _key(numbered)))

    summary_html = (
        _table(["item", "value"], [[escape(k), escape(v)] for k, v in summary], num_from=2, text=1)
        if summary
        else _nodata("empty summary")
    )
    span = ""
    if ordered:
        t0 = min([ordered[0].ts, *(m.ts for m in drawn)])
        t1 = max([ordered[-1].ts, *(m.ts for m in drawn)])
        span = f"{fmt_utc(t0)} to {fmt_utc(t1)} UTC"
    elif marks:
        span = f"{fmt_utc(marks[0].ts)} to {fmt_utc(marks[-1].ts)} UTC"
    how = (
        "One panel per phase, each with its own time axis and scale; numbered badges are the "
        "events, listed under each panel."
        if grouped
        else "Numbered badges are the events, listed under the chart."
    )
    has_samples = bool(ordered)
    listed = [m for m in marks if m.kind != PHASE]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>\n{_CSS}\n</style>",
        "</head>",
        "<body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">{escape(span or "no samples")}; all times are event time in UTC.</p>',
        "<h2>Summary</h2>",
        summary_html,
        f"<h2>{escape(pnl_title)}</h2>",
        f'<p class="note">{escape(how)}</p>' if has_samples else "",
        "\n".join(pnl_parts) if has_samples else _nodata("no samples to chart"),
        "<h2>Allocation</h2>",
        "\n".join(alloc_parts) if has_samples else _nodata("no samples to chart"),
        "<h2>Events</h2>",
        _events_table(panels, numbers, grouped) if listed and panels else "",
        _events_table_plain(listed) if listed and not panels else "",
        "" if listed else _nodata("no events"),
        "<h2>Rollback steps</h2>",
        _rollback_table(rollback_steps) if rollback_steps else _nodata("no rollback steps"),
        "<h2>Algorithms</h2>",
        _per_algo(by_algo, pnl) if by_algo else _nodata("no samples"),
        "</body>",
        "</html>",
    ]
    return "\n".join(x for x in parts if x) + "\n"


def _events_table_plain(markers: Sequence[Marker]) -> str:
    return _events_table([_Panel(0, "", 0, 0, [], list(markers))], {}, False)


def write_report(path: str | os.PathLike[str], html: str) -> Path:
    """Write the report (UTF-8), creating the parent directory; returns the path written."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(html, encoding="utf-8")
    return p
