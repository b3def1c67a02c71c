"""``rampart demo``: the whole product in one command, on an embedded nats-server.

A market feed (synthetic, with regimes; or a replay of real prices), the reference gateway with
two builds of a momentum algorithm, and the Rampart daemon, all on loopback. The story runs in
accelerated event time: paper trading with promotion and a risk manager's approval, the canary's
six stages, a blue/green upgrade to a faulty build, its breach, and the emergency rollback to the
good build, with the rollback's step timings against the seed's targets. A live view while it
runs; a summary and a self-contained HTML report at the end.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import logging
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
from nats.aio.client import Client

from rampart._core import Breach
from rampart.config import (
    AlgorithmConfig,
    DaemonConfig,
    LimitsConfig,
    MetricsConfig,
    TriggersConfig,
)
from rampart.daemon import Daemon
from rampart.deployment import Deployment, decode_deployment
from rampart.embedded import EmbeddedNatsServer
from rampart.gateway.paper import PaperVenue
from rampart.gateway.reference import HostedAlgo, Momentum, ReferenceGateway
from rampart.gateway.slippage import SpreadCrossing
from rampart.protocol import Quote, Subjects, encoder
from rampart.report import Marker, Sample, render_html, write_report
from rampart.sharpe import sharpe_standard_error
from rampart.status import strategy_label
from rampart.store import RollbackRecord
from rampart.strategies import TERMINAL
from rampart.strategies.canary import CanaryMachine
from rampart.strategies.paper import PaperMachine
from rampart.view import LiveView, ViewRow

SEC = 1_000_000_000
START_NS = 1_764_028_800_000_000_000  # 2025-11-25 00:00 UTC
QUOTE_SPACING_NS = 60 * SEC
SYMBOL = "ESZ5"
GOOD = "momentum-v2.1.0"
FAULTY = "momentum-v2.2.0"
# the demo's deployment documents ship inside the package (an installed wheel has no source tree)
DEMO_DATA = importlib.resources.files("rampart") / "demo_data"


@dataclass(frozen=True)
class Regime:
    name: str
    quotes: int
    drift: float
    vol: float


# Per-minute moves of an equity-index future: 2.8e-4 a minute is ~1% a day, ~16% a year (the
# S&P 500's long-run volatility). Trends of 2.6e-5 a minute give the good momentum build an edge
# that survives the spread and commissions: a Sharpe ratio of about 3 over months of this market
# (tests/test_demo.py measures it), and anything from -10 to 15 over a single week, as a week of
# any real strategy does; the story shows each Sharpe with its standard error.
REGIMES = (
    Regime("trend up", 360, 2.6e-5, 2.8e-4),
    Regime("choppy", 360, 0.0, 2.8e-4),
    Regime("trend down", 360, -2.6e-5, 2.8e-4),
    Regime("choppy", 360, 0.0, 2.8e-4),
)


def synthetic_market(seed: int) -> Iterator[tuple[int, float, float]]:
    """Quotes every minute of event time, cycling through trending and choppy regimes."""
    rng = random.Random(seed)
    mid, ts = 6000.0, START_NS
    while True:
        for regime in REGIMES:
            for _ in range(regime.quotes):
                mid *= 1.0 + regime.drift + regime.vol * rng.gauss(0.0, 1.0)
                yield ts, round(mid - 0.125, 2), round(mid + 0.125, 2)
                ts += QUOTE_SPACING_NS


# a recorded price file shorter than this is refused: the story needs days of event time, and a
# few rows looped thousands of times make a flat market in which nothing happens
MIN_RECORDED_PRICES = 200
PRICE_COLUMNS = ("close", "adj close", "adj_close", "price", "last", "mid", "mark")
CSV_EXPECTED = (
    "a CSV with a header row naming a price column (close, price, last or mid; or bid and ask), "
    "for example `date,close` from a data vendor; or headerless `ts_ns,bid,ask` / `ts_ns,price` "
    "rows; or JSON lines of quotes or marks (docs/events.md)"
)


def _price_rows(path: Path, lines: list[str]) -> list[tuple[float, float]]:
    """(bid, ask) per row of a price file, in file order (its times are not used: the demo
    spaces prices one minute apart)."""
    rows: list[tuple[float, float]] = []
    header: list[str] | None = None
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if line.startswith("{"):
                ev = json.loads(line)
                bid = float(ev.get("bid", ev.get("price")))
                ask = float(ev.get("ask", ev.get("price")))
            else:
                parts = [x.strip().strip('"') for x in line.split(",")]
                if header is None and not parts[0].replace(".", "", 1).isdigit():
                    header = [x.lower() for x in parts]
                    continue
                if header is not None:
                    named = dict(zip(header, parts, strict=False))
                    if "bid" in named and "ask" in named:
                        bid, ask = float(named["bid"]), float(named["ask"])
                    else:
                        col = next((c for c in PRICE_COLUMNS if c in named), None)
                        if col is None:
                            raise ValueError(
                                f"{path}: its header ({', '.join(header)}) names no price "
                                f"column; expected {CSV_EXPECTED}"
                            )
                        bid = ask = float(named[col])
                else:
                    bid = float(parts[1])
                    ask = float(parts[2]) if len(parts) > 2 else bid
        except (ValueError, TypeError, IndexError, KeyError, json.JSONDecodeError) as e:
            if str(e).startswith(str(path)):
                raise
            raise ValueError(
                f"{path}, line {n}: cannot read a price ({e}); expected {CSV_EXPECTED}"
            ) from None
        if not (0 < bid <= ask < float("inf")):
            raise ValueError(f"{path}, line {n}: prices must be > 0 with bid <= ask")
        rows.append((bid, ask))
    return rows


def recorded_market(path: Path) -> Iterator[tuple[int, float, float]]:
    """Real prices from a file, one minute apart in event time, looped as long as the story
    needs (each loop continues from where the last ended): ``CSV_EXPECTED``."""
    rows = _price_rows(path, path.read_text().splitlines())
    if not rows:
        raise ValueError(f"{path}: no prices found; expected {CSV_EXPECTED}")
    if len(rows) < MIN_RECORDED_PRICES:
        raise ValueError(
            f"{path}: {len(rows)} prices; the demo needs at least {MIN_RECORDED_PRICES} (a "
            "week of paper trading and the canary's days run on them; a few rows looped "
            "make a flat market in which nothing happens)"
        )
    return _looped(rows)


def _looped(rows: list[tuple[float, float]]) -> Iterator[tuple[int, float, float]]:
    ts, loop = START_NS, 0
    base = rows[0][0]
    while True:
        scale = 1.0 if loop == 0 else rows[-1][0] / base
        for bid, ask in rows:
            yield ts, bid * scale, ask * scale
            ts += QUOTE_SPACING_NS
        loop += 1


def demo_config(data_dir: Path) -> DaemonConfig:
    limits = LimitsConfig(max_daily_loss=0.02, max_drawdown=0.05, max_error_rate=0.01)
    metrics = MetricsConfig(error_window=timedelta(minutes=30), error_min_orders=3)
    return DaemonConfig(
        name="rampart-demo",
        data_dir=str(data_dir),
        log_level="warning",
        heartbeat_interval=timedelta(milliseconds=200),
        decision_interval=timedelta(seconds=30),
        # event time runs days ahead of the wall clock here: judge gateways only
        triggers=TriggersConfig(market_data_timeout=None, nats_disconnect=False),
        algorithms=[
            AlgorithmConfig(
                id=GOOD,
                version="2.1.0",
                gateway="gw1",
                capital=1_000_000.0,
                limits=limits,
                metrics=metrics,
            ),
            AlgorithmConfig(
                id=FAULTY,
                version="2.2.0",
                gateway="gw1",
                capital=1_000_000.0,
                previous_version=GOOD,
                limits=limits,
                metrics=metrics,
            ),
        ],
    )


# quotes to wait, after the story's last deployment ended in a rollback, for the rollback's record
RECORD_WAIT = 20_000


@dataclass
class DemoResult:
    report: Path
    story: list[str]
    rollback: RollbackRecord | None
    markers: list[Marker]
    samples: list[Sample] = field(default_factory=list)


def sharpe_text(sharpe: float | None, returns: int, periods_per_year: float) -> str:
    """A Sharpe ratio as a quant reads it, with its standard error and the hourly returns it
    is estimated from: a week's ``4.15 ± 7.2 (171 h)``, not a promise."""
    se = sharpe_standard_error(sharpe, returns, periods_per_year)
    if sharpe is None or se is None:
        return f"- ({returns} h)"
    return f"{sharpe:.2f} ± {se:.1f} ({returns} h)"


