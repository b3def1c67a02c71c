"""A scripted market scenario that exercises the risk core end to end, without NATS.

Two versions of a momentum algorithm trade the same synthetic market in event time: v1 trades
sensibly; v2 carries a sign bug (it buys into falls and sells into rallies) and a position-sizing
bug. The core marks both, checks their limits on every event, and reports each breach the moment
it trips. Deterministic for a given seed; runs in milliseconds of wall time.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from rampart._core import AlgoConfig, Breach, Engine, Snapshot

MINUTE_NS = 60_000_000_000
HOUR_NS = 60 * MINUTE_NS
START_NS = 1_764_028_800_000_000_000  # 2025-11-25 00:00 UTC
SYMBOL = "ESZ5"


@dataclass(frozen=True)
class Regime:
    name: str
    minutes: int
    drift_bps: float
    vol_bps: float


REGIMES = (
    Regime("calm uptrend", 240, 0.6, 3.0),
    Regime("choppy", 180, 0.0, 6.0),
    Regime("selloff", 120, -2.5, 9.0),
    Regime("recovery", 240, 1.2, 5.0),
)


@dataclass
class MomentumAlgo:
    """Goes long after an up-move, short after a down-move.

    The faulty build has `sign=-1` (it fades every move) and a 20x position-sizing bug.
    """

    algo_id: str
    sign: int
    reject_rate: float
    lot: float = 2.0
    lookback: int = 5
    prices: list[float] = field(default_factory=list)
    position: float = 0.0

    def target(self, price: float) -> float:
        self.prices.append(price)
        if len(self.prices) <= self.lookback:
            return 0.0
        move = price - self.prices[-1 - self.lookback]
        if abs(move) < 0.5:
            return self.position
        return self.lot * self.sign * (1.0 if move > 0 else -1.0)


@dataclass
class ScenarioResult:
    breaches: list[Breach]
    snapshots: list[Snapshot]
    events: int
    regimes: list[tuple[str, int]]


def market(seed: int) -> Iterator[tuple[int, float, float, str]]:
    """Minute quotes (ts, bid, ask, regime) walking through the regimes."""
    rng = random.Random(seed)
    mid = 6000.0
    ts = START_NS
    for regime in REGIMES:
        for _ in range(regime.minutes):
            ret = (regime.drift_bps + regime.vol_bps * rng.gauss(0.0, 1.0)) / 10_000
            mid *= 1.0 + ret
            half_spread = 0.125
            yield ts, round(mid - half_spread, 2), round(mid + half_spread, 2), regime.name
            ts += MINUTE_NS


def algo_config(algo_id: str, version: str) -> AlgoConfig:
    """The seed's canary thresholds (2% daily loss, 5% drawdown) plus order-health limits."""
    return AlgoConfig(
        algo_id,
        version,
        100_000.0,
        max_daily_loss=0.02,
        max_drawdown=0.05,
        max_error_rate=0.10,
        max_latency_ns=5_000_000,
        error_window_ns=30 * MINUTE_NS,
        error_min_orders=10,
        latency_window_ns=30 * MINUTE_NS,
        return_interval_ns=15 * MINUTE_NS,
        sharpe_window=96,
    )


def run_scenario(seed: int = 7) -> ScenarioResult:
    engine = Engine()
    engine.register(algo_config("momentum-v1", "v1.0.0"))
    engine.register(algo_config("momentum-v2", "v2.0.0"))
    algos = [
        MomentumAlgo("momentum-v1", sign=+1, reject_rate=0.02),
        MomentumAlgo("momentum-v2", sign=-1, reject_rate=0.04, lot=40.0),
    ]
    rng = random.Random(seed + 1)
    breaches: list[Breach] = []
    halted: set[str] = set()
    events = 0
    regimes: list[tuple[str, int]] = []
    for ts, bid, ask, regime in market(seed):
        if not regimes or regimes[-1][0] != regime:
            regimes.append((regime, ts))
        tripped = engine.quote(SYMBOL, bid, ask, ts)
        events += 1
        if tripped:
            breaches.extend(tripped)
            halted.update(b.algo_id for b in tripped)
        mid = (bid + ask) / 2
        for algo in algos:
            if algo.algo_id in halted:
                continue
            want = algo.target(mid)
            delta = want - algo.position
            if delta == 0:
                continue
            t = ts + 1_000_000
            found = engine.order_submitted(algo.algo_id, t) or []
            events += 1
            if rng.random() < algo.reject_rate:
                found += engine.order_rejected(algo.algo_id, t + 200_000) or []
                events += 1
            else:
                latency = int(rng.lognormvariate(13.0, 0.4))  # ~0.5 ms
                found += engine.order_acked(algo.algo_id, latency, t + latency) or []
                price = ask if delta > 0 else bid
                fee = abs(delta) * price * 0.00002
                found += engine.fill(algo.algo_id, SYMBOL, delta, price, fee, t + latency) or []
                events += 2
                algo.position = want
            if found:
                breaches.extend(found)
                halted.update(b.algo_id for b in found)
    return ScenarioResult(breaches, engine.snapshots(), events, regimes)
