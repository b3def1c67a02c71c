"""The live terminal view of ``rampart demo`` and ``rampart status --watch``.

Pure presentation: :func:`render` turns rows and event lines into a Rich renderable laid out for
an 80x24 terminal (a header, one table row per algorithm, the latest events); :class:`LiveView`
redraws it in place on a terminal and degrades to one plain line per event when stdout is not
one (a pipe, a file, CI logs). Nothing here talks to NATS or reads a clock: the caller passes the
event-time clock as a string.
"""

from __future__ import annotations

import io
import math
import os
import threading
from collections import deque
from collections.abc import Sequence
from types import TracebackType

import msgspec
from rich import box
from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

WIDTH = 80
HEIGHT = 24
DASH = "-"
HALTED = "HALTED"

_STRATEGY_ABBREV = {
    "papertrading": "paper",
    "paper": "paper",
    "canary": "canary",
    "bluegreen": "b/g",
    "progressive": "prog",
}

# (keyword in the event line, style), first match wins.
_EVENT_STYLES = (
    ("ROLLBACK", "bold red"),
    ("BREACH", "red"),
    ("HALT", "red"),
    ("REJECT", "yellow"),
    ("CUTOVER", "magenta"),
    ("PROMOT", "green"),
    ("APPROV", "green"),
    ("STAGE", "cyan"),
)


class ViewRow(msgspec.Struct, frozen=True, kw_only=True):
    """One algorithm as the live view shows it. Fractions are fractions (0.05 is 5%)."""

    deployment: str | None
    strategy: str | None
    phase: str | None
    stage: str | None  # e.g. "Small 2/6"
    algo: str
    allocation: float | None
    equity: float
    drawdown: float
    sharpe: float | None
    win_rate: float | None
    error_rate: float | None
    latency_p99_ms: float | None
    halted: bool
    # the Sharpe ratio's standard error (``sharpe_standard_error``), when the caller knows it
    sharpe_se: float | None = None


# --- number formatting (shared by the table and the plain lines) ------------------------------


def _pct(v: float | None) -> str:
    """A fraction as a percentage: one decimal below 10%, none above ("0.5", "25", "100")."""
    if v is None:
        return DASH
    p = 100.0 * v
    return f"{p:.1f}" if abs(p) < 10 else f"{p:.0f}"


def _alloc(v: float | None) -> str:
    return DASH if v is None else f"{100.0 * v:.1f}"


def _money(v: float) -> str:
    if not math.isfinite(v):
        return str(v)  # "inf", "-inf", "nan": shown as they are
    a = abs(v)
    if a < 1e4:
        return f"{v:,.2f}"
    if a < 1e7:
        return f"{v:,.0f}"
    return f"{v / 1e6:,.1f}M"


def _sharpe(v: float | None, se: float | None = None) -> str:
    if v is None:
        return DASH
    text = f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
    return text if se is None else f"{text} ±{se:.1f}"


def _ms(v: float | None) -> str:
    if v is None:
        return DASH
    a = abs(v)
    if a < 10:
        return f"{v:.2f}"
    if a < 1000:
        return f"{v:.1f}"
    return f"{v:,.0f}"


def _unit(s: str, unit: str) -> str:
    return s if s == DASH else s + unit


def _strategy(s: str | None) -> str | None:
    if s is None:
        return None
    key = s.lower().replace("_", "").replace("-", "").replace("/", "").replace(" ", "")
    return _STRATEGY_ABBREV.get(key, s)


def _deploy_cell(row: ViewRow, *, with_name: bool) -> str:
    if row.halted:
        return HALTED
    strat = _strategy(row.strategy)
    if with_name and row.deployment and strat:
        return f"{row.deployment}:{strat}"
    return strat or row.deployment or DASH


def _stage_cell(row: ViewRow) -> str:
    return row.stage or row.phase or DASH


# --- the table ----------------------------------------------------------------------------------

_TEXT_HEADERS = ("Algo", "Deploy", "Stage")
_NUM_HEADERS = ("Alloc%", "Equity", "DD%", "Sharpe", "Win%", "Rej%", "p99ms")
_MIN_TEXT = (8, 4, 5)  # a text column is never cut below this (nor below its header)
_ALGO_SOFT_FLOOR = 16  # algorithm ids are cut to this before any numeric column is dropped
# numeric columns dropped, in this order, when even the cut text columns do not fit
_DROP_ORDER = tuple(_NUM_HEADERS.index(h) for h in ("Win%", "Sharpe", "DD%", "p99ms", "Equity"))


def _num_cells(row: ViewRow) -> tuple[str, ...]:
    return (
        _alloc(row.allocation),
        _money(row.equity),
        _pct(row.drawdown),
        _sharpe(row.sharpe, row.sharpe_se),
        _pct(row.win_rate),
        _pct(row.error_rate),
        _ms(row.latency_p99_ms),
    )


