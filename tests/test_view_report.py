"""The live terminal view (rampart.view) and the HTML report (rampart.report).

Run as a script to regenerate the docs screenshot:
``.venv/bin/python tests/test_view_report.py`` writes docs/screenshots/live-view.{svg,txt}.
"""

from __future__ import annotations

import io
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console

from rampart.report import Marker, Sample, fmt_utc, render_html, write_report
from rampart.view import (
    LiveView,
    ViewRow,
    export_svg,
    plain_line,
    plain_rows,
    render,
)

ANSI = re.compile(r"\x1b\[")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


def row(algo: str, **kw: object) -> ViewRow:
    base: dict[str, object] = {
        "deployment": "momentum-canary",
        "strategy": "Canary",
        "phase": "ramping",
        "stage": "Small 2/6",
        "algo": algo,
        "allocation": 0.05,
        "equity": 100_245.12,
        "drawdown": 0.012,
        "sharpe": 1.84,
        "win_rate": 0.55,
        "error_rate": 0.002,
        "latency_p99_ms": 0.84,
        "halted": False,
    }
    base.update(kw)
    return ViewRow(**base)  # type: ignore[arg-type]


def demo_rows() -> list[ViewRow]:
    """The docs screenshot: a finished canary, a blue/green halted by a breach, a paper run."""
    return [
        row(
            "momentum-v2.1.0",
            phase="complete",
            stage="Full 6/6",
            allocation=1.0,
            equity=101_284.37,
            drawdown=0.004,
            sharpe=2.31,
            win_rate=0.56,
            error_rate=0.002,
            latency_p99_ms=0.91,
        ),
        row(
            "momentum-v2.2.0",
            deployment="momentum-bg",
            strategy="BlueGreen",
            phase="monitoring",
            stage=None,
            allocation=0.0,
            equity=99_412.08,
            drawdown=0.021,
            sharpe=-1.12,
            win_rate=0.38,
            error_rate=0.25,
            latency_p99_ms=3.42,
            halted=True,
        ),
        row(
            "meanrev-v1.4.0",
            deployment="meanrev-paper",
            strategy="PaperTrading",
            phase="trading",
            stage=None,
            allocation=None,
            equity=50_112.40,
            drawdown=0.008,
            sharpe=None,
            win_rate=None,
            error_rate=0.0,
            latency_p99_ms=None,
        ),
    ]


def demo_events() -> list[str]:
    return [
        "09:30:00.000 DEPLOY momentum-canary Canary momentum-v2.1.0",
        "09:30:00.000 STAGE momentum-v2.1.0 Micro 1/6 allocation 1%",
        "10:30:00.000 STAGE momentum-v2.1.0 Small 2/6 allocation 5%",
        "12:30:00.000 STAGE momentum-v2.1.0 Medium 3/6 allocation 10%",
        "16:30:00.000 STAGE momentum-v2.1.0 Large 4/6 allocation 25%",
        "00:30:00.000 STAGE momentum-v2.1.0 Half 5/6 allocation 50%",
        "00:30:00.000 STAGE momentum-v2.1.0 Full 6/6 allocation 100%",
        "00:30:00.000 PROMOTION momentum-v2.1.0 canary complete",
        "00:31:10.000 DEPLOY momentum-bg BlueGreen green momentum-v2.2.0",
        "00:41:10.000 CUTOVER momentum-bg blue momentum-v2.1.0 -> green momentum-v2.2.0",
        "00:43:52.125 BREACH momentum-v2.2.0 error_rate 0.25 > 0.01",
        "00:43:52.125 ROLLBACK halt 0.84 ms (target 100 ms)",
        "00:43:52.127 ROLLBACK cancel 2.31 ms (target 500 ms)",
        "00:43:52.127 ROLLBACK total 3.15 ms (target 1000 ms)",
        "00:43:52.127 HALTED momentum-v2.2.0 by guard: error_rate",
        "00:43:52.127 CUTOVER momentum-bg back to blue momentum-v2.1.0",
    ]


DEMO_TITLE = "rampart demo: canary, then blue/green"
DEMO_CLOCK = "2024-03-05 00:45:00.000 UTC"


def recording_console() -> Console:
    return Console(record=True, width=80, height=24, force_terminal=True, file=io.StringIO())


def frame(rows: list[ViewRow], events: list[str], **kw: int) -> list[str]:
    console = recording_console()
    console.print(render(rows, events, title="rampart demo", clock="2024-01-02 12:00:00", **kw))
    return console.export_text().splitlines()


