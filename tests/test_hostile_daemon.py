"""Hostile and absurd input at the daemon (issue 11): heartbeats only from configured gateways,
status that never fails and always fits in one NATS message, checkpoints that one broken
algorithm cannot stop. Against a real nats-server started per test."""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from support import rampart_keys, until

import rampart.checkpoints
import rampart.store
from rampart._core import ConfigError, Engine, RampartError, Snapshot
from rampart.checkpoints import CHECKPOINT_KEY
from rampart.config import DaemonConfig, parse_config
from rampart.daemon import Daemon
from rampart.deployment import decode_deployment
from rampart.embedded import EmbeddedNatsServer
from rampart.gateway.reference import HostedAlgo, Momentum, ReferenceGateway
from rampart.paging import YIELD_EVERY, build_page, build_page_async, fit_daemon
from rampart.protocol import (
    AlgoStatus,
    DaemonStatus,
    Fill,
    Health,
    Heartbeat,
    IngestStats,
    StatusReply,
    Subjects,
    alert_decoder,
    dead_letter_decoder,
    encode_explicit,
    encoder,
    status_reply_decoder,
)
from rampart.store import HaltLatch, RollbackRecord

SUBJ = Subjects()
HEALTHY = Health(market_data=True, order_routing=True, risk_engine=True)

HEAD = """
name = "rampart-hostile"
data_dir = "{data_dir}"
heartbeat_interval = "PT0.1S"
checkpoint_interval = "PT0.05S"

[ingest]
max_payload_bytes = 2048
max_heartbeat_bytes = 2048

[triggers]
check_interval = "PT0.02S"
gateway_heartbeat_timeout = "PT1H"
market_data_timeout = "PT1H"
"""

ALGO = """
[[algorithms]]
id = "{id}"
version = "1.0.0"
gateway = "{gateway}"
capital = 100000
"""


def make_config(tmp_path: Path, algos: Iterable[tuple[str, str]]) -> DaemonConfig:
    text = HEAD.format(data_dir=tmp_path / "data") + "".join(
        ALGO.format(id=a, gateway=g) for a, g in algos
    )
    return parse_config(text.encode())


TWO_GATEWAYS = [("alpha", "gw1"), ("beta", "gw1"), ("gamma", "gw2")]


@asynccontextmanager
async def running(
    config: DaemonConfig, url: str, engine: Any = None
) -> AsyncIterator[tuple[Daemon, Client]]:
    """A started daemon (``engine``: a wrapper installed before start) and a client."""
    if engine is not None:
        # a wrapper is seen only by the Python ingest path: the wire path (the default) applies
        # market data in Rust, to the real engine
        ingest = msgspec.structs.replace(config.ingest, wire="nats-py")
        config = msgspec.structs.replace(config, ingest=ingest)
    daemon = Daemon(config, servers=[url])
    if engine is not None:
        daemon.engine = engine(daemon.engine)
    await daemon.start()
    nc = await nats.connect(url)
    try:
        yield daemon, nc
    finally:
        await nc.close()
        await daemon.close()


@asynccontextmanager
async def gateway(
    url: str, name: str, algos: list[str], keys: list[str]
) -> AsyncIterator[ReferenceGateway]:
    """A reference gateway that acks the daemon's commands (rollbacks complete at once)."""
    nc = await nats.connect(url)
    gw = ReferenceGateway(
        nc,
        name,
        [HostedAlgo(a, "ESZ5", Momentum(lot=1), allocation=1.0, active=True) for a in algos],
        heartbeat_interval=0.05,
        deadman_timeout=3600,
        trusted_keys=keys,
    )
    await gw.start()
    try:
        yield gw
    finally:
        await gw.close()
        await nc.close()


async def collect(nc: Client, subject: str) -> list[Msg]:
    got: list[Msg] = []

    async def cb(msg: Msg) -> None:
        got.append(msg)

    await nc.subscribe(subject, cb=cb)
    await nc.flush()
    return got


def heartbeat(gw: str, algos: list[str] | None = None) -> bytes:
    return encoder.encode(
        Heartbeat(gateway=gw, ts=time.time_ns(), health=HEALTHY, algos=algos or [])
    )


