"""Active/standby (docs/ha.md) through a canary, with separate processes on a real 3-node
cluster: three ``rampart run`` for one shard, the reference gateway trading the algorithm (its
fills on the durable events stream), and the market data from the test.

- Kill -9 of the leader at 20+ random moments of a running canary (while quotes arrive, stages
  advance and the gateway's fills flow), then at moments right after an operator's rollback
  mid-canary. After each kill: a leader in a newer term, the gateway in sync with its intent, the
  canary never back at an earlier stage.
- At the end: no dead-man trip, no allocation raised at the gateway after the halt, every fill on
  the events stream applied exactly once by the last leader (its fill count and position equal
  the stream's), and one unbroken audit chain in every store.
- A NATS node killed under a running shard (the one its leader is connected to): one leader,
  the gateway in sync, no dead-man trip, and the shard still acts (a rollback) and replicates.
"""

from __future__ import annotations

import asyncio
import math
import random
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import nats
from cluster import NatsCluster
from ha_daemons import Daemon, lines
from nats.aio.client import Client
from support import control, rampart_keys

from rampart.protocol import Quote, StatusReply, Subjects, encoder, status_reply_decoder
from rampart.signing import SigningKey
from rampart.store import Store

GATEWAY = str(Path(__file__).with_name("gateway_proc.py"))
DEADMAN = 5.0  # s: the takeover (lease ttl 1 s) must come well before it
ALGO = "mom"
S = 1_000_000_000
SUBJ = Subjects()
CANARY: dict[str, Any] = {
    "deploymentId": "canary-ha",
    "strategy": "Canary",
    "algorithmId": ALGO,
    "environment": "Production",
    "configuration": {
        "totalCapital": 100_000,
        "stages": [
            {"name": "Micro", "allocation": 0.01, "minDuration": "PT1M", "minPnL": -1e9},
            {"name": "Small", "allocation": 0.05, "minDuration": "PT1M", "minPnL": -1e9},
            {"name": "Large", "allocation": 0.25, "minDuration": "PT2M", "minPnL": -1e9},
            {"name": "Full", "allocation": 1.0, "minDuration": "PT1H", "minPnL": -1e9},
        ],
        "autoProgress": True,
        "rollbackThresholds": {"maxDailyLoss": 0.5, "maxDrawdown": 0.5, "maxErrorRate": 0.9},
    },
}
# event time runs ahead of the wall clock (a canary of minutes in seconds)
EXTRA = '\n[ingest]\nmax_future = "PT1H"\n\n[events]\nreplicas = 3\n'
TOP = 'decision_interval = "PT0.2S"\n'


class Shard:
    """Three processes of shard s1, the gateway, and a NATS connection for status and control."""

    def __init__(
        self, tmp: Path, cluster: NatsCluster, operator: str, deadman: float = DEADMAN
    ) -> None:
        self.daemons = [
            Daemon(tmp, n, cluster.urls, EXTRA + operator, algos=[(ALGO, "gw1")], top=TOP)
            for n in ("a", "b", "c")
        ]
        self.gw_log = tmp / "gateway.jsonl"
        keys = [k for d in self.daemons for k in rampart_keys(d.data)]
        self.gateway = subprocess.Popen(
            [
                sys.executable,
                GATEWAY,
                ",".join(cluster.urls),
                "gw1",
                ALGO,
                str(self.gw_log),
                "--deadman",
                str(deadman),
                "--trust",
                ",".join(keys),
                "--ha-log",
                str(self.gw_log),
            ]
        )
        self.urls = cluster.urls
        self.nc: Client | None = None

    async def __aenter__(self) -> Shard:
        self.nc = await nats.connect(servers=self.urls, max_reconnect_attempts=-1)
        for d in self.daemons:
            d.start()
        for d in self.daemons:
            await eventually(partial(d.said, "standby for shard s1"), 60, f"{d.cfg.stem} up")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.nc is not None:
            await self.nc.close()
        for d in self.daemons:
            d.stop()
        self.gateway.terminate()
        self.gateway.wait(20)

    async def status(self) -> StatusReply | None:
        assert self.nc is not None
        try:
            msg = await self.nc.request(SUBJ.status("algorithm"), ALGO.encode(), timeout=1.0)
            return status_reply_decoder.decode(msg.data)
        except Exception:
            return None

    async def in_sync(self) -> StatusReply | None:
        st = await self.status()
        if st is None or st.daemon.ha is None or not st.algorithms:
            return None
        ctl = st.algorithms[0].control
        return st if ctl is not None and ctl.in_sync else None

    def by_pid(self, holder: str) -> Daemon:
        pid = int(holder.rsplit(":", 2)[1])
        (d,) = [d for d in self.daemons if d.proc is not None and d.proc.pid == pid]
        return d

    async def standby_ready(self, leader: Daemon) -> bool:
        return any(
            d is not leader
            and d.proc is not None
            and d.proc.poll() is None
            and d.log.read_text().count("standby for shard s1") >= d.starts
            for d in self.daemons
        )


