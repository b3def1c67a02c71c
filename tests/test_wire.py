"""The market-data wire path (``[ingest] wire = "rust"``, rampart.wire, docs/protocol.md "The wire
path"): the same market data, refusals and dead letters as through nats-py, against a real
nats-server; a breach on it halts the gateway; it logs in with NKEYs on the secure embedded
server, reconnects after a server restart and notices a hung one; against a server that sends
garbage, refuses a login or calls it a slow consumer, it closes, counts and reconnects."""

from __future__ import annotations

import asyncio
import base64
import datetime
import functools
import json
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import nats
import nkeys  # type: ignore[import-untyped]
import pytest
import trustme
import uvloop
from nats.aio.msg import Msg
from support import live_config, rampart_keys, until

import rampart.daemon
from rampart._core import Engine, WireResult
from rampart.config import DaemonConfig, NatsConfig, TlsConfig, parse_config
from rampart.daemon import Daemon
from rampart.embedded import EmbeddedNatsServer
from rampart.gateway.reference import HostedAlgo, Momentum, ReferenceGateway
from rampart.protocol import (
    Command,
    CommandTarget,
    Fill,
    Quote,
    Subjects,
    WireStatus,
    dead_letter_decoder,
    encoder,
)
from rampart.signing import SigningKey
from rampart.status import format_wire
from rampart.wire import WireError, WireSubscription, connect_fields, parse_headers

T0 = 1_764_028_800_000_000_000
SEC = 1_000_000_000
SUBJ = Subjects()
MD = SUBJ.market("ES")


def config(tmp_path: Path, wire: str) -> DaemonConfig:
    text = live_config([("alpha", "gw1")]).format(data_dir=tmp_path / "data")
    limits = "capital = 100000\nlimits = { max_drawdown = 0.05 }\n"
    text = text.replace("capital = 100000\n", limits)
    text += f'\n[ingest]\nmax_payload_bytes = 2048\nwire = "{wire}"\n'
    text += '\n[nats]\nping_interval = "PT0.2S"\nmax_outstanding_pings = 2\n'
    text += 'reconnect_time_wait = "PT0.05S"\n'
    return parse_config(text.encode())


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[..., object]:
    """Run a coroutine on asyncio and on uvloop (``rampart run``'s loop): the wire path's
    transport must work on both."""
    return uvloop.run if request.param == "uvloop" else asyncio.run


@asynccontextmanager
async def running(cfg: DaemonConfig, url: str | None) -> AsyncIterator[Daemon]:
    daemon = Daemon(cfg, servers=[url] if url else None)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.close()


def quote(px: float, ts: int) -> bytes:
    return encoder.encode(Quote(symbol="ES", bid=px - 0.25, ask=px + 0.25, ts=ts))


@pytest.mark.parametrize("wire", ["nats-py", "rust"])
def test_market_data_is_applied_refused_and_dead_lettered_the_same_on_both_paths(
    run: Callable[..., object], server: EmbeddedNatsServer, tmp_path: Path, wire: str
) -> None:
    bad: list[tuple[bytes, str]] = [
        (b"{not json", "decode"),
        (b'{"type":"quote","symbol":"ES","bid":1e999,"ask":6001,"ts":1}', "decode"),
        (b'{"type":"quote","symbol":"ES","bid":6002,"ask":6001,"ts":%d}' % T0, "bad_price"),
        (
            encoder.encode(Fill(algo="alpha", symbol="ES", side="buy", qty=1, price=1, ts=T0)),
            "wrong_subject",
        ),
        (b'{"type":"quote","symbol":"NQ","bid":1,"ask":2,"ts":%d}' % T0, "wrong_subject"),
        (quote(6000.0, T0 - 3600 * SEC), "out_of_order"),
        (b'{"type":"quote","pad":"' + b"x" * 4096 + b'"}', "oversize"),
    ]

    async def scenario() -> None:
        async with running(config(tmp_path, wire), server.url) as daemon:
            nc = await nats.connect(server.url)
            letters: list[Msg] = []

            async def on_letter(msg: Msg) -> None:
                letters.append(msg)

            await nc.subscribe(SUBJ.dead_letter_all, cb=on_letter)
            await nc.flush()
            for i, (payload, _) in enumerate(bad):
                await nc.publish(MD, quote(6000.0 + i, T0 + i))
                await nc.publish(MD, payload)
            await nc.flush()
            await until(lambda: len(letters) == len(bad))
            expected: dict[str, int] = {}
            for _, reason in bad:
                expected[reason] = expected.get(reason, 0) + 1
            assert daemon.stats.rejected == expected
            assert daemon.stats.ingested == len(bad)
            assert daemon.engine.last_quote_ts("ES") == T0 + len(bad) - 1
            oversize = next(
                dead_letter_decoder.decode(m.data)
                for m in letters
                if m.subject == SUBJ.dead_letter("oversize")
            )
            assert oversize.payload_size > 4096 and len(oversize.payload) <= 4096
            assert oversize.subject == MD
            status = daemon.daemon_status()
            if wire == "rust":
                assert status.wire is not None and status.wire.connected
                assert status.wire.bytes > 0 and status.wire.protocol_errors == 0
                line = format_wire(status.wire)
                assert line.startswith("market data (wire path): connected to 127.0.0.1:")
                assert "errors" not in line
            else:
                assert status.wire is None
            await nc.close()

    run(scenario())


