"""The HTML report written at the end of ``rampart demo``.

One self-contained file: inline CSS and inline SVG charts drawn here (no JavaScript, no external
URLs, no fonts to fetch), so it opens offline and can be attached to a ticket as is. Pure: it
turns samples, markers and tables into a string; :func:`write_report` is the only I/O.

Charts: equity over event time (one line per algorithm) and allocation over event time (step
lines), both with vertical markers for stage changes, cutovers, breaches, rollbacks, promotions and
approvals. Times are UTC.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path

import msgspec

NS = 1_000_000_000


class Sample(msgspec.Struct, frozen=True):
    """One algorithm's state at an event time (ns). Allocation and drawdown are fractions;
    ``max_drawdown`` is the core's own (exact, over every event), NaN when unknown."""

    ts: int
    algo: str
    equity: float
    allocation: float
    drawdown: float
    max_drawdown: float = math.nan


class Marker(msgspec.Struct, frozen=True):
    """Something that happened at an event time (ns): ``kind`` is one of ``stage``, ``cutover``,
    ``breach``, ``rollback``, ``promotion``, ``approval``, ``info``."""

    ts: int
    kind: str
    text: str


# kind -> (colour, stroke-dasharray ("" for solid), stroke width). "info" and unknown kinds are
# listed in the events table but not drawn.
MARKER_STYLES: dict[str, tuple[str, str, float]] = {
    "stage": ("#2b8cbe", "5 3", 1.2),
    "cutover": ("#8856a7", "8 3", 1.6),
    "breach": ("#e6550d", "2 2", 1.6),
    "rollback": ("#cb181d", "", 2.2),
    "promotion": ("#31a354", "5 3", 1.2),
    "approval": ("#b8860b", "1 3", 1.6),
}
# which marker's label comes first when markers are too close to label apart
_PRIORITY = ("rollback", "breach", "cutover", "promotion", "approval", "stage")
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

# chart geometry (px)
_W = 960
_PLOT_H = 240
_LEFT = 78
_RIGHT = 18
_BOTTOM = 46
_LEGEND_ROW = 18
_FONT = 12
_CHAR_W = 7.0  # rough advance of a 12px sans-serif character, for legend layout
_LABEL_CHAR_W = 6.0  # same at the 10px marker labels
_LABEL_GAP = 13.0  # a marker closer than this to the previous label gets no label of its own


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


def _value_ticks(lo: float, hi: float) -> tuple[float, float, list[float], int]:
    """Nice bounds covering [lo, hi], the ticks between them and the decimals to label them."""
    if hi - lo <= 1e-12 * max(1.0, abs(hi), abs(lo)):
        pad = max(abs(hi) * 0.01, 1.0)
        lo, hi = lo - pad, hi + pad
    step = _nice_step(hi - lo)
    start = math.floor(lo / step + 1e-9) * step
    stop = math.ceil(hi / step - 1e-9) * step
    n = round((stop - start) / step)
    ticks = [start + i * step for i in range(n + 1)]
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step < 1 else 0
    return start, stop, ticks, decimals


def _f(x: float) -> str:
    return f"{x:.1f}"


def _fmt_ms(v: float) -> str:
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.3f}".rstrip("0").rstrip(".")


# --- chart --------------------------------------------------------------------------------------


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


def _legend(items: list[tuple[str, str, str, float]]) -> tuple[list[str], int]:
    """Legend entries (label, colour, dasharray, width) laid out in rows across the top."""
    parts: list[str] = []
    x, row = float(_LEFT), 0
    for label, colour, dash, width in items:
        item_w = 28 + _CHAR_W * len(label) + 18
        if x + item_w > _W - _RIGHT and x > _LEFT:
            x, row = float(_LEFT), row + 1
        y = 14 + row * _LEGEND_ROW
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(
            f'<line x1="{_f(x)}" y1="{y - 4}" x2="{_f(x + 22)}" y2="{y - 4}" '
            f'stroke="{colour}" stroke-width="{width}"{dash_attr}/>'
            f'<text x="{_f(x + 28)}" y="{y}" class="legend">{escape(label)}</text>'
        )
        x += item_w
    return parts, row + 1


