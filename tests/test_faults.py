"""Faults injected from outside the process (issue 9): the daemon (`rampart run`) and a reference
gateway run as separate processes beside a real nats-server; the test kills them with SIGKILL,
stops them with SIGSTOP, restarts them, and reads what the gateway really did from its own
heartbeats and its command log. Each scenario ends with the gateway doing what Rampart's stored
intent says, within a stated time, and no capital or resume ever sent to a halted algorithm."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from support import control, eventually, rampart_keys, spawn

from rampart.embedded import EmbeddedNatsServer
from rampart.protocol import (
    AlgoStatus,
    Command,
    CommandKind,
    CommandTarget,
    DaemonStatus,
    Fill,
    Heartbeat,
    Quote,
    Subjects,
    encoder,
    heartbeat_decoder,
    status_reply_decoder,
)
from rampart.signing import default_seed_path, load_or_create, sign_headers

SUBJ = Subjects()
GATEWAY = str(Path(__file__).with_name("gateway_proc.py"))
# Once a fault clears, the gateway must do what Rampart wants within this many seconds.
CONVERGE_S = 10.0

CONFIG = """
data_dir = "{data_dir}"
heartbeat_interval = "PT0.1S"
checkpoint_interval = "PT0.1S"

[triggers]
check_interval = "PT0.05S"
gateway_heartbeat_timeout = "{hb_timeout}"
market_data_timeout = "PT1H"
nats_disconnect = false

[[algorithms]]
id = "alpha"
version = "1"
gateway = "gw1"
capital = 100000
limits = {{ max_drawdown = 0.05 }}

[[algorithms]]
id = "beta"
version = "1"
gateway = "gw1"
capital = 100000
"""


def write_config(tmp: Path, hb_timeout: str = "PT1H") -> Path:
    cfg = tmp / "rampart.toml"
    cfg.write_text(CONFIG.format(data_dir=tmp / "data", hb_timeout=hb_timeout))
    return cfg


async def kill(proc: asyncio.subprocess.Process, sig: int = signal.SIGKILL) -> None:
    if proc.returncode is None:
        proc.send_signal(sig)
        await asyncio.wait_for(proc.wait(), 30)


class World:
    """The processes and what the test sees of them over NATS."""

    def __init__(self, url: str, tmp: Path, cfg: Path) -> None:
        self.url, self.tmp, self.cfg = url, tmp, cfg
        self.nc: Client | None = None
        self.hb: Heartbeat | None = None
        self.daemon: asyncio.subprocess.Process | None = None
        self.gateway: asyncio.subprocess.Process | None = None
        self.gw_log = tmp / "gateway-commands.jsonl"

    async def on_hb(self, msg: Msg) -> None:
        self.hb = heartbeat_decoder.decode(msg.data)

    async def start_daemon(self, env: dict[str, str] | None = None) -> None:
        self.daemon = await spawn(
            "-m",
            "rampart",
            "run",
            "--config",
            str(self.cfg),
            "--servers",
            self.url,
            log=self.tmp / "daemon.log",
            env=env,
        )
        await until(self.status_ok, what="the daemon answers status")

    async def start_gateway(self, deadman: float = 30.0, *extra: str) -> None:
        self.hb = None
        self.gateway = await spawn(
            GATEWAY,
            self.url,
            "gw1",
            "alpha,beta",
            str(self.gw_log),
            *extra,
            "--deadman",
            str(deadman),
            "--trust",
            rampart_keys(self.tmp / "data")[0],
            log=self.tmp / "gateway.log",
        )
        await until(lambda: self.hb is not None, what="the gateway's heartbeat")

    async def status_ok(self) -> bool:
        try:
            await self.algo("alpha")
        except Exception:
            return False
        return True

    async def algo(self, algo: str) -> AlgoStatus:
        assert self.nc is not None
        reply = await self.nc.request(SUBJ.status("algorithm"), algo.encode(), timeout=1)
        return status_reply_decoder.decode(reply.data).algorithms[0]

    async def daemon_status(self) -> DaemonStatus:
        assert self.nc is not None
        reply = await self.nc.request(SUBJ.status("algorithms"), b"", timeout=2)
        return status_reply_decoder.decode(reply.data).daemon

    async def publish(self, subject: str, event: Fill | Quote) -> None:
        assert self.nc is not None
        await self.nc.publish(subject, encoder.encode(event))
        await self.nc.flush()

    async def control(self, verb: str, target: str, timeout: float = 10) -> Any:
        assert self.nc is not None
        return await control(
            self.nc, self.tmp / "data", verb, target, reason="fault test", timeout=timeout
        )

    async def control_document(self, verb: str, target: str, document: dict[str, Any]) -> Any:
        assert self.nc is not None
        return await control(
            self.nc, self.tmp / "data", verb, target, reason="fault test", document=document
        )

    def actual(self, algo: str) -> Any:
        assert self.hb is not None
        return next(s for s in self.hb.state if s.algo == algo)

    async def converged(self, algo: str) -> bool:
        """The gateway (its own heartbeat) does what Rampart's status says it wants."""
        try:
            st = await self.algo(algo)
        except Exception:
            return False
        if st.control is None or self.hb is None:
            return False
        act = self.actual(algo)
        return bool(st.control.in_sync and act.halted == st.halted)

    def commands(self) -> list[dict[str, Any]]:
        if not self.gw_log.exists():
            return []
        return [json.loads(line) for line in self.gw_log.read_text().splitlines() if line]