@asynccontextmanager
async def alpha_holding_es(daemon: Daemon, url: str, keys_dir: Path) -> AsyncIterator[Any]:
    """A reference gateway hosting alpha, which holds 10 ES bought at 6,000 (a fill Rampart
    has applied); yields (gateway, a client connection)."""
    gw_nc = await nats.connect(url)
    gw = ReferenceGateway(
        gw_nc,
        "gw1",
        [HostedAlgo("alpha", "ES", Momentum(), allocation=1.0, active=True)],
        heartbeat_interval=0.05,
        deadman_timeout=3600,
        trusted_keys=rampart_keys(keys_dir),
    )
    await gw.start()
    nc = await nats.connect(url)
    try:
        await until(lambda: "gw1" in daemon.gateways)
        fill = Fill(algo="alpha", symbol="ES", side="buy", qty=10, price=6000, ts=T0)
        await nc.publish(SUBJ.fills("gw1", "alpha"), encoder.encode(fill))
        await nc.flush()
        await until(lambda: daemon.engine.snapshot("alpha").fills == 1)
        yield gw, nc
    finally:
        await nc.close()
        await gw.close()
        await gw_nc.close()


@pytest.mark.parametrize("wire", ["nats-py", "rust"])
def test_a_breach_on_the_market_data_halts_the_gateway(
    run: Callable[..., object], server: EmbeddedNatsServer, tmp_path: Path, wire: str
) -> None:
    async def scenario() -> None:
        async with (
            running(config(tmp_path, wire), server.url) as daemon,
            alpha_holding_es(daemon, server.url, tmp_path / "data") as (gw, nc),
        ):
            assert not gw.agent.is_halted("alpha")
            executor = daemon.guard.executor  # type: ignore[union-attr]
            # the halt signed in advance (every 0.25 s): only such a halt leaves from the ingest
            await until(lambda: not executor.needs_presign("alpha"))
            # 10 ES down 600: 6,000 of 100,000, past the 5 % drawdown limit
            await nc.publish(MD, quote(5400.0, T0 + SEC))
            await nc.flush()
            await until(lambda: gw.agent.is_halted("alpha"))
            assert daemon.guard is not None and "alpha" in daemon.guard.halted
            # on the wire path the halt left on its socket from data_received itself
            assert executor.fired_used == 1
            assert executor.fired_direct == (1 if wire == "rust" else 0)

    run(scenario())