def _widths(cells: Sequence[tuple[str, ...]], headers: Sequence[str]) -> list[int]:
    return [max([cell_len(h)] + [cell_len(c[i]) for c in cells]) for i, h in enumerate(headers)]


class _Layout(msgspec.Struct, frozen=True):
    headers: tuple[str, ...]
    widths: list[int]
    cells: list[tuple[str, ...]]


def _middle(s: str, width: int) -> str:
    """Cut ``s`` to ``width`` keeping both ends ("momentum-…v2.2.0"): an algorithm id's version
    is at its end."""
    if len(s) <= width:
        return s
    tail = (width - 1) // 2
    head = width - 1 - tail
    return s[:head] + "\u2026" + (s[-tail:] if tail else "")


def _layout(rows: Sequence[ViewRow], width: int) -> _Layout:
    """The columns, cells and widths that fit ``width``. Abbreviations, in order until it fits:
    the deployment names go; the widest text column is cut, one character at a time, down to a
    floor (16 for algorithm ids, cut in the middle; Deploy and Stage end with an ellipsis);
    numeric columns go, least useful first; algorithm ids are cut further. Numbers are never
    cut; below all that, Rich crops."""
    all_nums = [_num_cells(r) for r in rows]
    floors = [max(m, cell_len(h)) for m, h in zip(_MIN_TEXT, _TEXT_HEADERS, strict=True)]
    named = [(r.algo, _deploy_cell(r, with_name=True), _stage_cell(r)) for r in rows]
    bare = [(r.algo, _deploy_cell(r, with_name=False), _stage_cell(r)) for r in rows]

    def attempt(drops: int, algo_floor: int) -> _Layout | None:
        keep = [k for k in range(len(_NUM_HEADERS)) if k not in _DROP_ORDER[:drops]]
        headers = tuple(_NUM_HEADERS[k] for k in keep)
        nums = [tuple(n[k] for k in keep) for n in all_nums]
        num_w = _widths(nums, headers)
        budget = width - sum(num_w) - (len(_TEXT_HEADERS) + len(keep) - 1)  # 1-space gaps
        texts = named
        text_w = _widths(texts, _TEXT_HEADERS)
        if sum(text_w) > budget:
            texts = bare
            text_w = _widths(texts, _TEXT_HEADERS)
        lows = [max(algo_floor, floors[0]), floors[1], floors[2]]
        while sum(text_w) > budget:
            cuttable = [i for i in range(3) if text_w[i] > lows[i]]
            if not cuttable:
                return None
            widest = max(cuttable, key=lambda i: text_w[i])
            text_w[widest] -= 1
        return _Layout(
            headers=_TEXT_HEADERS + headers,
            widths=text_w + num_w,
            cells=[
                (_middle(t[0], text_w[0]), *t[1:], *n) for t, n in zip(texts, nums, strict=True)
            ],
        )

    for drops in range(len(_DROP_ORDER) + 1):
        layout = attempt(drops, _ALGO_SOFT_FLOOR)
        if layout is not None:
            return layout
    return attempt(len(_DROP_ORDER), 0) or _Layout(
        headers=_TEXT_HEADERS,
        widths=floors,
        cells=[(_middle(t[0], floors[0]), *t[1:]) for t in bare],
    )


def _table(rows: Sequence[ViewRow], width: int) -> RenderableType:
    if not rows:
        return Text("(no algorithms yet)", style="dim")
    layout = _layout(rows, width)
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 0),
        pad_edge=False,
        header_style="bold",
        expand=False,
    )
    for i, header in enumerate(layout.headers):
        table.add_column(
            header,
            justify="left" if i < len(_TEXT_HEADERS) else "right",
            width=layout.widths[i],
            no_wrap=True,
            overflow="ellipsis",
        )
    for row, cell in zip(rows, layout.cells, strict=True):
        table.add_row(*cell, style="bold red" if row.halted else None)
    return table


def _event_text(line: str, width: int) -> Text:
    style = next((s for key, s in _EVENT_STYLES if key in line), "")
    text = Text(line, style=style, no_wrap=True, overflow="ellipsis")
    text.truncate(width, overflow="ellipsis")
    return text