def reasons(letters: list[Msg]) -> list[str]:
    return [dead_letter_decoder.decode(m.data).reason for m in letters]


async def status_page(nc: Client, body: bytes = b"") -> tuple[Msg, StatusReply]:
    msg = await nc.request(SUBJ.status("algorithms"), body, timeout=10)
    return msg, status_reply_decoder.decode(msg.data)


async def rampart_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rampart",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# ---- heartbeats --------------------------------------------------------------------------------


def test_heartbeat_from_an_unknown_gateway_is_refused_and_not_listed(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running(make_config(tmp_path, TWO_GATEWAYS), server.url) as (daemon, nc):
            letters = await collect(nc, SUBJ.dead_letter_all)
            await nc.publish(SUBJ.heartbeat("gw9"), heartbeat("gw9", ["alpha"]))
            await nc.publish(SUBJ.heartbeat("gw1"), heartbeat("gw1", ["alpha"]))
            await nc.flush()
            await until(lambda: daemon.stats.heartbeats == 1 and len(letters) == 1)
            assert reasons(letters) == ["unknown_gateway"]
            letter = dead_letter_decoder.decode(letters[0].data)
            assert letter.subject == SUBJ.heartbeat("gw9") and "'gw9'" in letter.error
            assert daemon.stats.rejected == {"unknown_gateway": 1}
            assert set(daemon.gateways) == {"gw1"}
            _, reply = await status_page(nc)
            assert [g.gateway for g in reply.daemon.gateways] == ["gw1"]

    asyncio.run(scenario())


def test_heartbeat_whose_subject_and_body_name_different_gateways_is_refused(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """Both gateways are configured: gw1 speaking for gw2 (or the other way) is still refused."""

    async def scenario() -> None:
        async with running(make_config(tmp_path, TWO_GATEWAYS), server.url) as (daemon, nc):
            letters = await collect(nc, SUBJ.dead_letter_all)
            await nc.publish(SUBJ.heartbeat("gw1"), heartbeat("gw2"))
            await nc.publish(SUBJ.heartbeat("gw2"), heartbeat("gw1"))
            await nc.flush()
            await until(lambda: len(letters) == 2)
            assert reasons(letters) == ["wrong_gateway", "wrong_gateway"]
            assert daemon.gateways == {} and daemon.stats.heartbeats == 0
            await nc.publish(SUBJ.heartbeat("gw2"), heartbeat("gw2"))
            await nc.flush()
            await until(lambda: daemon.stats.heartbeats == 1)
            assert set(daemon.gateways) == {"gw2"}

    asyncio.run(scenario())


def test_oversize_heartbeat_is_refused_before_decoding(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running(make_config(tmp_path, TWO_GATEWAYS), server.url) as (daemon, nc):
            letters = await collect(nc, SUBJ.dead_letter_all)
            valid_but_big = heartbeat("gw1", [f"algo-{i}" for i in range(400)])
            assert len(valid_but_big) > 2048
            await nc.publish(SUBJ.heartbeat("gw1"), valid_but_big)
            await nc.publish(SUBJ.heartbeat("gw1"), b"{" + b" " * 4096)  # not JSON either
            await nc.flush()
            await until(lambda: len(letters) == 2)
            assert reasons(letters) == ["oversize", "oversize"]
            assert daemon.stats.rejected == {"oversize": 2}
            assert daemon.gateways == {} and daemon.stats.heartbeats == 0
            letter = dead_letter_decoder.decode(letters[0].data)
            assert letter.payload_size == len(valid_but_big)

    asyncio.run(scenario())


def test_6000_forged_gateway_ids_leave_status_working_and_listing_only_configured_gateways(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running(make_config(tmp_path, TWO_GATEWAYS), server.url) as (daemon, nc):
            for i in range(6000):
                forged = f"forged-{i:05d}-{'x' * 40}"
                await nc.publish(SUBJ.heartbeat(forged), heartbeat(forged))
            await nc.publish(SUBJ.heartbeat("gw1"), heartbeat("gw1"))
            await nc.flush()
            await until(
                lambda: (
                    daemon.stats.rejected.get("unknown_gateway") == 6000
                    and daemon.stats.heartbeats == 1
                )
            )
            assert set(daemon.gateways) == {"gw1"}
            msg, reply = await status_page(nc)
            assert len(msg.data) <= nc.max_payload
            assert [g.gateway for g in reply.daemon.gateways] == ["gw1"]
            assert {a.algo_id for a in reply.algorithms} == {"alpha", "beta", "gamma"}
            assert reply.daemon.ingest.rejected["unknown_gateway"] == 6000

    asyncio.run(scenario())


# ---- status: bounded, paged ----------------------------------------------------------------------


def test_status_of_3000_algorithms_is_paged_under_max_payload_and_the_cli_returns_all(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """3,000 algorithms with long ids, every one halted, 20 rollbacks of all of them: each reply
    fits in one NATS message; `status --json` and `status` still show every algorithm."""
    ids = [f"strategy-{'x' * 100}-{i:04d}.v1.0.0" for i in range(3000)]
    config = make_config(tmp_path, [(a, f"gw{i % 30}") for i, a in enumerate(ids)])

    async def scenario() -> None:
        async with running(config, server.url) as (daemon, nc):
            guard = daemon.guard
            assert guard is not None
            now = time.time_ns()
            guard.halted = {
                a: HaltLatch(algo=a, reason="r" * 200, actor="test", ts=now) for a in ids
            }
            guard.recent = [
                RollbackRecord(
                    rollback_id=f"rb-{k}",
                    algos=list(ids),
                    scope="all",
                    trigger="manual",
                    reason="test",
                    actor="test",
                    started_at=now,
                )
                for k in range(20)
            ]
            order = daemon.engine.algorithms()

            msg, first = await status_page(nc)
            assert len(msg.data) <= nc.max_payload
            assert first.total == 3000 and first.offset == 0
            assert 0 < len(first.algorithms) < 3000
            assert first.next_offset == len(first.algorithms)
            assert [a.algo_id for a in first.algorithms] == order[: len(first.algorithms)]
            assert all(a.halted for a in first.algorithms)
            d = first.daemon
            assert len(d.halted) + d.omitted["halted"] == 3000
            assert len(d.rollbacks) + d.omitted["rollbacks"] == 20

            msg, page = await status_page(nc, b'{"offset": 10, "limit": 5}')
            assert [a.algo_id for a in page.algorithms] == order[10:15]
            assert page.next_offset == 15 and page.total == 3000
            msg, last = await status_page(nc, b'{"offset": 2999}')
            assert [a.algo_id for a in last.algorithms] == order[2999:]
            assert last.next_offset is None

            bad = await nc.request(SUBJ.status("algorithms"), b'{"offset": -1}', timeout=10)
            assert bad.headers is not None and bad.headers["Nats-Service-Error-Code"] == "400"
            assert "offset" in json.loads(bad.data)["error"]

            code, out, err = await rampart_cli("status", "--servers", server.url, "--json")
            assert code == 0, err
            reply = status_reply_decoder.decode(out)
            assert [a.algo_id for a in reply.algorithms] == order
            assert reply.total == 3000 and reply.next_offset is None
            assert all(a.halted for a in reply.algorithms)

            code, out, err = await rampart_cli("status", "--servers", server.url)
            assert code == 0, err
            assert sum(a in out for a in ids) == 3000
            assert "more halted not listed" in out

    asyncio.run(scenario())


def test_one_algorithm_with_huge_positions_is_trimmed_to_fit_one_message() -> None:
    positions = [
        {
            "symbol": f"SYM{i:05d}",
            "qty": 0.0 if i % 2 else 1.0,
            "avg_cost": 1.0,
            "mark": 1.0,
            "unrealized_pnl": 0.0,
            "realized_pnl": 0.0,
        }
        for i in range(20_000)
    ]
    algo = msgspec.convert(_algo_dict("wide", positions=positions), AlgoStatus)
    daemon = _daemon_status()
    data = build_page(daemon, ["wide"], lambda _: algo, {}, max_bytes=256 * 1024)
    assert len(data) <= 256 * 1024
    reply = status_reply_decoder.decode(data)
    (got,) = reply.algorithms
    assert 0 < len(got.positions) < 20_000
    assert got.positions_omitted == 20_000 - len(got.positions)
    assert all(p.qty != 0 for p in got.positions), "open positions are kept first"


def test_a_status_page_is_built_letting_the_event_loop_run() -> None:
    """The status service builds a page a few algorithms at a time (``build_page_async``): the
    same bytes as in one go, and the loop runs meanwhile (a halt is never held up by a whole
    page), about once per ``YIELD_EVERY`` algorithms."""
    ids = [f"algo-{i:04d}" for i in range(200)]
    algos = {a: msgspec.convert(_algo_dict(a), AlgoStatus) for a in ids}
    daemon = _daemon_status()

    async def scenario() -> tuple[bytes, int]:
        ticks = 0

        async def other_work() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(other_work())
        await asyncio.sleep(0)
        ticks = 0
        data = await build_page_async(
            daemon, ids, algos.__getitem__, {}, max_bytes=1024 * 1024, every=YIELD_EVERY
        )
        seen = ticks
        task.cancel()
        return data, seen

    data, ticks = asyncio.run(scenario())
    assert data == build_page(daemon, ids, algos.__getitem__, {}, max_bytes=1024 * 1024)
    assert len(status_reply_decoder.decode(data).algorithms) == 200
    assert ticks >= 200 // YIELD_EVERY


def test_status_lists_of_the_daemon_are_bounded_and_counted() -> None:
    halted = [HaltLatch(algo=f"a{i}", reason="x" * 500, actor="t", ts=i) for i in range(5000)]
    status = msgspec.structs.replace(_daemon_status(), halted=halted)
    fitted = fit_daemon(status, 16 * 1024)
    assert len(encode_explicit(fitted)) <= 16 * 1024
    assert len(fitted.halted) + fitted.omitted["halted"] == 5000


# ---- non-finite and unreadable metrics ----------------------------------------------------------


class _NonFinite:
    """A snapshot whose money and drawdown are not finite (the core refuses to get there since
    issue 11; the daemon must show it if it ever does, not fail)."""

    PATCH: ClassVar[dict[str, float]] = {
        "equity": math.inf,
        "peak_equity": math.inf,
        "unrealized_pnl": -math.inf,
        "drawdown": math.nan,
    }

    def __init__(self, real: Snapshot) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return self.PATCH.get(name, getattr(self._real, name))

    def to_dict(self) -> dict[str, object]:
        return {**self._real.to_dict(), **self.PATCH}


class FaultyEngine:
    """The real engine, except for named algorithms: their snapshot holds non-finite numbers
    or raises, or their checkpoint raises."""

    def __init__(
        self,
        real: Engine,
        *,
        non_finite: Iterable[str] = (),
        snapshot_fails: Iterable[str] = (),
        checkpoint_fails: Iterable[str] = (),
    ) -> None:
        self.real = real
        self.non_finite = set(non_finite)
        self.snapshot_fails = set(snapshot_fails)
        self.checkpoint_fails = set(checkpoint_fails)
        self.checkpoint_calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def __contains__(self, algo: str) -> bool:
        return algo in self.real

    def __len__(self) -> int:
        return len(self.real)

    def snapshot(self, algo: str) -> Any:
        if algo in self.snapshot_fails:
            raise RampartError(f"{algo}: equity is not finite")
        snap = self.real.snapshot(algo)
        return _NonFinite(snap) if algo in self.non_finite else snap

    def checkpoint(self, algo: str) -> bytes:
        self.checkpoint_calls[algo] = self.checkpoint_calls.get(algo, 0) + 1
        if algo in self.checkpoint_fails:
            raise ConfigError(f"{algo}: the state holds a non-finite number")
        return self.real.checkpoint(algo)


def fill(algo: str, qty: float, price: float) -> bytes:
    return encoder.encode(
        Fill(algo=algo, symbol="ESZ5", side="buy", qty=qty, price=price, ts=time.time_ns())
    )


def test_non_finite_or_unreadable_metrics_of_one_algorithm_do_not_break_status(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    algos = [("alpha", "gw1"), ("beta", "gw1"), ("gamma", "gw1")]

    def engine(real: Engine) -> FaultyEngine:
        return FaultyEngine(real, non_finite=["beta"], snapshot_fails=["gamma"])

    async def scenario() -> None:
        config = make_config(tmp_path, algos)
        async with (
            running(config, server.url, engine) as (daemon, nc),
            gateway(server.url, "gw1", [a for a, _ in algos], rampart_keys(config.data_dir)),
        ):
            await nc.publish(SUBJ.fills("gw1", "alpha"), fill("alpha", 2, 100.0))
            await nc.flush()
            await until(lambda: daemon.stats.ingested == 1 and "gw1" in daemon.gateways)

            code, out, err = await rampart_cli("status", "--servers", server.url, "--json")
            assert code == 0, err
            raw = json.loads(out)
            by_id = {a["algo_id"]: a for a in raw["algorithms"]}
            assert set(by_id) == {"alpha", "beta"}
            assert by_id["beta"]["equity"] == "inf"
            assert by_id["beta"]["unrealized_pnl"] == "-inf"
            assert by_id["beta"]["drawdown"] == "nan"
            assert by_id["alpha"]["fills"] == 1 and by_id["alpha"]["equity"] == 100_000
            (unavailable,) = raw["unavailable"]
            assert unavailable["algo_id"] == "gamma"
            assert "equity is not finite" in unavailable["error"]
            reply = status_reply_decoder.decode(out)
            beta = next(a for a in reply.algorithms if a.algo_id == "beta")
            assert beta.equity == math.inf and math.isnan(beta.drawdown)

            code, out, err = await rampart_cli("status", "--servers", server.url)
            assert code == 0, err
            assert "UNAVAILABLE gamma" in out
            assert any(line.startswith("beta") and "inf" in line for line in out.splitlines())
            code, out, err = await rampart_cli("status", "beta", "--servers", server.url)
            assert code == 0, err
            code, out, err = await rampart_cli("status", "gamma", "--servers", server.url)
            assert code == 0 and "UNAVAILABLE gamma" in out, err

            # the watchdog cannot watch gamma's limits: it halts it (fail closed) and goes on
            guard = daemon.guard
            assert guard is not None
            await until(lambda: "gamma" in guard.halted and not guard.in_flight)
            assert set(guard.halted) == {"gamma"}
            assert any(t.get_name() == "guard-watchdog" and not t.done() for t in guard._tasks)

    asyncio.run(scenario())


# ---- checkpoints ---------------------------------------------------------------------------------


def test_one_algorithm_whose_checkpoint_fails_does_not_stop_the_others(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    algos = [("alpha", "gw1"), ("beta", "gw1")]
    faulty: list[FaultyEngine] = []

    def engine(real: Engine) -> FaultyEngine:
        faulty.append(FaultyEngine(real, checkpoint_fails=["beta"]))
        return faulty[0]

    async def scenario() -> None:
        config = make_config(tmp_path, algos)
        async with (
            running(config, server.url, engine) as (daemon, nc),
            gateway(server.url, "gw1", ["alpha", "beta"], rampart_keys(config.data_dir)),
        ):
            alerts = await collect(nc, "rampart.alert.>")
            store, guard, eng = daemon.store, daemon.guard, faulty[0]
            assert store is not None and guard is not None
            await nc.publish(SUBJ.fills("gw1", "alpha"), fill("alpha", 1, 100.0))
            await nc.publish(SUBJ.fills("gw1", "beta"), fill("beta", 1, 100.0))
            await nc.flush()
            await until(lambda: daemon.stats.ingested == 2)

            def stored(algo: str) -> bytes | None:
                return store.get(CHECKPOINT_KEY + algo)

            await until(lambda: stored("alpha") == eng.real.checkpoint("alpha"))
            await until(lambda: "beta" in guard.halted and not guard.in_flight)
            assert "checkpoint failed" in guard.halted["beta"].reason
            assert "alpha" not in guard.halted

            # later events of the others are still checkpointed: the loop goes on
            await nc.publish(SUBJ.fills("gw1", "alpha"), fill("alpha", 1, 101.0))
            await nc.flush()
            await until(lambda: daemon.stats.ingested == 3)
            await until(lambda: stored("alpha") == eng.real.checkpoint("alpha"))
            calls = eng.checkpoint_calls["beta"]
            await until(lambda: eng.checkpoint_calls["beta"] >= calls + 5)
            assert stored("beta") is None
            assert any(t.get_name() == "checkpoints" and not t.done() for t in daemon._tasks)

            # one alert and one rollback, not one per interval
            titles = [alert_decoder.decode(m.data).title for m in alerts]
            assert titles.count("checkpoints of beta failing: halted") == 1
            assert [r.trigger for r in guard.recent if "beta" in r.algos] == ["checkpoint"]

    asyncio.run(scenario())


def test_a_checkpoint_that_cannot_be_written_fails_rampart_closed(
    server: EmbeddedNatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the first five rounds of checkpoints fail in the store (each round writes the marks once)
    real_put = rampart.store.Store.put
    calls = [0]

    def flaky_put(store: Any, key: str, value: bytes) -> None:
        if key == rampart.checkpoints.MARKS_KEY:
            calls[0] += 1
            if calls[0] <= 5:
                raise OSError(28, "No space left on device")
        real_put(store, key, value)

    monkeypatch.setattr(rampart.store.Store, "put", flaky_put)

    async def scenario() -> None:
        async with running(make_config(tmp_path, [("alpha", "gw1")]), server.url) as (
            daemon,
            nc,
        ):
            alerts = await collect(nc, "rampart.alert.>")
            await nc.publish(SUBJ.fills("gw1", "alpha"), fill("alpha", 1, 100.0))
            await nc.flush()
            # the first failure halts everything, alerts and shows in status
            await until(lambda: daemon.failed is not None)
            guard = daemon.guard
            assert guard is not None
            await until(lambda: "alpha" in guard.halted)
            assert "No space left" in (daemon.status().daemon.store_error or "")
            await until(lambda: any(b"failed closed" in m.data for m in alerts))
            failed = [alert_decoder.decode(m.data) for m in alerts if b"failed closed" in m.data]
            assert failed[0].severity == "emergency" and "No space left" in failed[0].detail
            # the loop itself goes on: checkpoints are written again once the store is back,
            # alpha's too (its only change was in a round that failed: written with the next)
            await until(lambda: daemon.checkpoint_at is not None)
            assert daemon.store is not None
            assert daemon.store.get(CHECKPOINT_KEY + "alpha") is not None
            # and nothing is decided meanwhile: a deploy is refused with the reason
            with pytest.raises(RuntimeError, match="failed closed"):
                await daemon.deploy(decode_deployment(json.dumps(CANARY_DOC)), "alice")

    asyncio.run(scenario())


CANARY_DOC = {
    "deploymentId": "canary-fc",
    "strategy": "Canary",
    "algorithmId": "alpha",
    "environment": "Production",
    "configuration": {
        "totalCapital": 100000,
        "stages": [{"name": "Full", "allocation": 1.0, "minDuration": "PT1H", "minPnL": 0}],
        "autoProgress": True,
        "rollbackThresholds": {"maxDailyLoss": 0.5, "maxDrawdown": 0.5},
    },
}


# ---- helpers for the pure paging tests -----------------------------------------------------------


def _algo_dict(algo_id: str, **extra: object) -> dict[str, object]:
    fields: dict[str, object] = dict.fromkeys(AlgoStatus.__struct_fields__, 0)
    fields.update(
        algo_id=algo_id,
        version="1",
        ts=None,
        sharpe=None,
        win_rate=None,
        error_rate=None,
        latency_p50_ns=None,
        latency_p99_ns=None,
        last_fill_ts=None,
        last_order_ts=None,
        last_event_ts=None,
        breached=[],
        positions=[],
        gateway="gw1",
        halted=False,
        control=None,
        position_check=None,
    )
    fields.update(extra)
    return fields


def _daemon_status() -> DaemonStatus:
    return DaemonStatus(
        name="t",
        version="0",
        started_at=0,
        connected=True,
        server=None,
        now=None,
        ingest=IngestStats(),
        gateways=[],
        connectivity=[],
    )