async def eventually(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if isinstance(got, Awaitable):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s")
        await asyncio.sleep(0.02)


def fills_on_stream(js_msgs: list[tuple[str, bytes]]) -> tuple[int, float]:
    """How many fills of ALGO the events stream holds, and their net quantity (an event on its
    own subject, or inside a gateway's batch)."""
    count, qty = 0, 0.0
    for subject, data in js_msgs:
        events: list[dict[str, Any]]
        if subject.startswith(f"{SUBJ.prefix}.batch."):
            events = msgspec.json.decode(data)
        elif subject.startswith(f"{SUBJ.prefix}.fills."):
            events = [msgspec.json.decode(data)]
        else:
            continue
        for e in events:
            if e.get("type") == "fill" and e.get("algo") == ALGO:
                count += 1
                qty += e["qty"] if e["side"] == "buy" else -e["qty"]
    return count, qty


async def stream_messages(nc: Client, stream: str) -> list[tuple[str, bytes]]:
    js = nc.jetstream(timeout=5.0)
    info = await js.stream_info(stream)
    out: list[tuple[str, bytes]] = []
    if info.state.last_seq == 0:
        return out
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
        assert msg.subject is not None and msg.data is not None
        out.append((msg.subject, msg.data))
    return out


KILL_ROUNDS = 20  # kills while the canary runs
ROLLBACK_ROUNDS = 3  # kills right after an operator's rollback mid-canary, then quotes go on


def test_kill_9_of_the_leader_at_many_moments_of_a_canary(tmp_path: Path) -> None:
    seed = random.SystemRandom().randrange(2**32)
    rnd = random.Random(seed)
    print(f"seed {seed}")
    ops = SigningKey.generate()
    operator = f'\n[[control.operators]]\nname = "ops"\nkey = "{ops.public_key}"\nrole = "admin"\n'
    t0 = time.time_ns() // S * S
    clock = {"ts": t0, "n": 0}

    async def quotes(nc: Client, n: int, step: float) -> None:
        """``n`` quotes of a swinging market (the gateway's momentum strategy trades both
        ways), ``step`` seconds of event time apart."""
        for _ in range(n):
            clock["ts"] += int(step * S)
            clock["n"] += 1
            px = round(100.0 + 2.0 * math.sin(clock["n"] / 4), 4)
            q = Quote(symbol="ES", bid=px, ask=px, ts=clock["ts"])
            await nc.publish(SUBJ.market("ES"), encoder.encode(q))
            await asyncio.sleep(0.005)

    async def scenario(cluster: NatsCluster) -> None:
        async with Shard(tmp_path, cluster, operator) as shard:
            nc = shard.nc
            assert nc is not None
            await quotes(nc, 3, 1.0)
            st = await eventually(shard.in_sync, 30, "the first leader in sync")
            deployed = await control(nc, None, "deploy", "canary-ha", document=CANARY, key=ops)
            assert deployed.ok, deployed.error
            stages: list[int] = []
            takeovers: list[float] = []

            async def kill_round(r: int, during: Callable[[], Awaitable[Any]]) -> StatusReply:
                st = await eventually(shard.in_sync, 30, f"round {r}: in sync")
                assert st.daemon.ha is not None and st.daemon.ha.holder is not None
                leader, term = shard.by_pid(st.daemon.ha.holder), st.daemon.ha.term
                await eventually(lambda: shard.standby_ready(leader), 60, f"round {r}: standby")
                work = asyncio.ensure_future(during())
                await asyncio.sleep(rnd.uniform(0.0, 0.08))
                assert leader.proc is not None
                leader.proc.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                leader.proc.wait()
                await asyncio.gather(work, return_exceptions=True)

                async def newer() -> StatusReply | None:
                    st = await shard.status()
                    ha = st.daemon.ha if st is not None else None
                    return st if ha is not None and ha.term > term else None

                await eventually(newer, 30, f"round {r}: a leader after term {term}")
                takeovers.append(time.monotonic() - killed)
                leader.start()  # back, as a standby
                st = await eventually(shard.in_sync, 30, f"round {r}: in sync after the kill")
                assert isinstance(st, StatusReply)
                if st.deployments:
                    stages.append(st.deployments[0].stage)
                    assert stages == sorted(stages), f"round {r}: a stage went back: {stages}"
                return st

            for r in range(KILL_ROUNDS):  # 20 s of event time per round: stages advance
                await kill_round(r, lambda: quotes(nc, 10, 2.0))
            st = await eventually(shard.in_sync, 30, "in sync after the kills")
            m = st.algorithms[0]
            assert stages[-1] >= 2, (
                f"the canary advanced through its stages: {stages}; {st.deployments}; now "
                f"{clock['ts']}, metrics: ts {m.ts}, stage PnL {m.stage_pnl}, drawdown "
                f"{m.drawdown}, error rate {m.error_rate}, daily PnL {m.daily_pnl}"
            )

            async def rollback() -> None:
                await control(nc, None, "rollback", ALGO, reason="drill", key=ops, timeout=2.0)

            for r in range(ROLLBACK_ROUNDS):
                if r == 0:
                    st = await kill_round(KILL_ROUNDS + r, rollback)
                    if ALGO not in [h.algo for h in st.daemon.halted]:  # the kill beat it
                        reply = await control(nc, None, "rollback", ALGO, reason="drill", key=ops)
                        assert reply.ok, reply.error
                else:  # minutes of event time: a canary not halted would advance its stage
                    await kill_round(KILL_ROUNDS + r, lambda: quotes(nc, 10, 15.0))
            st = await eventually(shard.in_sync, 30, "in sync at the end")
            assert [h.algo for h in st.daemon.halted] == [ALGO]

            # every fill on the stream applied once: the leader's count and position are the
            # stream's, once it has applied the stream's last event
            async def caught_up() -> StatusReply | None:
                st = await shard.status()
                info = await nc.jetstream().stream_info("rampart_events")
                ingest = st.daemon.ingest if st is not None else None
                return (
                    st
                    if ingest is not None
                    and ingest.events_seq == info.state.last_seq
                    and ingest.events_behind == 0
                    else None
                )

            st = await eventually(caught_up, 30, "the leader caught up with the events stream")
            final = await stream_messages(nc, "rampart_events")
            count, qty = fills_on_stream(final)
            algo = st.algorithms[0]
            held = {p.symbol: p.qty for p in algo.positions}.get("ES", 0.0)
            assert count > 0, "the gateway traded"
            assert algo.fills == count, (algo.fills, count)
            assert abs(held - qty) < 1e-9, (held, qty)

            trips = [x for x in lines(shard.gw_log) if x["kind"] == "deadman"]
            assert not trips, trips
            log = [x for x in lines(shard.gw_log) if x.get("algo") == ALGO]
            first_halt = next(i for i, x in enumerate(log) if x["kind"] == "halt")
            raised = [
                x
                for x in log[first_halt:]
                if x["kind"] == "resume"
                or (x["kind"] == "set_allocation" and (x["allocation"] or 0) > 0)
            ]
            assert not raised, raised
            takeovers.sort()
            print(
                f"{len(takeovers)} kills, stages {stages}: status from the new leader after "
                f"{takeovers[0]:.2f} to {takeovers[-1]:.2f} s, median "
                f"{takeovers[len(takeovers) // 2]:.2f} s; {count} fills, net {qty}"
            )
        for d in shard.daemons:
            store = Store(d.data / "rampart.db", readonly=True)
            try:
                result = store.verify_audit()
            finally:
                store.close()
            assert result.ok, result.problems

    with NatsCluster(tmp_path / "cluster") as cluster:
        asyncio.run(scenario(cluster))


# A node that held the lease bucket's stream leader takes JetStream a few seconds to replace
# (4-7 s measured): longer than the lease, so the leader steps down and a standby takes over
# once JetStream answers. The gateways' dead-man's switch must outlast that (docs/ha.md).
NODE_DEADMAN = 15.0


def test_a_nats_node_killed_under_a_running_shard(tmp_path: Path) -> None:
    ops = SigningKey.generate()
    operator = f'\n[[control.operators]]\nname = "ops"\nkey = "{ops.public_key}"\nrole = "admin"\n'

    async def scenario(cluster: NatsCluster) -> None:
        async with Shard(tmp_path, cluster, operator, deadman=NODE_DEADMAN) as shard:
            nc = shard.nc
            assert nc is not None
            st = await eventually(shard.in_sync, 30, "the first leader in sync")
            assert st.daemon.server is not None and st.daemon.ha is not None
            term = st.daemon.ha.term
            # the node the leader is connected to dies
            port = int(st.daemon.server.rsplit(":", 1)[1])
            (node,) = [
                n for n, p in zip(cluster.names, cluster.client_ports, strict=True) if p == port
            ]
            cluster.kill(node)
            killed = time.monotonic()
            await asyncio.sleep(3.0)  # the client reconnects; the lease either holds or moves
            st = await eventually(shard.in_sync, 30, "in sync after the node died")
            assert st.daemon.ha is not None and st.daemon.ha.term >= term
            print(
                f"node {node} killed: term {term} -> {st.daemon.ha.term}, in sync again "
                f"{time.monotonic() - killed:.1f} s later"
            )
            # the shard still acts, and its standbys still follow
            reply = await control(nc, None, "rollback", ALGO, reason="after the node", key=ops)
            assert reply.ok, reply.error
            st = await eventually(
                lambda: _halted(shard), 30, "the rollback latched after the node died"
            )
            leaders = [
                d
                for d in shard.daemons
                if d.proc is not None and d.proc.poll() is None and d.said("leads shard s1")
            ]
            assert leaders, "a leader"
            trips = [x for x in lines(shard.gw_log) if x["kind"] == "deadman"]
            assert not trips, trips
            cluster.start_node(node)  # back; the streams catch it up

            def followed() -> bool:  # every process holds the rollback, in one chain
                for d in shard.daemons:
                    if d.proc is not None and d.proc.poll() is not None:
                        d.start()  # a deposed leader exits 75: its supervisor starts it again
                return all("rollback" in kinds(d) for d in shard.daemons)

            await eventually(followed, 30, "the standbys applying the rollback")
        for d in shard.daemons:
            store = Store(d.data / "rampart.db", readonly=True)
            try:
                result = store.verify_audit()
            finally:
                store.close()
            assert result.ok, result.problems

    with NatsCluster(tmp_path / "cluster") as cluster:
        asyncio.run(scenario(cluster))


def kinds(d: Daemon) -> list[str]:
    store = Store(d.data / "rampart.db", readonly=True)
    try:
        return [r.kind for r in store.audit()]
    finally:
        store.close()


async def _halted(shard: Shard) -> StatusReply | None:
    st = await shard.in_sync()
    return st if st is not None and [h.algo for h in st.daemon.halted] == [ALGO] else None