def test_a_breach_the_wire_path_cannot_act_on_fails_closed(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """A fault in acting on a chunk's breaches (here: the guard's fast path raises) must not
    leave the breaching algorithm trading: the daemon fails closed and halts everything."""

    async def scenario() -> None:
        async with running(config(tmp_path, "rust"), server.url) as daemon:
            guard = daemon.guard
            assert guard is not None

            def broken(breaches: object) -> None:
                raise RuntimeError("injected: the fast path is broken")

            guard.on_breaches_now = broken  # type: ignore[method-assign]
            async with alpha_holding_es(daemon, server.url, tmp_path / "data") as (gw, nc):
                await nc.publish(MD, quote(5400.0, T0 + SEC))
                await nc.flush()
                await until(lambda: gw.agent.is_halted("alpha"))
                assert daemon.failed is not None and "fast path is broken" in daemon.failed
                assert daemon.wire is not None and daemon.wire.stats.connected

    asyncio.run(scenario())


@pytest.mark.parametrize("wire", ["nats-py", "rust"])
def test_a_deployment_that_cannot_be_decided_fails_closed(
    server: EmbeddedNatsServer, tmp_path: Path, wire: str
) -> None:
    """A deployment's decision raising (a strategy's bug) after an ingest: Rampart cannot
    follow the deployment, so it fails closed, on both paths (on the wire path the exception
    escaped data_received before, and every chunk reconnected the link)."""

    async def scenario() -> None:
        async with running(config(tmp_path, wire), server.url) as daemon:
            runner = daemon.runner

            def broken(now: int) -> list[Any]:
                raise RuntimeError("injected: a strategy's bug")

            async with alpha_holding_es(daemon, server.url, tmp_path / "data") as (gw, nc):
                assert daemon.failed is None
                runner.deployments = {"dep": None}  # type: ignore[dict-item]
                runner.next_decision_at = 0
                runner.tick = broken  # type: ignore[method-assign]
                await nc.publish(MD, quote(6001.0, T0 + SEC))
                await nc.flush()
                await until(lambda: daemon.failed is not None)
                assert "a strategy's bug" in (daemon.failed or "")
                await until(lambda: gw.agent.is_halted("alpha"))
                if daemon.wire is not None:
                    assert daemon.wire.stats.disconnects == 0

    asyncio.run(scenario())


def test_a_gateway_on_the_wire_path_takes_signed_commands_and_heartbeats_only(
    run: Callable[..., object], server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """The gateway SDK with ``wire_servers``: commands and Rampart's heartbeats parsed in Rust
    on a connection of its own. A rollback's commands are applied in order and acked (on that
    connection); the heartbeats keep its dead-man's switch from tripping; a forged command is
    refused as on nats-py, and nothing is applied."""

    async def scenario() -> None:
        async with running(config(tmp_path, "rust"), server.url) as daemon:
            gw_nc = await nats.connect(server.url)
            gw = ReferenceGateway(
                gw_nc,
                "gw1",
                [HostedAlgo("alpha", "ES", Momentum(), allocation=1.0, active=True)],
                heartbeat_interval=0.05,
                deadman_timeout=0.5,
                trusted_keys=rampart_keys(tmp_path / "data"),
                wire_servers=[server.url],
            )
            await gw.start()
            nc = await nats.connect(server.url)
            try:
                assert gw.agent.wire is not None and gw.agent.wire.stats.connected
                await until(lambda: "gw1" in daemon.gateways)
                await until(lambda: gw.agent.deadman.last_seen is not None)
                forged = Command(
                    command_id="f" * 32,
                    epoch=2**62,
                    kind="resume",
                    targets=[CommandTarget(algo="alpha")],
                    issued_at=T0,
                    valid_until=2**62,
                    reason="forged",
                )
                await nc.publish(SUBJ.command("gw1"), encoder.encode(forged))
                await nc.flush()
                await until(lambda: gw.agent.refused_signatures.get("commands") == 1)
                assert daemon.guard is not None
                task = daemon.guard.trigger(["alpha"], "algo", "manual", "test", "op", force=True)
                assert task is not None
                record = await task
                assert record is not None and record.state == "succeeded", record
                assert gw.agent.is_halted("alpha")
                assert gw.agent.book.control("alpha").allocation == 0.0
                await asyncio.sleep(1.0)  # twice the dead-man timeout, Rampart beating
                assert not gw.agent.deadman.tripped
                assert gw.agent.wire.stats.published >= 3  # the rollback's acks, on the wire
            finally:
                await nc.close()
                await gw.close()
                await gw_nc.close()

    run(scenario())


def test_header_blocks_read_as_nats_py_reads_them() -> None:
    block = b"NATS/1.0\r\nRampart-Key: UKEY\r\nRampart-Sig:  c2ln \r\nX:\r\n\r\n"
    assert parse_headers(block) == {"Rampart-Key": "UKEY", "Rampart-Sig": "c2ln", "X": ""}
    assert parse_headers(b"NATS/1.0 503\r\n\r\n") == {"Status": "503"}


def test_the_wire_path_logs_in_with_its_nkey_on_the_secure_embedded_server(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, "rust")

    async def scenario() -> None:
        async with running(cfg, None) as daemon:
            assert daemon.embedded is not None and daemon.wire is not None
            assert daemon.wire.stats.connected
            seeds = tmp_path / "data" / "nats-auth"
            feed = await nats.connect(
                daemon.servers[0], nkeys_seed=str(seeds / "feed.nk"), inbox_prefix="_INBOX_feed"
            )
            await feed.publish(MD, quote(6000.0, T0))
            await feed.flush()
            await until(lambda: daemon.stats.ingested == 1)
            await feed.close()

    asyncio.run(scenario())


def test_the_wire_path_speaks_tls_and_refuses_a_server_it_cannot_verify(
    run: Callable[..., object], tmp_path: Path
) -> None:
    """A nats-server that requires TLS (a certificate of a test CA): the daemon's connections,
    nats-py's and the wire path's, log in over TLS with ``[nats.tls] ca_file``; with another CA
    the wire path refuses the server and says why."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    pem = json.dumps(str(tmp_path / "server.pem"))
    server = EmbeddedNatsServer(
        store_dir=tmp_path / "nats",
        extra_config=f"tls {{\n  cert_file: {pem}\n  key_file: {pem}\n}}\n",
    )
    url = server.start()

    async def scenario() -> None:
        text = config(tmp_path, "rust")
        cfg = msgspec.structs.replace(
            text,
            nats=msgspec.structs.replace(
                text.nats, tls=TlsConfig(ca_file=str(tmp_path / "ca.pem"))
            ),
        )
        async with running(cfg, url) as daemon:
            wire = daemon.wire
            assert wire is not None and wire.stats.connected and wire.stats.tls
            ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            nc = await nats.connect(url, tls=ctx)
            await nc.publish(MD, quote(6000.0, T0))
            await nc.flush()
            await until(lambda: daemon.stats.ingested == 1)
            status = daemon.daemon_status().wire
            assert status is not None and status.tls
            await nc.close()
        wrong = NatsConfig(tls=TlsConfig(ca_file=str(tmp_path / "other-ca.pem")))
        sub = WireSubscription(
            wrong, [url], "rampart.md.>", Engine(), lambda: T0, print, max_event=1
        )
        with pytest.raises(WireError, match="CERTIFICATE_VERIFY_FAILED"):
            await sub.start()

    try:
        run(scenario())
    finally:
        server.stop()


def test_the_wire_path_reconnects_after_a_server_restart_and_notices_a_hung_one(
    run: Callable[..., object], server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running(config(tmp_path, "rust"), server.url) as daemon:
            wire, guard = daemon.wire, daemon.guard
            assert wire is not None and guard is not None
            alerted: list[tuple[str, str]] = []
            alert = guard.alert

            async def spy(severity: Any, title: str, detail: str, *, algos: list[str]) -> None:
                alerted.append((severity, title))
                await alert(severity, title, detail, algos=algos)

            guard.alert = spy  # type: ignore[method-assign]
            nc = await nats.connect(server.url, reconnect_time_wait=0.05, max_reconnect_attempts=-1)
            await nc.publish(MD, quote(6000.0, T0))
            await nc.flush()
            await until(lambda: daemon.stats.ingested == 1)

            port = server.port
            await asyncio.to_thread(server.stop)
            await until(lambda: not wire.stats.connected)
            server.port = port
            await asyncio.to_thread(server.start)
            await until(lambda: wire.stats.connected and wire.stats.connects == 2, timeout=20)
            # the operator hears of it: market data was missed meanwhile
            await until(lambda: ("info", "market data connection back") in alerted)
            assert alerted[0] == ("warning", "market data connection lost"), alerted
            await until(lambda: nc.is_connected, timeout=20)
            await nc.publish(MD, quote(6001.0, T0 + SEC))
            await nc.flush()
            await until(lambda: daemon.stats.ingested == 2)

            # hung (SIGSTOP): the TCP connection stays, nothing answers its PINGs
            server.freeze()
            try:
                await until(lambda: wire.stats.disconnects == 2, timeout=10)
            finally:
                server.thaw()
            await until(lambda: wire.stats.connected and wire.stats.connects == 3, timeout=20)
            await nc.close()

    run(scenario())


def test_a_lost_market_data_link_rolls_everything_back_with_nats_disconnect(
    run: Callable[..., object], server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """Found from outside: the server cut the wire path's connection (a slow consumer) while
    the main link stayed up; the breaching quote sent meanwhile was lost, and Rampart only
    warned. Blind to market data, it now rolls every algorithm back at once
    (``triggers.nats_disconnect``, as for its main link)."""

    async def scenario() -> None:
        cfg = config(tmp_path, "rust")
        cfg = msgspec.structs.replace(
            cfg, triggers=msgspec.structs.replace(cfg.triggers, nats_disconnect=True)
        )
        async with (
            running(cfg, server.url) as daemon,
            alpha_holding_es(daemon, server.url, tmp_path / "data") as (gw, _nc),
        ):
            wire = daemon.wire
            assert wire is not None and wire._protocol is not None
            assert not gw.agent.is_halted("alpha")
            transport = wire._protocol.transport
            assert transport is not None
            transport.abort()  # the server hangs up on this connection only
            await until(lambda: gw.agent.is_halted("alpha"))
            guard = daemon.guard
            assert guard is not None and "alpha" in guard.halted
            assert guard.halted["alpha"].reason.startswith("the market-data connection was lost")
            await until(lambda: wire.stats.connected and wire.stats.connects == 2)
            assert daemon.nc is not None and daemon.nc.is_connected  # the main link never went

    run(scenario())


def test_a_flood_of_refused_market_data_is_counted_at_once_and_dead_lettered_by_one_task(
    run: Callable[..., object],
    server: EmbeddedNatsServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found from outside: every refusal of the wire path was a task of its own (a dead letter
    each), so a flood of crossed quotes stalled the event loop for seconds. Each refusal is
    now counted at once and its dead letter queued for one task, at most
    ``MAX_DEAD_LETTERS_WAITING`` of them (beyond: dropped, counted as failures)."""

    async def scenario() -> None:
        monkeypatch.setattr(rampart.daemon, "MAX_DEAD_LETTERS_WAITING", 50)
        async with running(config(tmp_path, "rust"), server.url) as daemon:
            nc = await nats.connect(server.url)
            crossed = encoder.encode(Quote(symbol="ES", bid=6001.0, ask=6000.0, ts=T0))
            for _ in range(2_000):
                await nc.publish(MD, crossed)
            await nc.flush()
            await until(lambda: daemon.stats.rejected.get("bad_price", 0) == 2_000)
            await until(lambda: not daemon._dead_letters)
            s = daemon.stats
            assert s.dead_lettered + s.dead_letter_failures == 2_000, s
            assert s.dead_lettered >= 50 and s.dead_letter_failures > 0, s
            await nc.close()

    run(scenario())


# ---- against a server that is not well behaved ------------------------------------------------


HANG_UP = b""


class FakeServer:
    """A TCP server on loopback speaking as much NATS as each test needs: an INFO, then what
    ``script`` answers to the client's CONNECT/SUB/PING (a list: written 50 ms apart)."""

    def __init__(self, script: Callable[[int], bytes | list[bytes]]) -> None:
        self.script = script
        self.logins = 0
        self.received: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.after_info = b""  # written with the INFO, before the client logs in

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"nats://127.0.0.1:{port}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b'INFO {"server_id":"fake","max_payload":1048576,"nonce":"abc"}\r\n' + self.after_info
        )
        try:
            line = await reader.readuntil(b"PING\r\n")
            self.received.append(line)
            self.logins += 1
            answer = self.script(self.logins)
            for part in answer if isinstance(answer, list) else [answer]:
                if part is HANG_UP:
                    return
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.05)
            while data := await reader.read(4096):
                self.received.append(data)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