def fmt_ts(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M")


class Demo:
    def __init__(self, view: LiveView, *, seed: int, data: Path | None, report: Path) -> None:
        self.view = view
        self.seed = seed
        self.market = recorded_market(data) if data else synthetic_market(seed)
        self.report_path = report
        self.workdir = Path(tempfile.mkdtemp(prefix="rampart-demo-"))
        self.breaches: list[Breach] = []  # every breach the core reported, in order
        self.samples: list[Sample] = []
        self.markers: list[Marker] = []
        self.events: list[str] = []
        self.story: list[str] = []
        self.now = START_NS
        self.published = 0
        # the annualization of the algorithms' hourly returns (for the Sharpe's standard error)
        self.periods_per_year = demo_config(self.workdir).algorithms[0].to_core().periods_per_year

    # ---- narration ------------------------------------------------------------------------

    def say(self, text: str, kind: str = "info") -> None:
        clock = fmt_ts(self.now)
        self.events.append(f"{clock}  {text}")
        self.story.append(text)
        self.markers.append(Marker(ts=self.now, kind=kind, text=text))
        self.view.event(text, clock)

    def rows(self, daemon: Daemon) -> list[ViewRow]:
        rows = []
        dep_of = {r.state.active: r for r in daemon.runner.deployments.values()}
        for r in daemon.runner.deployments.values():
            if r.state.standby:
                dep_of.setdefault(r.state.standby, r)
        halted = daemon.guard.halted if daemon.guard else {}
        for algo in daemon.engine.algorithms():
            s = daemon.engine.snapshot(algo)
            run = dep_of.get(algo)
            stage = None
            if run is not None and run.state.strategy in ("Canary", "PaperTrading"):
                if run.state.phase in ("canary", "completed", "awaiting_operator"):
                    stage = f"stage {run.state.stage + 1}/6"
            allocation = None
            if run is not None:
                allocation = run.state.allocation if run.state.active == algo else 0.0
            phase: str | None = run.state.phase if run else None
            if run is not None and phase == "rolled_back" and run.state.active == algo:
                phase = "kept: upgrade rolled back"
            rows.append(
                ViewRow(
                    deployment=run.state.deployment_id if run else None,
                    strategy=strategy_label(run.state) if run else None,
                    phase=phase,
                    stage=stage,
                    algo=algo,
                    allocation=allocation,
                    equity=s.equity,
                    drawdown=s.drawdown,
                    sharpe=s.sharpe,
                    sharpe_se=sharpe_standard_error(
                        s.sharpe, s.returns_count, self.periods_per_year
                    ),
                    win_rate=s.win_rate,
                    error_rate=s.error_rate,
                    latency_p99_ms=None if s.latency_p99_ns is None else s.latency_p99_ns / 1e6,
                    halted=algo in halted,
                )
            )
        return rows

    def phase(self, name: str) -> None:
        """The report's panels: a phase starts here (the report plots each on its own axis)."""
        self.markers.append(Marker(ts=self.now, kind="phase", text=name))

    def sample(self, daemon: Daemon, rows: list[ViewRow]) -> None:
        for r in rows:
            snap = daemon.engine.snapshot(r.algo)
            self.samples.append(
                Sample(
                    ts=self.now,
                    algo=r.algo,
                    equity=r.equity,
                    allocation=r.allocation or 0.0,
                    drawdown=r.drawdown,
                    max_drawdown=snap.max_drawdown,
                    capital=snap.capital,
                    # promotion starts a new measurement on real capital (docs/metrics.md)
                    measurement="paper trading"
                    if r.phase in ("paper", "awaiting_approval")
                    else "",
                )
            )

    # ---- the run ----------------------------------------------------------------------------

    async def run(self) -> DemoResult:
        # the daemon's log goes to a file: the live view and the story are what is shown
        handler = logging.FileHandler(self.workdir / "rampart.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            return await self._run()
        finally:
            root.removeHandler(handler)
            handler.close()

    async def _run(self) -> DemoResult:
        server = EmbeddedNatsServer(store_dir=self.workdir / "nats")
        await asyncio.to_thread(server.start)
        daemon = Daemon(demo_config(self.workdir / "state"), servers=[server.url])
        feed: Client | None = None
        gw_nc: Client | None = None
        gateway: ReferenceGateway | None = None
        try:
            await daemon.start()
            daemon.breach_listeners.insert(0, self.breaches.extend)
            gw_nc = await nats.connect(server.url)
            venue = PaperVenue(SpreadCrossing(), commission_rate=0.00002, latency_ns=300_000)
            gateway = ReferenceGateway(
                gw_nc,
                "gw1",
                [
                    HostedAlgo(GOOD, SYMBOL, Momentum(lot=20, lookback=15, threshold=4.0)),
                    # the faulty build: fades every move, 20x the size, malformed limit prices
                    HostedAlgo(
                        FAULTY,
                        SYMBOL,
                        Momentum(lot=400, lookback=1, threshold=0.1, sign=-1, bad_limit_prob=0.6),
                    ),
                ],
                venue=venue,
                heartbeat_interval=0.2,
                deadman_timeout=3600,
                trusted_keys=[daemon.public_key],
            )
            await gateway.start()
            feed = await nats.connect(server.url)
            self.view.start()
            self.say(f"embedded nats-server on {server.url}; gateway gw1 hosts {GOOD}, {FAULTY}")
            return await self.story_loop(daemon, gateway, feed)
        finally:
            self.view.stop()
            for closer in (
                feed.close() if feed else None,
                gateway.close() if gateway else None,
                gw_nc.close() if gw_nc else None,
            ):
                if closer is not None:
                    try:
                        await closer
                    except Exception:
                        pass
            await daemon.close()
            await asyncio.to_thread(server.cleanup)
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def publish_quote(
        self, feed: Client, daemon: Daemon, gateway: ReferenceGateway, q: tuple[int, float, float]
    ) -> None:
        """Publish one quote and wait until the gateway has traded on it, the daemon has seen the
        quote and everything the gateway published in answer, and the daemon's commands to the
        gateway are done: accelerated event time stays in step with the effects."""
        ts, bid, ask = q
        self.now = ts
        await feed.publish(
            Subjects().market(SYMBOL), encoder.encode(Quote(symbol=SYMBOL, bid=bid, ask=ask, ts=ts))
        )
        self.published += 1
        await feed.flush()
        deadline = time.monotonic() + 10
        while (
            gateway.now < ts
            or daemon.stats.ingested + sum(daemon.stats.rejected.values())
            < self.published + gateway.events_published
            or not daemon.effects_idle()
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the demo pipeline stalled: the daemon stopped ingesting")
            await asyncio.sleep(0)

    async def story_loop(
        self, daemon: Daemon, gateway: ReferenceGateway, feed: Client
    ) -> DemoResult:
        paper = decode_deployment((DEMO_DATA / "paper.json").read_bytes())
        upgrade = decode_deployment((DEMO_DATA / "blue-green.json").read_bytes())
        await self.publish_quote(feed, daemon, gateway, next(self.market))
        await feed.flush()
        while daemon.engine.now is None:
            await asyncio.sleep(0.001)
        self.phase("paper trading (simulated capital)")
        await self.deploy(daemon, paper, "alice@quant")
        self.say(f"paper trading {GOOD} on 1,000,000 simulated; promotion needs 7 days", "stage")
        seen: set[tuple[str, str, int]] = set()
        upgraded = False
        rollback: RollbackRecord | None = None
        finish_at: int | None = None
        over_at = 1 << 62  # the quote at which the story's last deployment ended
        waiting: dict[str, int] = {}  # rolled-back deployment -> quote it began to wait at
        max_quotes = 400_000
        for i, q in enumerate(self.market):
            await self.publish_quote(feed, daemon, gateway, q)
            runs = {r.state.deployment_id: r.state for r in daemon.runner.deployments.values()}
            # the breach and its rollback first: a deployment's transition follows from them
            if daemon.guard and daemon.guard.recent and rollback is None:
                rollback = daemon.guard.recent[0]
                self.report_rollback(rollback)
            for dep_id, st in runs.items():
                key = (dep_id, st.phase, st.stage)
                if key in seen:
                    continue
                if (
                    st.phase == "rolled_back"
                    and rollback is None
                    and i - waiting.get(dep_id, i) < RECORD_WAIT
                ):
                    # told after the breach and the rollback it follows from: their record (its
                    # step times) is written a few ms after the deployment's transition
                    waiting.setdefault(dep_id, i)
                    continue
                seen.add(key)
                await self.narrate(daemon, dep_id, st.phase, st.stage)
            p = runs.get(paper.deployment_id)
            if p is not None and p.phase == "awaiting_approval":
                decision = await daemon.command(paper.deployment_id, "approve", "risk@desk")
                if decision.refused is None:
                    self.say("risk manager risk@desk approved: promoted to canary", "approval")
                    self.phase("canary: 1% to 100% of capital")
            if p is not None and p.phase == "completed" and not upgraded:
                upgraded = True
                self.phase("blue/green upgrade")
                await self.deploy(daemon, upgrade, "alice@quant")
                self.say(f"blue/green upgrade: {FAULTY} deployed at 0% beside {GOOD}", "stage")
            u = runs.get(upgrade.deployment_id)
            upgrade_over = u is not None and u.phase in TERMINAL
            paper_failed = p is not None and p.phase in ("rolled_back", "aborted")
            rolled_back = any(st.phase == "rolled_back" for st in runs.values())
            # a rollback's record (with its step times) is awaited before the story ends: the
            # report never says "no data" for a rollback that happened
            recorded = rollback is not None or not rolled_back or i - over_at > RECORD_WAIT
            if (upgrade_over or paper_failed) and over_at > i:
                over_at = i
            if finish_at is None and (upgrade_over or paper_failed) and recorded:
                finish_at = self.now + 60 * QUOTE_SPACING_NS
            if i % 20 == 0 or upgraded:  # every quote once the upgrade is out: minutes matter
                rows = self.rows(daemon)
                self.sample(daemon, rows)
                self.view.update(rows, [], fmt_ts(self.now))
            if finish_at is not None and self.now >= finish_at:
                break
            if i > max_quotes:
                self.say("the story did not finish within the market data available", "info")
                break
        rows = self.rows(daemon)
        self.sample(daemon, rows)
        self.view.update(rows, [], fmt_ts(self.now))
        summary = self.summary(daemon, rollback)
        html = render_html(
            self.samples,
            self.markers,
            title="Rampart demo: paper -> canary -> blue/green -> rollback",
            summary=summary,
            rollback_steps=_steps(rollback),
        )
        path = write_report(self.report_path, html)
        return DemoResult(path, self.story, rollback, self.markers, self.samples)

    async def deploy(self, daemon: Daemon, doc: Deployment, actor: str) -> None:
        await daemon.deploy(doc, actor)

    async def narrate(self, daemon: Daemon, dep_id: str, phase: str, stage: int) -> None:
        run = daemon.runner.deployments[dep_id]
        if phase == "awaiting_approval":
            s = daemon.engine.snapshot(run.state.active)
            # the paper trading it took: the criteria are checked from the minimum duration on,
            # and a build that misses them then keeps paper trading until they hold
            took = _duration(run.state.phase_started_at - run.state.started_at)
            self.say(
                f"promotion criteria met after {took}: Sharpe "
                f"{sharpe_text(s.sharpe, s.returns_count, self.periods_per_year)}, max DD "
                f"{s.max_drawdown:.2%}, win rate {s.win_rate:.0%}, {s.trades} trades",
                "promotion",
            )
        elif phase == "canary":
            machine = run.machine
            canary = machine.canary if isinstance(machine, PaperMachine) else machine
            assert isinstance(canary, CanaryMachine)
            st = canary.config.stages[stage]
            self.say(f"canary stage {st.name}: {st.allocation:.0%} of capital", "stage")
        elif phase == "completed" and run.state.strategy == "PaperTrading":
            self.say(f"canary complete: {GOOD} trades 100% of capital", "stage")
        elif phase == "monitoring":
            self.say(f"cutover: {FAULTY} live, {GOOD} in standby", "cutover")
        elif phase == "rolled_back":
            record = daemon.guard.recent[0] if daemon.guard and daemon.guard.recent else None
            if record is not None and run.state.active not in record.algos:
                # the rollback above (its breach, its numbers): not a second incident
                self.say(f"{dep_id} rolled back: {run.state.active} trades again", "info")
            else:
                self.say(f"{dep_id} rolled back: {run.state.outcome}", "rollback")
        elif phase == "completed":
            self.say(f"{dep_id} completed", "stage")

    def report_rollback(self, r: RollbackRecord) -> None:
        steps = {s.name: s for s in r.steps}
        parts = []
        for name in ("halt", "cancel", "allocate", "activate", "total"):
            s = steps.get(name)
            if s is None or s.duration_ns is None:
                continue
            target = r.target_ms.get(name)
            verdict = "" if target is None else f" (target < {target:g} ms)"
            parts.append(f"{name} {s.duration_ns / 1e6:.2f} ms{verdict}")
        b = next((b for b in self.breaches if b.algo_id in r.algos), None)
        if b is not None:  # the core's breach, with the numbers it tripped on
            what = b.kind.replace("_", " ")
            self.say(f"BREACH {b.algo_id}: {what} {b.value:.4g} above {b.threshold:g}", "breach")
        else:
            self.say(f"BREACH {r.reason}", "breach")
        self.say(f"ROLLBACK {r.state}: " + ", ".join(parts), "rollback")

    def summary(self, daemon: Daemon, rollback: RollbackRecord | None) -> list[tuple[str, str]]:
        out = [
            ("event time", f"{fmt_ts(START_NS)} to {fmt_ts(self.now)}"),
            ("quotes published", f"{self.published:,}"),
            ("events ingested", f"{daemon.stats.ingested:,}"),
        ]
        for algo in daemon.engine.algorithms():
            s = daemon.engine.snapshot(algo)
            sharpe = sharpe_text(s.sharpe, s.returns_count, self.periods_per_year)
            out.append(
                (
                    algo,
                    f"equity {s.equity:,.2f}, max DD {s.max_drawdown:.2%}, Sharpe {sharpe}, "
                    f"{s.trades} trades, breached: {', '.join(s.breached) or 'none'}",
                )
            )
        if rollback is not None:
            # the breach that caused it is in the story (the core's numbers, at the moment it
            # tripped); the record's own reason may cite a later evaluation of the same limit
            total = next((s for s in rollback.steps if s.name == "total"), None)
            took = (
                ""
                if total is None or total.duration_ns is None
                else (f", {total.duration_ns / 1e6:.2f} ms in all")
            )
            out.append(("rollback", f"{rollback.state} ({rollback.trigger}){took}"))
        return out


def _duration(ns: int) -> str:
    """An event-time span in whole days and hours: ``7 days``, ``8 days 12 h``, ``1 day``."""
    days, hours = divmod(round(ns / (3600 * SEC)), 24)
    text = f"{days} day{'' if days == 1 else 's'}"
    return f"{text} {hours} h" if hours else text


def _steps(r: RollbackRecord | None) -> list[tuple[str, float, float]]:
    if r is None:
        return []
    out = []
    for s in r.steps:
        target = r.target_ms.get(s.name)
        if s.duration_ns is not None and target is not None:
            out.append((s.name, s.duration_ns / 1e6, target))
    return out


def run_demo(view: LiveView, *, seed: int, data: Path | None, report: Path) -> DemoResult:
    import uvloop

    return uvloop.run(Demo(view, seed=seed, data=data, report=report).run())


__all__ = ["Demo", "DemoResult", "demo_config", "run_demo"]
