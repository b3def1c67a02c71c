"""The daemon end to end against a real nats-server started per test on a free loopback port."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import nats
import pytest
import uvloop
from nats.aio.client import Client
from nats.aio.msg import Msg
from support import until

from rampart.config import DaemonConfig, parse_config
from rampart.daemon import Daemon
from rampart.embedded import EmbeddedNatsServer
from rampart.protocol import (
    Fill,
    Health,
    Heartbeat,
    OrderEvent,
    Quote,
    StatusReply,
    Subjects,
    dead_letter_decoder,
    encoder,
)

T0 = 1_764_028_800_000_000_000
SEC = 1_000_000_000
SUBJ = Subjects("rampart")

CONFIG = """
name = "rampart-test"
data_dir = "{data_dir}"
heartbeat_interval = "PT0.1S"

[nats]
ping_interval = "PT0.2S"
max_outstanding_pings = 2
reconnect_time_wait = "PT0.05S"

[ingest]
max_payload_bytes = 2048

[[algorithms]]
id = "mom-v1"
version = "1.0.0"
gateway = "gw1"
capital = 100000
limits = {{ max_drawdown = 0.05, max_daily_loss = 0.02 }}

[[algorithms]]
id = "mom-v2"
version = "2.0.0"
gateway = "gw1"
capital = 50000
"""


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[..., object]:
    """Run a coroutine on asyncio and on uvloop: the daemon must behave the same on both."""
    if request.param == "uvloop":
        return uvloop.run
    return asyncio.run


def make_config(tmp_path: Path) -> DaemonConfig:
    return parse_config(CONFIG.format(data_dir=tmp_path / "data").encode())


@asynccontextmanager
async def running_daemon(config: DaemonConfig, url: str) -> AsyncIterator[Daemon]:
    daemon = Daemon(config, servers=[url])
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.close()


async def publish(nc: Client, subject: str, msg: msgspec.Struct | bytes) -> None:
    await nc.publish(subject, msg if isinstance(msg, bytes) else encoder.encode(msg))


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


def fill(algo: str, side: str, qty: float, price: float, ts: int, fee: float = 0.0) -> Fill:
    return Fill(algo=algo, symbol="ESZ5", side=side, qty=qty, price=price, fee=fee, ts=ts)  # type: ignore[arg-type]


def quote(px: float, ts: int) -> Quote:
    return Quote(symbol="ESZ5", bid=px - 0.125, ask=px + 0.125, ts=ts)


def test_fills_and_quotes_show_up_in_status(
    run: Callable[..., object], server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_daemon(make_config(tmp_path), server.url) as daemon:
            nc = await nats.connect(server.url)
            fills = SUBJ.fills("gw1", "mom-v1")
            await publish(nc, fills, fill("mom-v1", "buy", 10, 6000.0, T0, fee=2.0))
            await publish(nc, SUBJ.market("ESZ5"), quote(6010.0, T0 + SEC))
            await publish(nc, fills, fill("mom-v1", "sell", 10, 6020.0, T0 + 2 * SEC, fee=2.0))
            await publish(nc, fills, fill("mom-v1", "buy", 5, 6020.0, T0 + 3 * SEC))
            await publish(nc, SUBJ.market("ESZ5"), quote(5990.0, T0 + 4 * SEC))
            order = OrderEvent(algo="mom-v1", event="acked", latency_ns=800_000, ts=T0 + 5 * SEC)
            await publish(nc, SUBJ.orders("gw1", "mom-v1"), order)
            hb = Heartbeat(
                gateway="gw1",
                ts=T0,
                health=Health(market_data=True, order_routing=True, risk_engine=True),
                algos=["mom-v1"],
            )
            await publish(nc, SUBJ.heartbeat("gw1"), hb)
            await nc.flush()
            await until(lambda: daemon.stats.ingested == 6 and daemon.stats.heartbeats == 1)

            code, out, err = await rampart_cli("status", "--servers", server.url, "--json")
            assert code == 0, err
            reply = msgspec.json.decode(out.encode(), type=StatusReply)
            algos = {a.algo_id: a for a in reply.algorithms}
            a = algos["mom-v1"]
            # round trip: +20 x 10 = 200 realized, 4 fees; open 5 @ 6020 marked at 5990: -150
            assert a.realized_pnl == pytest.approx(200.0)
            assert a.fees == pytest.approx(4.0)
            assert a.unrealized_pnl == pytest.approx(-150.0)
            assert a.equity == pytest.approx(100_000 + 200 - 4 - 150)
            assert a.peak_equity == pytest.approx(100_000 + 200 - 4)
            assert a.drawdown == pytest.approx(150 / (100_000 + 196))
            assert (a.trades, a.wins) == (1, 1)
            assert a.gateway == "gw1"
            assert a.latency_p50_ns is not None and a.latency_p50_ns >= 800_000
            assert algos["mom-v2"].equity == 50_000
            assert reply.daemon.ingest.ingested == 6
            assert [g.gateway for g in reply.daemon.gateways] == ["gw1"]

            code, out, _ = await rampart_cli("status", "mom-v1", "--servers", server.url)
            assert code == 0
            assert "mom-v1" in out and "ESZ5" in out and "mom-v2" not in out
            code, _, err = await rampart_cli("status", "nope", "--servers", server.url)
            assert code == 1 and "unknown algorithm 'nope'" in err
            await nc.close()

    run(scenario())


def test_bad_input_is_counted_and_dead_lettered_while_good_input_flows(
    run: Callable[..., object], server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    md = SUBJ.market("ESZ5")
    bad: list[tuple[str, bytes, str]] = [
        (md, b"{not json", "decode"),
        (md, b'{"type":"quote","symbol":"ESZ5","bid":"6000","ask":6001,"ts":1}', "decode"),
        (md, b'{"type":"quote","symbol":"ESZ5","bid":NaN,"ask":6001,"ts":1}', "decode"),
        (md, b'{"type":"quote","symbol":"ESZ5","bid":1e999,"ask":6001,"ts":1}', "decode"),
        (md, b'{"type":"quote","symbol":"ESZ5","bid":6002,"ask":6001,"ts":%d}' % T0, "bad_price"),
        (
            SUBJ.fills("gw1", "mom-v1"),
            b'{"type":"fill","algo":"mom-v1","symbol":"ESZ5","side":"buy","qty":0,'
            b'"price":1,"ts":%d}' % T0,
            "bad_quantity",
        ),
        (
            SUBJ.fills("gw1", "ghost"),
            encoder.encode(fill("ghost", "buy", 1, 6000.0, T0)),
            "unknown_algorithm",
        ),
        (md, encoder.encode(fill("mom-v1", "buy", 1, 6000.0, T0)), "wrong_subject"),
        (md, encoder.encode(quote(6000.0, T0 - 3600 * SEC)), "out_of_order"),
        (md, b'{"type":"quote","pad":"' + b"x" * 4096 + b'"}', "oversize"),
    ]

    async def scenario() -> None:
        async with running_daemon(make_config(tmp_path), server.url) as daemon:
            nc = await nats.connect(server.url)
            letters: list[Msg] = []
            await nc.subscribe(SUBJ.dead_letter_all, cb=functools.partial(_append, letters))
            await nc.flush()
            good = 0
            for i, (subject, payload, _) in enumerate(bad):
                await publish(nc, md, quote(6000.0 + i, T0 + i))
                good += 1
                await publish(nc, subject, payload)
            await publish(nc, SUBJ.heartbeat("gw1"), b'{"type":"heartbeat"}')
            await nc.flush()
            await until(lambda: len(letters) == len(bad) + 1)
            expected: dict[str, int] = {}
            for _, _, reason in bad:
                expected[reason] = expected.get(reason, 0) + 1
            expected["decode"] += 1  # the heartbeat without fields
            assert daemon.stats.rejected == expected
            assert daemon.stats.ingested == good
            assert daemon.stats.dead_lettered == len(bad) + 1
            reasons = sorted(dead_letter_decoder.decode(m.data).reason for m in letters)
            assert reasons == sorted([r for _, _, r in bad] + ["decode"])
            oversize = next(
                dead_letter_decoder.decode(m.data)
                for m in letters
                if m.subject == SUBJ.dead_letter("oversize")
            )
            assert oversize.payload_size > 4096 and len(oversize.payload) <= 4096
            assert oversize.subject == SUBJ.market("ESZ5")
            # the core never saw the bad ones: its mark is the last good quote
            snap = daemon.engine.snapshot("mom-v1")
            assert snap.fills == 0
            assert daemon.engine.last_quote_ts("ESZ5") == T0 + len(bad) - 1
            await nc.close()

    run(scenario())


async def _append(letters: list[Msg], msg: Msg) -> None:
    letters.append(msg)


def test_daemon_survives_a_nats_server_restart(
    run: Callable[..., object], server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_daemon(make_config(tmp_path), server.url) as daemon:
            states: list[str] = []
            daemon.connectivity_listeners.append(lambda e: states.append(e.state))
            nc = await nats.connect(server.url, reconnect_time_wait=0.05, max_reconnect_attempts=-1)
            fills = SUBJ.fills("gw1", "mom-v1")
            await publish(nc, fills, fill("mom-v1", "buy", 1, 6000.0, T0))
            await nc.flush()
            await until(lambda: daemon.stats.ingested == 1)

            port = server.port
            await asyncio.to_thread(server.stop)
            await until(lambda: "disconnected" in states)
            server.port = port
            await asyncio.to_thread(server.start)
            await until(lambda: "reconnected" in states and nc.is_connected, timeout=20)
            assert daemon.nc is not None and daemon.nc.is_connected

            await publish(nc, fills, fill("mom-v1", "buy", 1, 6001.0, T0 + SEC))
            await nc.flush()
            await until(lambda: daemon.stats.ingested == 2)
            assert daemon.engine.snapshot("mom-v1").positions[0].qty == 2
            assert [e.state for e in daemon.daemon_status().connectivity] == [
                "disconnected",
                "reconnected",
            ]
            await nc.close()

    run(scenario())


def test_a_dead_link_is_noticed_in_seconds_and_nothing_is_buffered(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """A hung server (SIGSTOP: the TCP connection stays up, nothing answers) is detected by the
    client's pings within ping_interval x (max_outstanding_pings + 1) = 0.6 s here; while the
    link is down, publishing fails instead of queueing for a later replay."""

    async def scenario() -> None:
        async with running_daemon(make_config(tmp_path), server.url) as daemon:
            events: list[tuple[str, int]] = []
            daemon.connectivity_listeners.append(lambda e: events.append((e.state, e.ts)))
            server.freeze()
            try:
                # nats-py's defaults (2 min pings) would take minutes; ours take 0.6 s. The
                # wait is bounded far above that only so a loaded machine cannot flake it.
                await until(lambda: any(s == "disconnected" for s, _ in events), timeout=10)
                assert daemon.nc is not None
                with pytest.raises(nats.errors.OutboundBufferLimitError):
                    await daemon.nc.publish("rampart.cmd.gw1", b"stale command")
            finally:
                server.thaw()
            await until(lambda: any(s == "reconnected" for s, _ in events), timeout=20)

    asyncio.run(scenario())


def test_nats_micro_discovery_finds_the_status_service(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_daemon(make_config(tmp_path), server.url):
            nc = await nats.connect(server.url)
            ping = json.loads((await nc.request("$SRV.PING.rampart-test", b"", timeout=2)).data)
            assert ping["name"] == "rampart-test"
            info = json.loads((await nc.request("$SRV.INFO.rampart-test", b"", timeout=2)).data)
            subjects = sorted(e["subject"] for e in info["endpoints"])
            verbs = ["abort", "approve", "deploy", "halt", "pause", "promote", "release", "resume"]
            assert subjects == sorted(
                [f"rampart.ctl.{v}" for v in [*verbs, "rollback"]]
                + ["rampart.status.algorithm", "rampart.status.algorithms"]
            )
            await nc.close()

    asyncio.run(scenario())


def test_status_exits_non_zero_when_no_daemon_answers(server: EmbeddedNatsServer) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rampart", "status", "--servers", server.url, "--timeout", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "no Rampart daemon answered" in proc.stderr


def test_run_embedded_then_sigterm_exits_cleanly(tmp_path: Path) -> None:
    cfg = tmp_path / "rampart.toml"
    cfg.write_text(CONFIG.format(data_dir=tmp_path / "data"))
    url_file = tmp_path / "data" / "nats.url"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rampart", "run", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not url_file.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the daemon never started its embedded server"
            time.sleep(0.02)
        status = subprocess.run(
            [sys.executable, "-m", "rampart", "status", "--config", str(cfg), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        assert {a["algo_id"] for a in json.loads(status.stdout)["algorithms"]} == {
            "mom-v1",
            "mom-v2",
        }
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "rampart stopped" in err
    assert not url_file.exists(), "the embedded server's URL file is removed on exit"
    # the embedded nats-server is gone with it
    pgrep = subprocess.run(["pgrep", "-f", str(tmp_path / "data")], capture_output=True)
    assert pgrep.returncode == 1, pgrep.stdout


def test_run_refuses_an_invalid_config_naming_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[algorithms]]\nid = "a"\nversion = "1"\ngateway = "g"\ncapital = "lots"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "rampart", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RAMPART_CONFIG": ""},
    )
    assert proc.returncode == 2
    assert "$.algorithms[0].capital" in proc.stderr