def _subscription(url: str, results: list[WireResult]) -> WireSubscription:
    nats_cfg = NatsConfig(servers=[url], reconnect_time_wait=datetime.timedelta(seconds=0.02))
    return WireSubscription(
        nats_cfg,
        [url],
        "rampart.md.>",
        Engine(),
        lambda: T0,
        results.append,
        max_event=2048,
    )


@asynccontextmanager
async def subscribed(
    fake: FakeServer,
) -> AsyncIterator[tuple[WireSubscription, list[WireResult]]]:
    """A market-data subscription to ``fake``, started, and every chunk's result; closed, and
    the fake stopped, after."""
    url = await fake.start()
    results: list[WireResult] = []
    sub = _subscription(url, results)
    await sub.start()
    try:
        yield sub, results
    finally:
        await sub.close()
        await fake.stop()


def test_garbage_from_the_server_closes_the_connection_and_it_reconnects(
    run: Callable[..., object],
) -> None:
    body = quote(6000.0, T0)
    good = b"MSG rampart.md.ES 1 %d\r\n%s\r\n" % (len(body), body)

    def script(login: int) -> bytes:
        if login == 1:  # a quote, then bytes that are not the protocol
            return b"PONG\r\n" + good + b"HELLO\r\n" + good
        return b"PONG\r\n" + good

    async def scenario() -> None:
        fake = FakeServer(script)
        async with subscribed(fake) as (sub, results):
            await until(lambda: sub.stats.connects == 2 and sub.stats.connected, timeout=10)
            await until(lambda: sum(r.ingested for r in results) == 2)
            assert sub.stats.protocol_errors == 1 and sub.stats.disconnects == 1
            login = fake.received[0]
            assert login.startswith(b"CONNECT {") and b"SUB rampart.md.> 1\r\n" in login

    run(scenario())