def _chart(
    series: list[_Series],
    markers: list[Marker],
    *,
    t0: int,
    t1: int,
    y_title: str,
    y_percent: bool,
    steps: bool,
    aria: str,
) -> str:
    values = [v for s in series for _, v in s.points]
    lo, hi = min(values), max(values)
    if y_percent:
        lo, hi = min(0.0, lo), max(hi, 0.0)
    y0, y1, yticks, decimals = _value_ticks(lo, hi)

    kinds = list(dict.fromkeys(m.kind for m in markers))
    legend_items = [(s.algo, s.colour, "", 2.0) for s in series] + [
        (k, *MARKER_STYLES[k]) for k in kinds
    ]
    legend, legend_rows = _legend(legend_items)
    top = 12 + legend_rows * _LEGEND_ROW
    height = top + _PLOT_H + _BOTTOM
    bottom = top + _PLOT_H
    right = _W - _RIGHT
    plot_w = right - _LEFT

    def sx(t: int) -> float:
        return _LEFT + (t - t0) / (t1 - t0) * plot_w

    def sy(v: float) -> float:
        return bottom - (v - y0) / (y1 - y0) * _PLOT_H

    def ylabel(v: float) -> str:
        if abs(v) < 1e-9 * (y1 - y0):
            v = 0.0  # not "-0"
        return f"{v:,.{decimals}f}" + ("%" if y_percent else "")

    out = [
        f'<svg class="chart" role="img" aria-label="{escape(aria)}" width="{_W}" '
        f'height="{height}" viewBox="0 0 {_W} {height}">',
        *legend,
        f'<rect x="{_LEFT}" y="{top}" width="{plot_w}" height="{_PLOT_H}" class="plot"/>',
    ]
    for v in yticks:
        ty = _f(sy(v))
        out.append(f'<line x1="{_LEFT}" y1="{ty}" x2="{right}" y2="{ty}" class="grid"/>')
        out.append(
            f'<text x="{_LEFT - 6}" y="{ty}" dy="4" text-anchor="end" class="tick">'
            f"{escape(ylabel(v))}</text>"
        )
    xticks, xstep = _time_ticks(t0, t1)
    for t, tick_label in zip(xticks, _time_labels(xticks, xstep, t0, t1), strict=True):
        tx = _f(sx(t))
        out.append(f'<line x1="{tx}" y1="{top}" x2="{tx}" y2="{bottom}" class="grid"/>')
        out.append(
            f'<text x="{tx}" y="{bottom + 16}" text-anchor="middle" class="tick">'
            f"{escape(tick_label)}</text>"
        )
    out.append(
        f'<text x="{_f(_LEFT + plot_w / 2)}" y="{height - 8}" text-anchor="middle" '
        f'class="axis">{escape(_time_axis_title(t0, t1))}</text>'
    )
    out.append(
        f'<text transform="translate(16,{_f(top + _PLOT_H / 2)}) rotate(-90)" '
        f'text-anchor="middle" class="axis">{escape(y_title)}</text>'
    )

    # Markers under the data lines. Markers closer than _LABEL_GAP share one label (the most
    # important kind first, in its colour); every marker keeps its line and its tooltip.
    max_chars = int((_PLOT_H - 8) / _LABEL_CHAR_W)
    clusters: list[list[tuple[float, Marker]]] = []
    for m in markers:
        x = sx(m.ts)
        if clusters and x - clusters[-1][0][0] < _LABEL_GAP:
            clusters[-1].append((x, m))
        else:
            clusters.append([(x, m)])
    for cluster in clusters:
        for x, m in cluster:
            colour, dash, width = MARKER_STYLES[m.kind]
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(
                f'<line x1="{_f(x)}" y1="{top}" x2="{_f(x)}" y2="{bottom}" stroke="{colour}" '
                f'stroke-width="{width}"{dash_attr}><title>{escape(fmt_utc(m.ts))} '
                f"{escape(m.kind)}: {escape(m.text)}</title></line>"
            )
        ranked = sorted(cluster, key=lambda xm: _PRIORITY.index(xm[1].kind))
        full = "; ".join(f"{m.kind}: {m.text}" for _, m in ranked)
        label = full if len(full) <= max_chars else full[: max_chars - 1] + "\u2026"
        x = cluster[0][0]
        out.append(
            f'<text transform="translate({_f(x + 11)},{top + 4}) rotate(-90)" '
            f'text-anchor="end" fill="{MARKER_STYLES[ranked[0][1].kind][0]}" class="mlabel">'
            f"<title>{escape(full)}</title>{escape(label)}</text>"
        )

    for s in series:
        pts = _decimate([(sx(t), sy(v)) for t, v in s.points])
        if steps:
            path = [f"M{_f(pts[0][0])},{_f(pts[0][1])}"]
            for i, (x, y) in enumerate(pts[1:], start=1):
                if y != pts[i - 1][1] or i == len(pts) - 1:
                    path.append(f"H{_f(x)}V{_f(y)}")
            out.append(
                f'<path d="{"".join(path)}" fill="none" stroke="{s.colour}" stroke-width="2">'
                f"<title>{escape(s.algo)}</title></path>"
            )
        elif len(pts) > 1:
            coords = " ".join(f"{_f(x)},{_f(y)}" for x, y in pts)
            out.append(
                f'<polyline points="{coords}" fill="none" stroke="{s.colour}" '
                f'stroke-width="2" stroke-linejoin="round"><title>{escape(s.algo)}</title>'
                "</polyline>"
            )
        if len(pts) == 1:
            x, y = pts[0]
            out.append(
                f'<circle cx="{_f(x)}" cy="{_f(y)}" r="3.5" fill="{s.colour}">'
                f"<title>{escape(s.algo)}</title></circle>"
            )
    out.append("</svg>")
    return "\n".join(out)


