"""The demo, headless, end to end: the whole story happens and the report has its plots."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from rampart.demo import run_demo
from rampart.view import LiveView


@pytest.mark.parametrize("seed", [7, 1, 3])
def test_the_demo_tells_the_whole_story(tmp_path: Path, seed: int) -> None:
    """Several market seeds, each the same story (issue 13: one run in 8 ended without the
    rollback's timings, another completed the faulty upgrade and then breached)."""
    out = io.StringIO()
    view = LiveView(Console(file=out, force_terminal=False, width=100), title="demo")
    result = run_demo(view, seed=seed, data=None, report=tmp_path / "report.html")
    story = "\n".join(result.story)
    # paper trading, promotion with a risk manager's approval
    assert "promotion criteria met" in story
    assert "approved: promoted to canary" in story
    # each of the seed's six canary stages, in order
    stages = re.findall(r"canary stage (\w+):", story)
    assert stages == ["Micro", "Small", "Medium", "Large", "Half", "Full"]
    assert "canary complete" in story
    # the blue/green upgrade to the faulty build, its breach, the rollback to the good build
    assert "cutover: momentum-v2.2.0 live" in story
    assert "BREACH" in story
    assert result.rollback is not None and result.rollback.state == "succeeded"
    assert result.rollback.algos == ["momentum-v2.2.0"]
    steps = {s.name: s for s in result.rollback.steps}
    assert all(steps[n].status == "acked" for n in ("halt", "cancel", "allocate", "activate"))
    # one incident, told once: the core's breach with its numbers, the rollback with its times,
    # then the upgrade rolled back (never completed)
    (breach,) = [line for line in result.story if line.startswith("BREACH")]
    assert re.fullmatch(r"BREACH momentum-v2\.2\.0: error rate [0-9.]+ above 0\.01", breach)
    assert "demo-upgrade rolled back" in story and "demo-upgrade completed" not in story
    # the order of the story
    keys = ("promotion", "Micro", "Full", "cutover", "BREACH", "ROLLBACK", "demo-upgrade rolled")
    order = [story.index(k) for k in keys]
    assert order == sorted(order)
    # the report: both charts, the rollback marked, the timings table
    html = result.report.read_text()
    assert html.count("<svg") >= 2
    assert "rollback" in html.lower() and "cutover" in html.lower()
    assert "halt" in html and "target" in html.lower() and "no data" not in html
    # the summary's max drawdowns (the core's) are the table's (they differed: the table took
    # the largest of the sampled drawdowns)
    summary_dds = re.findall(r"equity [0-9,.]+, max DD ([0-9.]+%)", html)
    assert len(summary_dds) == 2
    for dd in summary_dds:
        assert f">{dd}<" in html, (dd, summary_dds)
    # numbers a quant would believe: the promotion's Sharpe with its standard error and sample
    # (a week of hourly returns: +-7), and the canary measured on its own capital (the paper
    # PnL carried into 1% of the capital made its drawdown 20%+ and its Sharpe 35-57)
    promo = next(line for line in result.story if line.startswith("promotion criteria met"))
    m = re.search(r"Sharpe (-?[0-9.]+) ± ([0-9.]+) \((\d+) h\)", promo)
    assert m is not None, promo
    sharpe, se, hours = float(m[1]), float(m[2]), int(m[3])
    assert 1.5 <= sharpe < 20 and hours >= 7 * 24 and 3 < se < 8, promo
    good = [smp for smp in result.samples if smp.algo == "momentum-v2.1.0"]
    assert good and max(smp.max_drawdown for smp in good) < 0.05
    (kept,) = re.findall(r"momentum-v2\.1\.0</td><td[^>]*>equity ([0-9,.]+), max DD", html)
    assert 0.95 < float(kept.replace(",", "")) / 1_000_000 < 1.05, kept
    # plain mode printed one line per event, no terminal escapes
    printed = out.getvalue()
    assert "canary stage Micro" in printed and "\x1b[" not in printed


def test_the_synthetic_market_gives_the_good_build_a_believable_sharpe() -> None:
    """Months of the demo's market, traded by the good build's momentum rule with the demo's
    spread and commission, measured by the core: a Sharpe ratio a real intraday strategy could
    have (1.5-5), not the 37-57 of the old market's 10%-a-day trends."""
    from rampart._core import AlgoConfig, Engine
    from rampart.demo import START_NS, synthetic_market
    from rampart.gateway.reference import Momentum

    days = 90
    sharpes = []
    for seed in (1, 2, 3):
        engine = Engine()
        engine.register(AlgoConfig("good", "2.1.0", 1_000_000.0, sharpe_window=days * 24))
        rule, held = Momentum(lot=20, lookback=15, threshold=4.0), 0.0
        for _, (ts, bid, ask) in zip(range(days * 1440), synthetic_market(seed), strict=False):
            engine.quote("ESZ5", bid, ask, ts)
            want = rule.target((bid + ask) / 2)
            if want != held:
                price = ask if want > held else bid  # crossing the spread, as the demo's venue
                qty = want - held
                engine.fill("good", "ESZ5", qty, price, abs(qty) * price * 0.00002, ts)
                held = want
        engine.advance(START_NS + days * 86_400 * 10**9)
        s = engine.snapshot("good")
        assert s.returns_count == days * 24 and s.sharpe is not None
        sharpes.append(s.sharpe)
    mean = sum(sharpes) / len(sharpes)
    assert 1.5 <= mean <= 5, sharpes


def test_a_sharpe_is_shown_with_its_standard_error() -> None:
    from rampart.demo import sharpe_text
    from rampart.sharpe import sharpe_standard_error

    # a week of hourly returns: sqrt(8760 / 168) = 7.2 (plus a hair for the Sharpe itself)
    assert sharpe_text(4.15, 168, 8760.0) == "4.15 ± 7.2 (168 h)"
    assert sharpe_text(None, 5, 8760.0) == "- (5 h)"
    se = sharpe_standard_error(3.0, 8760, 8760.0)
    assert se is not None and 1.0 < se < 1.01
    assert sharpe_standard_error(3.0, 1, 8760.0) is None


def test_the_promotion_line_says_how_long_paper_trading_took() -> None:
    """Paper trading lasts the minimum duration or longer (until the criteria hold): the story
    says which, not "after 7 days" for a build promoted on day 8.5."""
    from rampart.demo import SEC, _duration

    day = 86_400 * SEC
    assert _duration(7 * day) == "7 days"
    assert _duration(7 * day + 30 * SEC) == "7 days"
    assert _duration(8 * day + day // 2) == "8 days 12 h"
    assert _duration(day + 3_600 * SEC) == "1 day 1 h"


def test_demo_refuses_a_missing_data_file(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rampart", "demo", "--data", str(tmp_path / "nope.csv")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_demo_replays_real_prices_from_a_csv(tmp_path: Path) -> None:
    """A recorded price file drives the same pipeline (looped as long as the story needs)."""
    import random

    rng = random.Random(3)
    lines = ["ts,bid,ask"]
    mid = 4500.0
    for i in range(3000):
        mid *= 1 + 4e-5 * (1 if (i // 300) % 2 == 0 else -1) + 2.5e-4 * rng.gauss(0, 1)
        lines.append(f"{i * 60_000_000_000},{mid - 0.25:.2f},{mid + 0.25:.2f}")
    data = tmp_path / "prices.csv"
    data.write_text("\n".join(lines))
    view = LiveView(Console(file=io.StringIO(), force_terminal=False), title="demo")
    result = run_demo(view, seed=1, data=data, report=tmp_path / "r.html")
    assert any("paper trading" in line for line in result.story)
    assert result.report.exists()
    assert result.samples and result.samples[0].equity > 0


def test_demo_reads_a_vendor_csv_and_says_what_it_expects(tmp_path: Path) -> None:
    """`date,close` (a common vendor export) works; a file it cannot use is refused at once,
    saying what it expects (issue 13: "no prices found", and a 3-row file ran for minutes)."""
    from rampart.demo import MIN_RECORDED_PRICES, recorded_market

    vendor = tmp_path / "spx.csv"
    rows = [f"2024-01-{1 + i % 28:02d},{4700 + i * 0.5:.2f}" for i in range(MIN_RECORDED_PRICES)]
    vendor.write_text("date,close\n" + "\n".join(rows) + "\n")
    market = recorded_market(vendor)
    ts0, bid, ask = next(market)
    assert (bid, ask) == (4700.0, 4700.0)
    assert next(market)[0] > ts0
    short = tmp_path / "short.csv"
    short.write_text("date,close\n2024-01-02,4700\n2024-01-03,4710\n2024-01-04,4705\n")
    with pytest.raises(ValueError, match="3 prices; the demo needs at least"):
        recorded_market(short)
    nameless = tmp_path / "nameless.csv"
    nameless.write_text("date,volume\n2024-01-02,100\n")
    with pytest.raises(ValueError, match="names no price column; expected a CSV"):
        recorded_market(nameless)
    proc = subprocess.run(
        [sys.executable, "-m", "rampart", "demo", "--plain", "--data", str(short)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "at least" in proc.stderr