def test_what_the_server_sends_before_the_login_or_for_another_sid_is_never_applied(
    run: Callable[..., object],
) -> None:
    """A market-data message in the INFO's chunk (before any SUB: a man in the middle of a
    connection about to start TLS), or for a sid never subscribed, is refused
    (``unknown_sid``), not applied; a message for the subscription's sid is."""
    body = quote(6000.0, T0)

    def msg(sid: bytes) -> bytes:
        return b"MSG rampart.md.ES %s %d\r\n%s\r\n" % (sid, len(body), body)

    async def scenario() -> None:
        fake = FakeServer(lambda _: b"PONG\r\n" + msg(b"7") + msg(b"1"))
        fake.after_info = msg(b"1")  # in the clear, before the client's CONNECT and SUB
        async with subscribed(fake) as (sub, results):
            await until(lambda: sum(r.ingested for r in results) == 1)
            refused = [(s, reason) for r in results for s, reason, *_ in r.refused]
            assert refused == [("rampart.md.ES", "unknown_sid")] * 2
            assert sub.stats.protocol_errors == 0 and sub.stats.connected

    run(scenario())


def test_a_chunk_read_when_the_server_then_misbehaves_is_still_delivered(
    run: Callable[..., object],
) -> None:
    """A quote and, in the same chunk, an INFO that is not an object (or a max_payload beyond
    reason): the quote's result reaches the daemon (its breaches would), and the connection is
    closed and opened again; it never escapes data_received."""
    body = quote(6000.0, T0)
    good = b"MSG rampart.md.ES 1 %d\r\n%s\r\n" % (len(body), body)

    def script(login: int) -> list[bytes]:
        if login == 1:
            return [b"PONG\r\n", good + b"INFO []\r\n"]
        big = b'INFO {"max_payload": 99999999999999999999999}\r\n'
        return [b"PONG\r\n", big + good]

    async def scenario() -> None:
        fake = FakeServer(script)
        async with subscribed(fake) as (sub, results):
            await until(lambda: sum(r.ingested for r in results) == 2, timeout=10)
            assert sub.stats.disconnects >= 1 and sub.stats.connects >= 2

    run(scenario())