# --- the view -----------------------------------------------------------------------------------


def test_view_fits_80x24_with_4_rows_and_20_events() -> None:
    rows = [*demo_rows(), row("momentum-v2.3.0-rc1", deployment="momentum-progressive")]
    events = [f"12:00:{i:02d}.000 STAGE event number {i} " + "x" * 80 for i in range(20)]
    lines = frame(rows, events)
    assert len(lines) <= 24
    assert all(cell_len(line) <= 80 for line in lines), [cell_len(x) for x in lines]
    text = "\n".join(lines)
    # one line per algorithm (nothing wrapped), the newest events shown, the oldest dropped
    for r in rows[:3]:
        assert sum(r.algo in line for line in lines) == 1
    assert "event number 19" in text
    assert "event number 0 " not in text
    for header in ("Alloc%", "Equity", "DD%", "Sharpe", "Win%", "Rej%", "p99ms"):
        assert header in lines[1]


def test_view_fills_the_rest_with_events() -> None:
    events = [f"e{i:02d}" for i in range(40)]
    lines = frame(demo_rows()[:1], events)
    assert len(lines) == 24  # 1 header + 3 table + 20 events in a 2-line panel
    assert "e39" in lines[-2]
    assert not any("e19" in line for line in lines)
    assert len(frame(demo_rows()[:1], events, height=12)) == 12


def test_halted_rows_are_marked_and_red() -> None:
    console = recording_console()
    console.print(render(demo_rows(), [], title="t", clock="c"))
    plain = console.export_text(clear=False).splitlines()
    styled = console.export_text(styles=True).splitlines()
    halted = next(i for i, line in enumerate(plain) if "momentum-v2.2.0" in line)
    running = next(i for i, line in enumerate(plain) if "momentum-v2.1.0" in line)
    assert "HALTED" in plain[halted]
    assert "HALTED" not in plain[running]
    assert "\x1b[1;31m" in styled[halted]
    assert "31m" not in styled[running]


def test_none_values_render_as_dash() -> None:
    empty = ViewRow(
        deployment=None,
        strategy=None,
        phase=None,
        stage=None,
        algo="bare",
        allocation=None,
        equity=0.0,
        drawdown=0.0,
        sharpe=None,
        win_rate=None,
        error_rate=None,
        latency_p99_ms=None,
        halted=False,
    )
    line = next(x for x in frame([empty], []) if x.startswith("bare"))
    # deploy, stage, allocation, Sharpe, win, rej, p99: dashes; equity and drawdown: numbers
    assert line.split() == ["bare", "-", "-", "-", "0.00", "0.0", "-", "-", "-", "-"]
    assert plain_rows([empty]) == [
        "bare [-] alloc - equity 0.00 dd 0.0% sharpe - win - rej - p99 -"
    ]


def test_long_names_are_cut_never_the_numbers() -> None:
    long = row(
        "a-very-long-algorithm-name-v10.20.30",
        deployment="an-even-longer-deployment-name",
        stage="Medium 3/6 (extended)",
        equity=1_234_567.0,
        latency_p99_ms=1234.5,
    )
    lines = frame([long], [])
    assert all(cell_len(line) <= 80 for line in lines)
    line = next(x for x in lines if x.startswith("a-very"))
    algo = line.split()[0]
    assert algo.startswith("a-very") and "\u2026" in algo and algo.endswith(".20.30")
    assert line.split()[-7:] == ["5.0", "1,234,567", "1.2", "1.84", "55", "0.2", "1,234"]


def test_narrow_terminals_drop_columns_before_cutting_algorithm_names() -> None:
    console = Console(record=True, width=60, height=24, force_terminal=True, file=io.StringIO())
    console.print(render(demo_rows(), demo_events(), title="t", clock="c", width=60))
    lines = console.export_text().splitlines()
    assert all(cell_len(line) <= 60 for line in lines)
    assert "Win%" not in lines[1] and "Sharpe" not in lines[1]
    assert lines[1].split()[-5:] == ["Alloc%", "Equity", "DD%", "Rej%", "p99ms"]
    halted = next(x for x in lines if x.startswith("momentum-v2.2.0"))
    assert halted.split()[-5:] == ["0.0", "99,412", "2.1", "25", "3.42"]