async def until(cond: Any, timeout: float = CONVERGE_S, what: str = "") -> None:
    await eventually(cond, timeout, what)


@asynccontextmanager
async def world(server: EmbeddedNatsServer, tmp: Path, **cfg: str) -> AsyncIterator[World]:
    w = World(server.url, tmp, write_config(tmp, **cfg))
    w.nc = await nats.connect(server.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
    await w.nc.subscribe(SUBJ.heartbeat("gw1"), cb=w.on_hb)
    try:
        yield w
    finally:
        for proc in (w.daemon, w.gateway):
            if proc is not None:
                await kill(proc)
        await w.nc.close()
    # whatever the faults, the audit chain holds (checked as an operator would)
    verify = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rampart", "audit", "verify", "--config", str(w.cfg),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await verify.communicate()
    assert verify.returncode == 0, out.decode()


def no_increase_while_halted(commands: list[dict[str, Any]], algo: str) -> None:
    """Between a halt of ``algo`` and the operator's release (the resume), the gateway never
    applied an allocation increase or an activation of it."""
    halted, allocation = False, 0.0
    for c in (c for c in commands if c["algo"] == algo):
        if c["kind"] == "halt":
            halted = True
        elif c["kind"] == "resume":
            halted = False
        elif c["kind"] == "set_allocation":
            assert not (halted and c["allocation"] > allocation), f"raised while halted: {c}"
            allocation = c["allocation"]
        elif c["kind"] == "activate":
            assert not halted, f"activated while halted: {c}"


def test_kill_9_of_the_daemon_at_many_moments_of_a_rollback(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """SIGKILL at 24 moments, 0-100 ms after a rollback request (before the halt, between the
    halt and its latch, around the reply) and as its reply arrives; after a restart, Rampart's
    latch and the gateway's halt agree, and a rollback the operator was told succeeded is halted
    at the gateway."""
    rng = random.Random()
    # seconds after the request; None: the moment its reply arrives (right after the halt's ack)
    moments: list[float | None] = [0.0, 0.0002, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004]
    moments += [0.006, 0.008, 0.011, 0.015, 0.02, 0.03, 0.045, 0.06, 0.1, None, None]
    moments += [rng.uniform(0.0, 0.03) for _ in range(5)]

    async def scenario() -> None:
        async with world(server, tmp_path) as w:
            await w.start_gateway()
            for delay in moments:
                await w.start_daemon()
                await until(lambda: w.converged("alpha"), what="in sync before the fault")
                request = asyncio.ensure_future(w.control("rollback", "alpha", timeout=5))
                if delay is None:
                    await asyncio.wait([request])
                else:
                    await asyncio.sleep(delay)
                assert w.daemon is not None
                await kill(w.daemon)
                try:
                    reply = await request
                    told_ok = reply.ok and reply.state.get("state") == "succeeded"
                except Exception:
                    told_ok = False  # no answer: the operator knows nothing happened for sure
                await w.start_daemon()
                await until(lambda: w.converged("alpha"), what=f"converged after kill at {delay}")
                st = await w.algo("alpha")
                if told_ok:
                    assert st.halted and w.actual("alpha").halted, (delay, st.control)
                no_increase_while_halted(w.commands(), "alpha")
                if st.halted:  # the operator releases, for the next round
                    reply = await w.control("release", "alpha")
                    assert reply.ok, reply.error
                    await until(lambda: not w.actual("alpha").halted, what="released")
                assert w.daemon is not None
                await kill(w.daemon, signal.SIGTERM)

    asyncio.run(scenario())


def test_a_gateway_killed_and_restarted_at_once_comes_back_halted(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with world(server, tmp_path) as w:
            await w.start_gateway()
            await w.start_daemon()
            reply = await w.control("rollback", "alpha")
            assert reply.ok and reply.state["state"] == "succeeded", reply
            await until(lambda: w.actual("alpha").halted, what="halted")
            assert w.gateway is not None
            await kill(w.gateway)
            await w.start_gateway()  # well inside the heartbeat timeout: it forgot the halt
            await until(lambda: w.actual("alpha").halted, what="halted again after restart")
            assert not w.actual("beta").halted
            no_increase_while_halted(w.commands(), "alpha")

    asyncio.run(scenario())


def test_a_daemon_stopped_longer_than_the_heartbeat_timeout_rolls_nothing_back(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """SIGSTOP for 3.5 s with a 3 s gateway heartbeat timeout: the gap is Rampart's own stall,
    not the gateway's, so nothing is rolled back (the gateway's dead-man's switch is set longer
    here; with a shorter one the gateway halts itself and Rampart adopts that, tested apart)."""

    async def scenario() -> None:
        async with world(server, tmp_path, hb_timeout="PT3S") as w:
            await w.start_gateway(deadman=30.0)
            await w.start_daemon()
            await until(lambda: w.converged("alpha"), what="in sync")
            assert w.daemon is not None
            w.daemon.send_signal(signal.SIGSTOP)
            await asyncio.sleep(3.5)
            w.daemon.send_signal(signal.SIGCONT)
            await asyncio.sleep(1.5)
            for algo in ("alpha", "beta"):
                st = await w.algo(algo)
                assert not st.halted, f"{algo} rolled back after Rampart's own stall"
                assert not w.actual(algo).halted

    asyncio.run(scenario())


def test_nats_server_stopped_and_killed_in_the_middle_of_rollbacks(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """The server is frozen (SIGSTOP, 2 s) and then killed (SIGKILL, restarted on its port) right
    after a rollback's halt reached the gateway, so the rest of the rollback (allocation 0) is
    lost with it. Once NATS is back, the gateway converges to the stored intent."""

    async def rollback_then(algo: str, fault: Any) -> None:
        assert w is not None
        request = asyncio.ensure_future(w.control("rollback", algo, timeout=15))
        await until(
            lambda: any(c["kind"] == "halt" and c["algo"] == algo for c in w.commands()),
            what=f"the halt of {algo} reached the gateway",
        )
        await fault()
        try:
            await request
        except Exception:
            pass  # the answer may be lost with the server
        await until(
            lambda: w.hb is not None and w.actual(algo).halted and w.actual(algo).allocation == 0.0,
            timeout=CONVERGE_S + 5,
            what=f"{algo} halted with no capital at the gateway after the fault",
        )
        await until(lambda: w.converged(algo), what=f"{algo} in sync")
        st = await w.algo(algo)
        assert st.halted, "the halt is latched in Rampart"
        no_increase_while_halted(w.commands(), algo)

    async def freeze() -> None:
        server.freeze()
        await asyncio.sleep(2.0)
        server.thaw()

    async def kill_and_restart() -> None:
        port = server.port
        await asyncio.to_thread(server.kill)
        await asyncio.sleep(1.0)
        server.port = port
        await asyncio.to_thread(server.start)

    w: World | None = None

    async def scenario() -> None:
        nonlocal w
        async with world(server, tmp_path) as w:
            await w.start_gateway()
            await w.start_daemon()
            for algo in ("alpha", "beta"):
                await until(lambda a=algo: w.converged(a), what="in sync before the faults")
            await rollback_then("alpha", freeze)
            await rollback_then("beta", kill_and_restart)

    asyncio.run(scenario())


def test_a_gateway_stopped_10s_in_the_middle_of_a_rollback(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """The gateway stops itself (SIGSTOP) right after applying the halt, for 10 s: the rest of the
    rollback (allocation 0) expires in its queue. After SIGCONT the reconciler drives it to the
    stored intent, and the rollback record goes failed -> completed."""

    async def scenario() -> None:
        async with world(server, tmp_path) as w:
            await w.start_gateway(30.0, "--stop-after-halt", "alpha")
            await w.start_daemon()
            await until(lambda: w.converged("alpha"), what="in sync before the fault")
            request = asyncio.ensure_future(w.control("rollback", "alpha", timeout=15))
            await until(
                lambda: any(c["kind"] == "halt" for c in w.commands()), what="the halt applied"
            )
            await asyncio.sleep(10.0)
            assert w.gateway is not None
            w.gateway.send_signal(signal.SIGCONT)
            reply = await request
            assert reply.ok and reply.state["state"] == "failed", "not acked in time: failed"
            await until(
                lambda: w.actual("alpha").halted and w.actual("alpha").allocation == 0.0,
                what="halted with no capital after the gateway came back",
            )
            await until(lambda: w.converged("alpha"), what="in sync")
            no_increase_while_halted(w.commands(), "alpha")

            async def completed() -> bool:
                assert w.nc is not None
                reply = await w.nc.request(SUBJ.status("algorithm"), b"alpha", timeout=2)
                recs = status_reply_decoder.decode(reply.data).daemon.rollbacks
                return any(r.state == "completed" for r in recs)

            await until(completed, what="the rollback record completed")

    asyncio.run(scenario())


# A canary of alpha, for the deployment-decision fault (its stages never matter here).
CANARY = {
    "deploymentId": "canary-faults",
    "strategy": "Canary",
    "algorithmId": "alpha",
    "environment": "Production",
    "configuration": {
        "totalCapital": 100_000,
        "stages": [{"name": "Micro", "allocation": 0.01, "minDuration": "PT1H", "minPnL": 0}],
        "autoProgress": True,
        "rollbackThresholds": {"maxDailyLoss": 0.5, "maxDrawdown": 0.5, "maxErrorRate": 0.5},
    },
}


async def failed_closed(w: World, cause: str) -> None:
    """Rampart failed closed for ``cause`` (its status says so) and the gateway halted every
    algorithm (its own heartbeats say so), while the daemon stays up to tell the operator."""
    await until(
        lambda: w.hb is not None and all(w.actual(a).halted for a in ("alpha", "beta")),
        what="every algorithm halted at the gateway",
    )
    status = await w.daemon_status()
    assert status.store_error is not None and cause in status.store_error, status.store_error
    assert w.daemon is not None and w.daemon.returncode is None
    no_increase_while_halted(w.commands(), "alpha")


def test_a_breach_the_wire_path_cannot_act_on_fails_closed_in_a_real_process(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """The daemon on the (default) Rust wire path, in its own process, with acting on a chunk's
    breaches failing (error failpoint ``wire_breaches``): the breaching quote must not leave
    the algorithm trading. The daemon fails closed and every algorithm is halted."""

    async def scenario() -> None:
        async with world(server, tmp_path) as w:
            await w.start_gateway()
            await w.start_daemon(env={"RAMPART_FAILPOINT": "wire_breaches:1:error"})
            status = await w.daemon_status()
            assert status.wire is not None and status.wire.connected, "on the wire path"
            t0 = time.time_ns()
            fill = Fill(algo="alpha", symbol="ES", side="buy", qty=10, price=6000, ts=t0)
            await w.publish(SUBJ.fills("gw1", "alpha"), fill)
            await until(lambda: fills_of(w, "alpha", 1), what="the fill applied")
            assert not w.actual("alpha").halted and not w.actual("beta").halted
            # 10 ES down 600: 6,000 of 100,000, past alpha's 5 % drawdown limit
            await w.publish(SUBJ.market("ES"), Quote(symbol="ES", bid=5400, ask=5400, ts=t0 + 1))
            await failed_closed(w, "acting on breaches from the market-data wire path")

    asyncio.run(scenario())


def test_a_deployment_decision_that_raises_fails_closed_in_a_real_process(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """A deployment's decision raising after an ingest (error failpoint ``decide``), in the
    daemon's own process on the wire path: Rampart cannot follow the deployment, so it fails
    closed, and the market-data link stays up (it reconnected on every chunk before)."""

    async def scenario() -> None:
        async with world(server, tmp_path) as w:
            await w.start_gateway()
            await w.start_daemon(env={"RAMPART_FAILPOINT": "decide:1:error"})
            reply = await w.control_document("deploy", "alpha", CANARY)
            assert reply.ok, reply.error
            t0 = time.time_ns()
            for i in range(5):
                quote = Quote(symbol="ES", bid=6000, ask=6000.5, ts=t0 + i)
                await w.publish(SUBJ.market("ES"), quote)
            await failed_closed(w, "a deployment's decision failed")
            status = await w.daemon_status()
            assert status.wire is not None and status.wire.connected
            assert status.wire.disconnects == 0, status.wire

    asyncio.run(scenario())


async def fills_of(w: World, algo: str, n: int) -> bool:
    return (await w.algo(algo)).fills == n


@pytest.mark.parametrize("by", ["operator", "breach"])
def test_a_restart_on_a_clock_behind_the_last_run_still_halts(
    server: EmbeddedNatsServer, tmp_path: Path, by: str
) -> None:
    """The gateway holds a halt-dimension epoch 60 s ahead of this host's clock (an earlier run
    of this Rampart on a host whose clock was ahead, or this host's clock stepped back since):
    epochs follow what gateways report holding, so the next rollback's halt is newer and is
    applied at once (it was refused as stale_epoch until the clock caught up: 60 s trading).
    The rollback is an operator's, or a breach's whose halt leaves from the wire path."""

    async def scenario() -> None:
        async with world(server, tmp_path) as w:
            await w.start_gateway()
            await w.start_daemon()
            await until(lambda: w.converged("alpha"), what="in sync")
            t0 = time.time_ns()
            fill = Fill(algo="alpha", symbol="ES", side="buy", qty=10, price=6000, ts=t0)
            await w.publish(SUBJ.fills("gw1", "alpha"), fill)
            await until(lambda: fills_of(w, "alpha", 1), what="the fill applied")
            assert w.daemon is not None
            await kill(w.daemon, signal.SIGTERM)
            # what the earlier run left at the gateway: alpha released with its capital, at
            # epochs 60 s ahead of this host's clock
            ahead = time.time_ns() + 60 * 1_000_000_000
            key = load_or_create(default_seed_path(tmp_path / "data"))
            subject = SUBJ.command("gw1")
            earlier: list[tuple[CommandKind, float | None]] = [
                ("resume", None),
                ("set_allocation", 1.0),
            ]
            for i, (kind, allocation) in enumerate(earlier):
                command = Command(
                    command_id=f"earlier-run-{kind}",
                    epoch=ahead + i,
                    kind=kind,
                    targets=[CommandTarget(algo="alpha", allocation=allocation)],
                    issued_at=time.time_ns(),
                    valid_until=time.time_ns() + 5 * 1_000_000_000,
                    reason="an earlier run whose clock was ahead",
                )
                body = encoder.encode(command)
                assert w.nc is not None
                ack = await w.nc.request(subject, body, headers=sign_headers(key, subject, body))
                assert b"applied" in ack.data, ack.data
            await until(
                lambda: w.actual("alpha").epochs.get("allocation") == ahead + 1,
                what="the gateway holds them",
            )
            await w.start_daemon()  # a rollback at once, before any heartbeat is heard
            if by == "operator":
                reply = await w.control("rollback", "alpha")
                assert reply.ok and reply.state["state"] == "succeeded", reply
            else:
                # 10 ES down 600: past alpha's 5 % drawdown limit
                quote = Quote(symbol="ES", bid=5400, ask=5400, ts=time.time_ns())
                await w.publish(SUBJ.market("ES"), quote)

                async def succeeded() -> bool:
                    rollbacks = (await w.daemon_status()).rollbacks
                    return bool(rollbacks) and rollbacks[0].state == "succeeded"

                await until(succeeded, what="the breach's rollback succeeded")
            await until(
                lambda: w.actual("alpha").halted and w.actual("alpha").allocation == 0.0,
                timeout=2.0,
                what="halted with no capital at the gateway",
            )
            no_increase_while_halted(w.commands(), "alpha")

    asyncio.run(scenario())


def test_a_failure_its_halts_could_not_be_stored_for_still_halts_after_the_restart(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """Found from outside: the disk filled, Rampart failed closed, but the halts could not be
    stored (nor applied: no gateway took them); after the fix and a restart the algorithms came
    back trading. The failure is kept outside the store (rampart.fail_marker): the next start
    latches every algorithm halted, for an operator to release."""

    async def scenario() -> None:
        async with world(server, tmp_path) as w:
            # from the 30th commit on, every commit fails: a disk that stays full. The
            # operator's rollbacks and releases of beta write until then; alpha is never
            # touched: only the failure can halt it
            await w.start_daemon(env={"RAMPART_FAILPOINT": "commit:30:errors"})
            for i in range(100):
                if (await w.daemon_status()).store_error is not None:
                    break
                with contextlib.suppress(Exception):
                    await w.control("rollback" if i % 2 == 0 else "release", "beta", timeout=2)
            else:
                raise AssertionError("the full disk never failed Rampart closed")
            assert w.daemon is not None
            await kill(w.daemon)
            marker = tmp_path / "data" / "rampart.failed"
            assert b"reason" in marker.read_bytes()
            await w.start_daemon()
            status = await w.daemon_status()
            assert status.store_error is None
            latches = {h.algo: h for h in status.halted}
            assert set(latches) == {"alpha", "beta"}, status.halted
            assert "failed closed before this start" in latches["alpha"].reason
            assert marker.read_bytes().strip() == b"", "cleared once the latches are stored"
            reply = await w.control("release", "alpha")  # no gateway runs to ack it
            assert reply.ok or "released (stored)" in (reply.error or ""), reply.error
            assert {h.algo for h in (await w.daemon_status()).halted} == {"beta"}

    asyncio.run(scenario())