def test_a_message_a_publisher_made_invalid_is_refused_alone(
    run: Callable[..., object], server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """What nats-server forwards from any publisher on the market-data subjects: a subject or
    reply that is not UTF-8, a header block that is not NATS/1.0, a reply of 4,076 bytes (a MSG
    line over 4,096 with its sid). Each is refused (and dead-lettered) alone; the link stays up
    and the next quote is applied."""

    async def scenario() -> None:
        async with running(config(tmp_path, "rust"), server.url) as daemon:
            wire = daemon.wire
            assert wire is not None
            host, port = server.url.removeprefix("nats://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            await reader.readline()  # INFO
            writer.write(
                b'CONNECT {"verbose":false,"headers":true}\r\n'
                b"PUB rampart.md.\xff 2\r\nhi\r\n"
                b"PUB rampart.md.ES \xff 2\r\nhi\r\n"
                b"HPUB rampart.md.ES 4 6\r\nXXXXhi\r\n"
                b"PUB rampart.md.ES " + b"r" * 4076 + b" 2\r\nhi\r\nPING\r\n"
            )
            assert await reader.readline() == b"PONG\r\n"  # the server took them all
            writer.close()
            nc = await nats.connect(server.url)
            await nc.publish(MD, quote(6000.0, T0))
            await nc.flush()
            await until(lambda: daemon.stats.ingested == 1)
            await until(lambda: sum(daemon.stats.rejected.values()) == 4)
            assert daemon.stats.rejected == {"bad_subject": 2, "bad_headers": 1, "decode": 1}
            assert wire.stats.protocol_errors == 0 and wire.stats.disconnects == 0
            await nc.close()

    run(scenario())


def test_reconnecting_goes_on_after_an_unexpected_error(run: Callable[..., object]) -> None:
    """A reconnection attempt failing with something other than a network or login error (a
    seed file damaged during a rotation raises nkeys' own errors) is logged and tried again;
    it never ends the task that keeps the link up."""

    async def scenario() -> None:
        fake = FakeServer(lambda login: [b"PONG\r\n", HANG_UP] if login == 1 else b"PONG\r\n")
        async with subscribed(fake) as (sub, _):
            connect = sub._connect
            failures: list[str] = []

            async def flaky(url: str) -> None:
                if not failures:
                    failures.append(url)
                    raise RuntimeError("injected: a damaged seed file")
                await connect(url)

            sub._connect = flaky  # type: ignore[method-assign]
            await until(lambda: sub.stats.connects == 2 and sub.stats.connected, timeout=10)
            assert failures == sub.servers

    run(scenario())


def test_a_halt_written_on_the_wire_connection_is_one_hpub_frame(
    run: Callable[..., object],
) -> None:
    async def scenario() -> None:
        fake = FakeServer(lambda _: b"PONG\r\n")
        async with subscribed(fake) as (sub, _):
            headers = {"Rampart-Key": "UKEY", "Rampart-Sig": "c2ln"}
            assert sub.publish("rampart.cmd.gw1", b'{"k":1}', "_INBOX.a.1", headers)
            assert sub.publish("rampart.cmd.gw2", b"{}", "_INBOX.a.2", None)
            with pytest.raises(ValueError, match="CR or LF"):
                sub.publish("rampart.cmd.gw1", b"{}", "_INBOX.a.3", {"K": "v\r\nX: injected"})
            hdr = b"NATS/1.0\r\nRampart-Key: UKEY\r\nRampart-Sig: c2ln\r\n\r\n"
            want = (
                b'HPUB rampart.cmd.gw1 _INBOX.a.1 %d %d\r\n%s{"k":1}\r\n'
                % (len(hdr), len(hdr) + 7, hdr)
                + b"PUB rampart.cmd.gw2 _INBOX.a.2 2\r\n{}\r\n"
            )
            await until(lambda: want in b"".join(fake.received))
            assert sub.stats.published == 2
        assert not sub.publish("rampart.cmd.gw1", b"{}", "_INBOX.a.4", None)  # closed

    run(scenario())


def test_a_refused_login_is_a_clear_error_and_a_slow_consumer_is_counted(
    run: Callable[..., object],
) -> None:
    async def scenario() -> None:
        fake = FakeServer(lambda _: b"-ERR 'Authorization Violation'\r\n")
        url = await fake.start()
        with pytest.raises(WireError, match="Authorization Violation"):
            await _subscription(url, []).start()
        await fake.stop()

        # the server cuts a slow consumer off: -ERR, then it hangs up
        slow = [b"PONG\r\n", b"-ERR 'Slow Consumer Detected'\r\n", HANG_UP]
        fake = FakeServer(lambda login: slow if login == 1 else b"PONG\r\n")
        async with subscribed(fake) as (sub, _):
            await until(lambda: sub.stats.slow_consumer == 1)
            assert "Slow Consumer" in (sub.stats.last_error or "")
            await until(lambda: sub.stats.connects == 2 and sub.stats.connected, timeout=10)

    run(scenario())


# ---- credentials ---------------------------------------------------------------------------


def test_connect_fields_carry_each_kind_of_credentials_as_nats_py_does(tmp_path: Path) -> None:
    info = {"nonce": "n0nce"}
    fields = connect_fields(NatsConfig(user="u", password="p"), info, "nats://h:1")
    assert (fields["user"], fields["pass"]) == ("u", "p") and "auth_token" not in fields
    assert connect_fields(NatsConfig(token="t"), info, "nats://h:1")["auth_token"] == "t"
    fields = connect_fields(NatsConfig(), info, "nats://al%40ice:s3cret@h:1")
    assert (fields["user"], fields["pass"]) == ("al@ice", "s3cret")
    assert connect_fields(NatsConfig(), info, "nats://tok@h:1")["auth_token"] == "tok"
    assert not {"user", "auth_token", "nkey"} & set(connect_fields(NatsConfig(), info, "h:1"))

    kp = nkeys.from_seed(bytearray(_user_seed()))
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(_user_seed())
    fields = connect_fields(NatsConfig(nkeys_seed=str(seed_file)), info, "nats://h:1")
    assert fields["nkey"] == kp.public_key.decode()
    assert kp.verify(b"n0nce", base64.b64decode(fields["sig"]))

    creds = tmp_path / "user.creds"
    creds.write_bytes(
        b"-----BEGIN NATS USER JWT-----\neyJhbGciOi.jwt.body\n------END NATS USER JWT------\n\n"
        b"************************* IMPORTANT *************************\n\n"
        b"-----BEGIN USER NKEY SEED-----\n" + _user_seed() + b"\n------END USER NKEY SEED------\n"
    )
    fields = connect_fields(NatsConfig(credentials=str(creds)), info, "nats://h:1")
    assert fields["jwt"] == "eyJhbGciOi.jwt.body" and "nkey" not in fields
    assert kp.verify(b"n0nce", base64.b64decode(fields["sig"]))
    with pytest.raises(WireError, match="no nonce"):
        connect_fields(NatsConfig(nkeys_seed=str(seed_file)), {}, "nats://h:1")
    (tmp_path / "bad.creds").write_text("nothing here")
    with pytest.raises(WireError, match=r"not a NATS \.creds file"):
        connect_fields(NatsConfig(credentials=str(tmp_path / "bad.creds")), info, "h:1")
    json.dumps(fields)  # what goes on the wire


@functools.cache
def _user_seed() -> bytes:
    return SigningKey.generate().seed().encode()  # an NKEY user seed (SU...)


def test_status_says_when_the_market_data_connection_is_down() -> None:
    down = WireStatus(
        connected=False,
        server="127.0.0.1:4999",
        connects=3,
        disconnects=3,
        bytes=12_345,
        chunks=67,
        slow_consumer=1,
        last_error="Slow Consumer",
    )
    line = format_wire(down)
    assert "DISCONNECTED, reconnecting: no market data meanwhile" in line
    assert "3 disconnects, 1 slow-consumer cut-offs" in line and "protocol" not in line
    assert line.endswith("last error: Slow Consumer")
    up = WireStatus(connected=True, server="h:1", tls=True, bytes=10, chunks=1)
    assert format_wire(up) == "market data (wire path): connected to h:1 (TLS); 10 bytes in 1 reads"
