"""The demo's HTML report in a real browser (issue 13): headless Chromium renders a report from a
real demo run on a desktop (1400 px) and a phone (390 px) without a console message, and every
event the demo marked is in the rendered DOM. Screenshots are left in the test's tmp_path (see
the test's output) for a person to judge. Skipped when no Chromium is installed (CI installs
Debian's ``chromium``: .ci/run)."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest
from rich.console import Console

from rampart.demo import run_demo
from rampart.report import MARKER_STYLES
from rampart.view import LiveView

WIDTHS = {"desktop": (1400, 4800), "phone": (390, 7600)}
# Chromium logs each console message (console.*, uncaught errors) to stderr with these flags as
# `[pid:tid:time:INFO:CONSOLE:1] "message", source: url (1)` (older builds: `CONSOLE(1)]`)
CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\] (.*)")


def chromium() -> str | None:
    named = os.environ.get("RAMPART_CHROMIUM")
    if named:
        return named
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


BROWSER = chromium()
pytestmark = pytest.mark.skipif(
    BROWSER is None,
    reason="no chromium binary found (chromium, chromium-browser, google-chrome or "
    "$RAMPART_CHROMIUM); CI installs Debian's chromium",
)


def browse(url: str, profile: Path, *args: str) -> tuple[str, list[str]]:
    """Run headless Chromium on ``url``; its stdout and the console messages it logged."""
    assert BROWSER is not None
    # a browser process that dies at start (seen once on a loaded CI machine: exit status
    # non-zero, nothing on stderr but the Debian launcher's shell warning) is started again,
    # twice at most; what the page renders is what this checks, not the browser's start-up
    for _attempt in range(3):
        proc = subprocess.run(
            [
                BROWSER,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--enable-logging=stderr",
                "--v=0",
                f"--user-data-dir={profile}",
                *args,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        if proc.returncode == 0:
            break
    assert proc.returncode == 0, f"exit status {proc.returncode}: {proc.stderr[-2000:]}"
    return proc.stdout, [m.group(1) for m in CONSOLE.finditer(proc.stderr)]


class Text(HTMLParser):
    """The text of a document, outside <style>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.skip += tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self.skip -= tag == "style"

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)


def text_of(dom: str) -> str:
    parser = Text()
    parser.feed(dom)
    parser.close()
    return "\n".join(parser.parts)


def test_the_console_capture_sees_script_errors(tmp_path: Path) -> None:
    """The check below is only as good as its capture: a page with a script error fails it."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><body><p>x</p><script>throw new Error("sentinel-42")</script>'
        "</body></html>"
    )
    _, console = browse(page.as_uri(), tmp_path / "profile", "--dump-dom")
    assert any("sentinel-42" in line for line in console), console


def test_the_demo_report_renders_in_a_browser(tmp_path: Path) -> None:
    out = io.StringIO()
    view = LiveView(Console(file=out, force_terminal=False, width=100), title="demo")
    result = run_demo(view, seed=3, data=None, report=tmp_path / "report.html")
    url = result.report.resolve().as_uri()
    html = result.report.read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html

    for name, (width, height) in WIDTHS.items():
        profile = tmp_path / f"profile-{name}"
        shot = tmp_path / f"report-{name}.png"
        _, console = browse(url, profile, f"--window-size={width},{height}", f"--screenshot={shot}")
        assert console == [], (name, console)
        assert shot.stat().st_size > 10_000, name
        dom, console = browse(url, profile, f"--window-size={width},{height}", "--dump-dom")
        assert console == [], (name, console)
        assert dom.count("<svg") >= 2, name
        text = unescape(text_of(dom))
        # every marked event is there, as its text (the events table, a panel's key, a phase's
        # heading); every drawn one has its numbered badge, and the incident's are named
        for m in result.markers:
            assert m.text in text, (name, m)
        drawn = [m for m in result.markers if m.kind in MARKER_STYLES]
        badges = re.findall(r'class="bn"[^>]*>(\d+)</text>', dom)
        assert sorted(map(int, badges)) == list(range(1, len(drawn) + 1)), (name, badges)
        for kind in ("cutover", "breach", "rollback"):
            assert any(m.kind == kind for m in drawn), kind
            assert f'class="mk">{kind}</text>' in dom, (name, kind)
    print(f"\nscreenshots: {tmp_path / 'report-desktop.png'} {tmp_path / 'report-phone.png'}")