# --- tables -------------------------------------------------------------------------------------


_NUM = ' class="num"'


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, num_from: int = 1) -> str:
    """An HTML table of already-escaped cells; columns from ``num_from`` are right-aligned."""
    head = "".join(f"<th{_NUM if i >= num_from else ''}>{h}</th>" for i, h in enumerate(headers))
    body = "\n".join(
        "<tr>"
        + "".join(f"<td{_NUM if i >= num_from else ''}>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _nodata(what: str) -> str:
    return f'<p class="nodata">no data: {escape(what)}</p>'


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%" if math.isfinite(v) else "n/a"


def _money(v: float) -> str:
    return f"{v:,.2f}" if math.isfinite(v) else "n/a"


def _per_algo(series: dict[str, list[Sample]]) -> str:
    rows = []
    for algo, ss in series.items():
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


def _events_table(markers: Sequence[Marker]) -> str:
    rows = []
    for m in markers:
        colour = MARKER_STYLES.get(m.kind, (INFO_COLOUR, "", 1.0))[0]
        rows.append(
            [
                escape(fmt_utc(m.ts)),
                f'<span class="kind" style="border-color:{colour}">{escape(m.kind)}</span>',
                escape(m.text),
            ]
        )
    return _table(["time (UTC)", "kind", "event"], rows, num_from=3)


_FONTS = 'system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif'
_CSS = """
body{font-family:$FONTS;
margin:24px auto;max-width:1000px;padding:0 16px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
.meta{color:#555;margin:0 0 12px}
table{border-collapse:collapse;font-size:13px;margin:4px 0}
th,td{border-bottom:1px solid #e3e3e3;padding:4px 12px 4px 0;text-align:left;vertical-align:top}
th{font-weight:600;border-bottom:2px solid #bbb}
.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#237a2e;font-weight:600}.over{color:#c0161d;font-weight:700}.na{color:#888}
.kind{border-left:4px solid;padding-left:6px}
.nodata{color:#888;font-style:italic}
svg.chart{display:block;max-width:100%;height:auto;font-family:$FONTS}
svg .plot{fill:#fcfcfc;stroke:#ccc}
svg .grid{stroke:#ececec;stroke-width:1}
svg .tick{font-size:11px;fill:#555}
svg .axis{font-size:12px;fill:#333}
svg .legend{font-size:12px;fill:#222}
svg .mlabel{font-size:10px;paint-order:stroke;stroke:#fff;stroke-width:3px}
""".strip().replace("$FONTS", _FONTS)


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
    marks = sorted(markers, key=lambda m: m.ts)
    drawn = [m for m in marks if m.kind in MARKER_STYLES]

    def series_of(value: Callable[[Sample], float]) -> list[_Series]:
        out = []
        for i, (algo, ss) in enumerate(by_algo.items()):
            pts = [(s.ts, value(s)) for s in ss if math.isfinite(value(s))]
            if pts:
                out.append(_Series(algo, ALGO_COLOURS[i % len(ALGO_COLOURS)], pts))
        return out

    equity = series_of(lambda s: s.equity)
    alloc = series_of(lambda s: 100.0 * s.allocation)
    times = [t for s in equity + alloc for t, _ in s.points]
    span = ""
    t0 = t1 = 0
    if times:
        t0 = min([*times, *(m.ts for m in drawn)])
        t1 = max([*times, *(m.ts for m in drawn)])
        span = f"{fmt_utc(t0)} to {fmt_utc(t1)} UTC"
        if t1 == t0:
            t0, t1 = t0 - NS, t1 + NS
    elif marks:
        span = f"{fmt_utc(marks[0].ts)} to {fmt_utc(marks[-1].ts)} UTC"

    def chart(ss: list[_Series], y_title: str, percent: bool, steps: bool, aria: str) -> str:
        if not ss:
            return _nodata("no samples to chart")
        return _chart(
            ss, drawn, t0=t0, t1=t1, y_title=y_title, y_percent=percent, steps=steps, aria=aria
        )

    summary_html = (
        _table(["item", "value"], [[escape(k), escape(v)] for k, v in summary], num_from=2)
        if summary
        else _nodata("empty summary")
    )
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
        "<h2>Equity</h2>",
        chart(equity, "equity", False, False, "Equity over time"),
        "<h2>Allocation</h2>",
        chart(alloc, "allocation", True, True, "Allocation over time"),
        "<h2>Rollback steps</h2>",
        _rollback_table(rollback_steps) if rollback_steps else _nodata("no rollback steps"),
        "<h2>Algorithms</h2>",
        _per_algo(by_algo) if by_algo else _nodata("no samples"),
        "<h2>Events</h2>",
        _events_table(marks) if marks else _nodata("no events"),
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


def write_report(path: str | os.PathLike[str], html: str) -> Path:
    """Write the report (UTF-8), creating the parent directory; returns the path written."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(html, encoding="utf-8")
    return p