def test_strategy_names_are_abbreviated_and_deployment_shown_when_room() -> None:
    lines = frame([row("m1", strategy="BlueGreen", deployment="bg")], [])
    assert "bg:b/g" in "\n".join(lines)
    text = "\n".join(frame(demo_rows(), []))
    assert "canary" in text  # the deployment names do not fit next to 15-char algorithm ids


def test_empty_view() -> None:
    lines = frame([], [])
    text = "\n".join(lines)
    assert "no algorithms yet" in text and "no events yet" in text
    assert len(lines) <= 24


def test_plain_line_and_rows() -> None:
    assert plain_line("BREACH x", "12:00:00.000") == "12:00:00.000 BREACH x"
    lines = plain_rows(demo_rows())
    assert len(lines) == 3
    assert lines[0].startswith("momentum-v2.1.0 [momentum-canary Canary Full 6/6] alloc 100.0%")
    assert "HALTED" in lines[1] and "rej 25%" in lines[1]
    assert "alloc -" in lines[2] and "sharpe -" in lines[2]


def test_live_view_plain_mode_prints_one_line_per_event() -> None:
    out = io.StringIO()
    console = Console(file=out, width=80)
    view = LiveView(console, title="rampart demo")
    assert not view.is_live
    with view:
        view.update(demo_rows(), [], "09:30:00.000")
        view.event("STAGE momentum-v2.1.0 Small 2/6 " + "y" * 120, "09:30:00.000")
        view.update(demo_rows(), ["ignored in plain mode"], "10:00:00.000")
        view.event("BREACH momentum-v2.2.0 error_rate 0.25 > 0.01", "10:00:00.000")
        view.event("[bold]ROLLBACK[/bold] halt 0.84 ms", "10:00:00.001")
    text = out.getvalue()
    assert not ANSI.search(text)
    lines = text.splitlines()
    assert lines[:3] == [
        "09:30:00.000 STAGE momentum-v2.1.0 Small 2/6 " + "y" * 120,
        "10:00:00.000 BREACH momentum-v2.2.0 error_rate 0.25 > 0.01",
        "10:00:00.001 [bold]ROLLBACK[/bold] halt 0.84 ms",  # no markup interpretation
    ]
    assert lines[3:] == plain_rows(demo_rows())  # the final state, once, at stop()


def test_live_view_terminal_mode_redraws() -> None:
    console = recording_console()
    view = LiveView(console, title="rampart demo", refresh_per_second=50)
    assert view.is_live
    view.start()
    view.update(demo_rows(), [], "00:43:52.125")
    for e in demo_events():
        view.event(e[13:], e[:12])
    view.stop()
    view.stop()  # idempotent
    text = console.export_text()
    assert "momentum-v2.2.0" in text and "HALTED" in text
    assert "CUTOVER momentum-bg back to blue" in text
    last = text.rstrip("\n").splitlines()[-24:]
    assert all(cell_len(line) <= 80 for line in last)


def test_export_svg(tmp_path: Path) -> None:
    path = tmp_path / "shot.svg"
    text = export_svg(demo_rows(), demo_events(), title=DEMO_TITLE, clock=DEMO_CLOCK, path=path)
    svg = path.read_text()
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert "momentum" in svg and "HALTED" in svg
    lines = text.splitlines()
    assert len(lines) <= 24 and all(cell_len(line) <= 80 for line in lines)
    assert all(line == line.rstrip() for line in lines)
    assert "ROLLBACK halt 0.84 ms (target 100 ms)" in text


def test_docs_screenshot_is_current() -> None:
    """docs/screenshots/live-view.txt is what the current code renders (regenerate: run this
    file as a script)."""
    committed = SCREENSHOTS / "live-view.txt"
    if not committed.exists():
        pytest.skip("no docs screenshot")
    console = Console(record=True, width=80, height=24, force_terminal=True, file=io.StringIO())
    console.print(render(demo_rows(), demo_events(), title=DEMO_TITLE, clock=DEMO_CLOCK))
    now = "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"
    assert committed.read_text(encoding="utf-8") == now, (
        "the live view changed: regenerate with `.venv/bin/python tests/test_view_report.py`"
    )


# --- the report ---------------------------------------------------------------------------------

T0 = 1_709_596_800 * 1_000_000_000  # 2024-03-05 00:00:00 UTC
S = 1_000_000_000
VOID = {"meta", "br", "hr", "img", "input", "link", "area", "base", "col", "source", "wbr"}