def render(
    rows: Sequence[ViewRow],
    events: Sequence[str],
    *,
    title: str,
    clock: str,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> RenderableType:
    """The whole view for a ``width`` x ``height`` terminal: a header line (``title`` and the
    event-time ``clock``), the algorithm table (halted rows in red, marked HALTED) and a panel
    with as many of the latest ``events`` as fit (newest last)."""
    header = Table.grid(expand=True)
    header.add_column(justify="left", no_wrap=True, overflow="ellipsis", ratio=1)
    header.add_column(justify="right", no_wrap=True)
    header.add_row(Text(title, style="bold"), Text(clock, style="cyan"))

    table = _table(rows, width)
    table_lines = 1 if not rows else 2 + len(rows)
    room = max(1, height - 1 - table_lines - 2)  # header line, table, the panel's two borders
    latest = list(events[-room:]) if events else []
    inner = max(1, width - 4)  # the panel's borders and padding
    body: RenderableType = (
        Group(*(_event_text(e, inner) for e in latest))
        if latest
        else Text("(no events yet)", style="dim")
    )
    panel = Panel(
        body,
        title="events",
        title_align="left",
        box=box.ROUNDED,
        border_style="dim",
        padding=(0, 1),
    )
    return Group(header, table, panel)


# --- the degraded, plain form ------------------------------------------------------------------


def plain_line(event: str, clock: str) -> str:
    """One event as one plain line: ``<clock> <event>``."""
    return f"{clock} {event}"


def plain_rows(rows: Sequence[ViewRow]) -> list[str]:
    """One compact summary line per algorithm (no styling, no alignment)."""
    out = []
    for r in rows:
        where = " ".join(x for x in (r.deployment, r.strategy, r.stage or r.phase) if x) or DASH
        flag = f" {HALTED}" if r.halted else ""
        out.append(
            f"{r.algo} [{where}]{flag} alloc {_unit(_alloc(r.allocation), '%')} "
            f"equity {_money(r.equity)} dd {_unit(_pct(r.drawdown), '%')} "
            f"sharpe {_sharpe(r.sharpe, r.sharpe_se)} win {_unit(_pct(r.win_rate), '%')} "
            f"rej {_unit(_pct(r.error_rate), '%')} p99 {_unit(_ms(r.latency_p99_ms), 'ms')}"
        )
    return out


# --- live -------------------------------------------------------------------------------------


class LiveView:
    """The view redrawn in place (``rich.live.Live``) when the console is a terminal; otherwise
    each :meth:`event` is printed as a plain line and :meth:`stop` prints the final rows.

    Two ways to feed it: pass the whole event list to :meth:`update` each time, or pass rows to
    :meth:`update` (with an empty event list) and single events to :meth:`event`; the view keeps
    the last ``max_events`` of those. Updates only record state: Rich's refresh thread renders
    at most ``refresh_per_second`` frames, however fast events come.
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        title: str = "rampart",
        refresh_per_second: float = 8.0,
        max_events: int = 200,
    ) -> None:
        self.console = console if console is not None else Console()
        self.title = title
        self._live: Live | None = None
        self._rows: list[ViewRow] = []
        self._events: deque[str] = deque(maxlen=max_events)
        self._clock = ""
        self._refresh_per_second = refresh_per_second
        self._started = False
        self._lock = threading.Lock()  # the refresh thread reads what update/event write

    @property
    def is_live(self) -> bool:
        """Whether the view redraws in place (the console is a terminal)."""
        return self.console.is_terminal

    def __enter__(self) -> LiveView:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _renderable(self) -> RenderableType:
        with self._lock:
            rows, events, clock = self._rows, list(self._events), self._clock
        return render(
            rows,
            events,
            title=self.title,
            clock=clock,
            width=self.console.width,
            height=min(self.console.height, HEIGHT),
        )

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.is_live:
            self._live = Live(
                console=self.console,
                refresh_per_second=self._refresh_per_second,
                transient=False,
                get_renderable=self._renderable,
            )
            self._live.start()

    def update(self, rows: Sequence[ViewRow], events: Sequence[str], clock: str) -> None:
        """New rows and clock; a non-empty ``events`` replaces the kept events. Plain mode prints
        nothing here (rows are printed by :meth:`stop`)."""
        with self._lock:
            self._rows = list(rows)
            self._clock = clock
            if events:
                self._events.clear()
                self._events.extend(events)

    def event(self, text: str, clock: str) -> None:
        """One event: printed at once in plain mode, added to the panel on a terminal."""
        line = plain_line(text, clock)
        with self._lock:
            self._events.append(line)
            self._clock = clock
        if self._live is None:
            self.console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        if self._live is not None:
            self._live.stop()  # draws the final frame
            self._live = None
        else:
            for line in plain_rows(self._rows):
                self.console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)


def export_svg(
    rows: Sequence[ViewRow],
    events: Sequence[str],
    *,
    title: str,
    clock: str,
    path: str | os.PathLike[str],
) -> str:
    """Render the view once into a recording 80x24 console and save it as an SVG screenshot at
    ``path``. Returns the same frame as plain text (trailing spaces stripped)."""
    console = Console(
        record=True,
        width=WIDTH,
        height=HEIGHT,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
        legacy_windows=False,
    )
    console.print(render(rows, events, title=title, clock=clock))
    text = console.export_text(clear=False)
    console.save_svg(os.fspath(path), title=title)
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"