class Checker(HTMLParser):
    """Fails on any unbalanced or misnested element; collects text and tag counts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []
        self.starts: dict[str, int] = {}
        self.attrs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts[tag] = self.starts.get(tag, 0) + 1
        self.attrs.extend(v for _, v in attrs if v)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts[tag] = self.starts.get(tag, 0) + 1
        self.attrs.extend(v for _, v in attrs if v)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def check_html(html: str) -> Checker:
    parser = Checker()
    parser.feed(html)
    parser.close()
    assert parser.errors == []
    assert parser.stack == []
    assert html.startswith("<!DOCTYPE html>")
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower()
    assert "src=" not in html and "href=" not in html and "url(" not in html
    return parser


def demo_report() -> str:
    samples = []
    stages = (0.01, 0.05, 0.10, 0.25, 0.50, 1.0)
    for i in range(600):
        t = T0 + i * S
        samples.append(
            Sample(
                t,
                "momentum-v2.1.0",
                100_000 + 300 * math.sin(i / 40) + 2 * i,
                stages[i // 100],
                0.01,
            )
        )
        if i >= 300:
            samples.append(
                Sample(t, "momentum-v2.2.0", 100_000 - 3 * (i - 300), 0.0 if i > 450 else 1.0, 0.02)
            )
    markers = [Marker(T0 + k * 100 * S, "stage", f"Stage {k + 1}/6") for k in range(6)]
    markers += [
        Marker(T0 + 300 * S, "cutover", "blue momentum-v2.1.0 -> green momentum-v2.2.0"),
        Marker(T0 + 450 * S, "breach", "momentum-v2.2.0 error_rate 0.25 > 0.01"),
        Marker(T0 + 450 * S + 840_000, "rollback", "halt 0.84 ms <target 100 ms>"),
        Marker(T0 + 10 * S, "info", "market data connected"),
        Marker(T0 + 20 * S, "approval", "alice approved the canary"),
        Marker(T0 + 590 * S, "promotion", "momentum-v2.1.0 promoted"),
    ]
    return render_html(
        list(reversed(samples)),  # order does not matter
        markers,
        title="Rampart demo <report> & co",
        summary=[("algorithms", "2"), ("rollback total", "3.15 ms"), ("verdict", "rolled back")],
        rollback_steps=[("halt", 0.84, 100.0), ("cancel", 612.5, 500.0), ("total", 613.3, 1000.0)],
    )


def test_report_is_self_contained_valid_html_with_two_charts() -> None:
    html = demo_report()
    parser = check_html(html)
    assert html.count("<svg") == 2 and html.count("</svg>") == 2
    assert parser.starts["svg"] == 2
    assert "xmlns" not in html  # inline SVG in HTML needs none (and it would be a URL)
    assert "<title>Rampart demo &lt;report&gt; &amp; co</title>" in html
    text = "".join(parser.text)
    for label in ("Stage 3/6", "error_rate 0.25 > 0.01", "halt 0.84 ms <target 100 ms>"):
        assert label in text
    for kind in ("stage", "cutover", "breach", "rollback", "approval", "promotion"):
        assert f'class="legend">{kind}</text>' in html  # in both charts' legends
        assert html.count(f'class="legend">{kind}</text>') == 2
    assert 'class="legend">info</text>' not in html  # info is listed, not drawn
    assert "market data connected" in text
    assert "event time, UTC (2024-03-05)" in text
    assert "00:02" in text  # a time tick
    assert "100%" in text  # allocation axis in percent


def test_report_tables() -> None:
    parser = check_html(demo_report())
    text = "\n".join(parser.text)
    assert "rollback total" in text and "3.15 ms" in text and "rolled back" in text
    cells = [t.strip() for t in parser.text if t.strip()]
    i = cells.index("halt", cells.index("Rollback steps"))
    assert cells[i : i + 4] == ["halt", "0.84", "100", "OK"]
    j = cells.index("cancel")
    assert cells[j : j + 4] == ["cancel", "612.5", "500", "OVER"]
    k = cells.index("total")
    assert cells[k : k + 4] == ["total", "613.3", "1000", "OK"]
    assert cells.count("OVER") == 1
    # per-algorithm table: first and last equity, max drawdown, last allocation
    a = cells.index("momentum-v2.2.0", cells.index("Algorithms"))
    assert cells[a : a + 8] == [
        "momentum-v2.2.0",
        "300",
        "100,000.00",
        "99,103.00",
        "-0.90%",
        "2.00%",
        "100.00%",
        "0.00%",
    ]
    assert fmt_utc(T0 + 450 * S + 840_000) in text


def test_report_tables_keep_measurements_apart() -> None:
    """A promotion restarts the measurement on real capital: the paper trading's numbers and
    the canary's are two rows, never one "change" from simulated to real equity."""
    samples = [
        Sample(T0, "a", 1_000_000.0, 1.0, 0.0, 0.0, 1_000_000.0, "paper trading"),
        Sample(T0 + S, "a", 1_004_000.0, 1.0, 0.005, 0.007, 1_000_000.0, "paper trading"),
        Sample(T0 + 2 * S, "a", 10_000.0, 0.01, 0.0, 0.0, 10_000.0),
        Sample(T0 + 3 * S, "a", 10_100.0, 0.01, 0.001, 0.002, 10_000.0),
    ]
    html = render_html(samples, [], title="t", summary=[], rollback_steps=[])
    cells = [t.strip() for t in check_html(html).text if t.strip()]
    a = cells.index("Algorithms")
    p = cells.index("a (paper trading)", a)
    assert cells[p : p + 6] == [
        "a (paper trading)",
        "2",
        "1,000,000.00",
        "1,004,000.00",
        "0.40%",
        "0.70%",
    ]
    r = cells.index("a", a)
    assert cells[r : r + 6] == ["a", "2", "10,000.00", "10,100.00", "1.00%", "0.20%"]


def test_report_empty_inputs() -> None:
    html = render_html([], [], title="empty", summary=[], rollback_steps=[])
    parser = check_html(html)
    assert "<svg" not in html
    assert "no data" in "".join(parser.text)
    assert html.count('class="nodata"') == 6


def test_report_markers_without_samples() -> None:
    html = render_html([], [Marker(T0, "breach", "x")], title="t", summary=[], rollback_steps=[])
    check_html(html)
    assert "<svg" not in html and "breach" in html


def test_report_single_sample_and_flat_series() -> None:
    one = [Sample(T0, "solo", 100_000.0, 0.05, 0.0)]
    html = render_html(
        one, [Marker(T0, "stage", "Micro 1/6")], title="t", summary=[], rollback_steps=[]
    )
    check_html(html)
    assert html.count("<svg") == 2 and html.count("<circle") == 2  # a point, not a line
    flat = [Sample(T0 + i * S, "flat", 5.0, 0.0, 0.0) for i in range(3)]
    html = render_html(flat, [], title="t", summary=[], rollback_steps=[])
    check_html(html)
    assert html.count("<svg") == 2 and "nan" not in html.lower()


def test_report_skips_non_finite_values() -> None:
    bad = [
        Sample(T0, "a", math.nan, 0.1, 0.0),
        Sample(T0 + S, "a", 10.0, math.inf, math.nan),
        Sample(T0 + 2 * S, "a", 11.0, 0.2, 0.0),
    ]
    html = render_html(
        bad, [], title="t", summary=[("k", "v")], rollback_steps=[("halt", math.nan, 100.0)]
    )
    parser = check_html(html)
    assert html.count("<svg") == 2
    assert "n/a" in "".join(parser.text)


def test_report_time_axis_scales() -> None:
    cases = (
        (5 * 10**6, ".00"),
        (50 * S, ":00"),
        (30 * 3600 * S, "03-06 00:00"),
        (9 * 86400 * S, "03-1"),
    )
    for span, label in cases:
        samples = [Sample(T0, "a", 1.0, 0.5, 0.0), Sample(T0 + span, "a", 2.0, 1.0, 0.0)]
        html = render_html(samples, [], title="t", summary=[], rollback_steps=[])
        check_html(html)
        ticks = re.findall(r'class="tick">([^<]*)</text>', html)
        assert any(label in t for t in ticks), (span, ticks)


def test_write_report(tmp_path: Path) -> None:
    path = write_report(tmp_path / "out" / "report.html", demo_report())
    assert path == tmp_path / "out" / "report.html"
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def write_docs_screenshot() -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    text = export_svg(
        demo_rows(),
        demo_events(),
        title=DEMO_TITLE,
        clock=DEMO_CLOCK,
        path=SCREENSHOTS / "live-view.svg",
    )
    (SCREENSHOTS / "live-view.txt").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    write_docs_screenshot()
