"""Active/standby (docs/ha.md) with separate processes on a real 3-node nats-server cluster:
two ``rampart run`` for one shard and a reference gateway. The leader latches a halt and is
killed (-9): the standby, which followed the state stream, takes over with a newer term before
the gateway's dead-man's switch trips, keeps the halt, and the audit log is one chain across
both. The killed one comes back as a standby; the leader is stopped (SIGSTOP) past its lease:
the standby takes over, and the stopped one, resumed, finds itself deposed and exits (75)."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
from cluster import NatsCluster
from ha_daemons import Daemon, cli, latched, lines, status, wait_for
from support import control, rampart_keys

from rampart.protocol import StatusReply, Subjects, status_reply_decoder
from rampart.signing import SigningKey
from rampart.store import Store

GATEWAY = str(Path(__file__).with_name("gateway_proc.py"))
DEADMAN = 5.0  # s; the takeover (lease ttl 1 s) is measured against it, not bounded by it


def test_a_standby_takes_over_from_a_killed_and_from_a_stopped_leader(tmp_path: Path) -> None:
    with NatsCluster(tmp_path / "cluster") as cluster:
        a, b = Daemon(tmp_path, "a", cluster.urls), Daemon(tmp_path, "b", cluster.urls)
        keys = rampart_keys(a.data) + rampart_keys(b.data)
        gw_log = tmp_path / "gateway.jsonl"
        gateway = subprocess.Popen(
            [
                sys.executable,
                GATEWAY,
                ",".join(cluster.urls),
                "gw1",
                "alpha",
                str(gw_log),
                "--deadman",
                str(DEADMAN),
                "--trust",
                ",".join(keys),
                "--ha-log",
                str(gw_log),
            ]
        )
        try:
            a.start()
            wait_for(lambda: a.said("leads shard s1"), 60, "daemon a leading")
            b.start()
            wait_for(lambda: b.said("standby for shard s1"), 60, "daemon b as a standby")

            def terms() -> list[int]:
                return [x["term"] for x in lines(gw_log) if x["kind"] == "term"]

            wait_for(lambda: 1 in terms(), 30, "the gateway hearing term 1")
            # the leader decides something durable: alpha rolled back and latched halted
            out = cli(a, "rollback", "alpha", "--reason", "drill")
            assert out.returncode == 0, out.stdout + out.stderr
            wait_for(lambda: any(x["kind"] == "halt" for x in lines(gw_log)), 20, "alpha halted")
            wait_for(lambda: latched(a) == ["alpha"], 20, "alpha's halt latched (stored)")
            # kill -9 of the leader
            assert a.proc is not None
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait()
            killed = time.monotonic_ns()
            wait_for(lambda: 2 in terms(), 30, "the standby's heartbeat, term 2, at the gateway")
            took = next(x["mono"] for x in lines(gw_log) if x["kind"] == "term" and x["term"] == 2)
            print(f"takeover after kill -9: {(took - killed) / 1e6:.0f} ms")
            assert b.said("leads shard s1 (term 2")
            # the halt survived the takeover: b reports it, from the replicated latch
            reply = status(b)
            assert [h["algo"] for h in reply["daemon"]["halted"]] == ["alpha"], reply
            assert reply["daemon"]["ha"]["role"] == "leader"
            assert reply["daemon"]["ha"]["term"] == 2
            assert not any(x["kind"] == "deadman" for x in lines(gw_log)), lines(gw_log)

            # a comes back as a standby; b is stopped past its lease
            a.start()
            wait_for(
                lambda: (
                    a.said("standby for shard s1")
                    and a.log.read_text().count("standby for shard s1") >= 1
                ),
                60,
                "daemon a back as a standby",
            )
            assert b.proc is not None
            b.proc.send_signal(signal.SIGSTOP)
            stopped = time.monotonic_ns()
            wait_for(lambda: 3 in terms(), 30, "a's heartbeat, term 3")
            took = next(x["mono"] for x in lines(gw_log) if x["kind"] == "term" and x["term"] == 3)
            print(f"takeover after SIGSTOP: {(took - stopped) / 1e6:.0f} ms")
            b.proc.send_signal(signal.SIGCONT)
            assert b.proc.wait(30) == 75, "the deposed leader exits with 75"
            assert b.said("no longer leads shard s1")
            assert not any(x["kind"] == "deadman" for x in lines(gw_log)), lines(gw_log)
            # a standby stops at once when asked (it is not waiting to lead)
            b.start()
            wait_for(
                lambda: b.log.read_text().count("standby for shard s1") >= 2,
                60,
                "daemon b back as a standby",
            )
            assert b.proc is not None
            b.proc.terminate()
            assert b.proc.wait(20) == 0
            assert a.proc is not None and a.proc.poll() is None  # a still leads
        finally:
            for d in (a, b):
                d.stop()
            gateway.terminate()
            gateway.wait(20)
        # one audit chain across the three terms, in each process's store
        for d in (a, b):
            store = Store(d.data / "rampart.db", readonly=True)
            try:
                result = store.verify_audit()
                kinds = [r.kind for r in store.audit()]
            finally:
                store.close()
            assert result.ok, result.problems
            assert kinds.count("leader_elected") >= 2, kinds


def test_a_leader_whose_store_cannot_commit_a_replicated_write_steps_down(tmp_path: Path) -> None:
    """A write reaches the state stream, then fails to commit in the leader's own store (a disk
    error: an error failpoint here, on an operator's rollback of alpha). The standbys have the
    write, the leader does not: it must not fail closed and halt the desk for a fault only its
    disk has. It refuses every later write, stops sending, gives its lease back and exits 75;
    the standby leads on from the stream (alpha's rollback included) with beta never halted and
    no dead-man trip, and the stepped-down process, started again, catches up as a standby."""
    algos = (("alpha", "gw1"), ("beta", "gw1"))
    with NatsCluster(tmp_path / "cluster") as cluster:
        a = Daemon(tmp_path, "a", cluster.urls, algos=algos)
        b = Daemon(tmp_path, "b", cluster.urls, algos=algos)
        keys = rampart_keys(a.data) + rampart_keys(b.data)
        gw_log = tmp_path / "gateway.jsonl"
        gateway = subprocess.Popen(
            [
                sys.executable,
                GATEWAY,
                ",".join(cluster.urls),
                "gw1",
                "alpha,beta",
                str(gw_log),
                "--deadman",
                str(DEADMAN),
                "--trust",
                ",".join(keys),
                "--ha-log",
                str(gw_log),
            ]
        )

        def terms() -> list[int]:
            return [x["term"] for x in lines(gw_log) if x["kind"] == "term"]

        try:
            # a leads; its first replicated write that saves a rollback record fails to commit
            # in its own store
            a.start(env={"RAMPART_FAILPOINT": "commit_after_replication.rollback:1:error"})
            wait_for(lambda: a.said("leads shard s1"), 60, "daemon a leading")
            b.start()
            wait_for(lambda: b.said("standby for shard s1"), 60, "daemon b as a standby")
            wait_for(lambda: 1 in terms(), 30, "the gateway hearing term 1")
            cli(a, "rollback", "alpha", "--reason", "drill", "--timeout", "2")
            assert a.proc is not None
            assert a.proc.wait(60) == 75, "the leader steps down with 75"
            assert a.said("steps down (exit 75)")
            assert not a.said("FAIL CLOSED")
            wait_for(lambda: 2 in terms(), 30, "b leading, term 2, at the gateway")
            assert b.said("leads shard s1 (term 2")
            # the rollback a could not commit is b's: alpha latched, and halted at the gateway
            wait_for(lambda: latched(b) == ["alpha"], 30, "alpha's rollback, from the stream")
            wait_for(
                lambda: any(x["kind"] == "halt" and x["algo"] == "alpha" for x in lines(gw_log)),
                30,
                "alpha halted",
            )
            gw = lines(gw_log)
            assert not any(x["kind"] == "deadman" for x in gw), gw
            assert not any(x["kind"] == "halt" and x["algo"] == "beta" for x in gw), gw
            # a again, without the fault: it catches up as a standby, the lost write included
            a.start()
            wait_for(
                lambda: a.log.read_text().count("standby for shard s1") >= 2,
                60,
                "daemon a back as a standby",
            )
            time.sleep(1.0)  # a few of the standby's follow rounds
        finally:
            for d in (a, b):
                d.stop()
            gateway.terminate()
            gateway.wait(20)
        heads = []
        for d in (a, b):
            store = Store(d.data / "rampart.db", readonly=True)
            try:
                result = store.verify_audit()
                heads.append(store.audit_head())
                kinds = [r.kind for r in store.audit()]
            finally:
                store.close()
            assert result.ok, result.problems
            assert "rollback" in " ".join(kinds), kinds
        assert heads[0] == heads[1], heads  # one history in both stores


# ---- kill -9 of the leader at many moments of rollbacks and releases ----------------------

ROUNDS = 20


def test_kill_9_of_the_leader_at_many_moments_of_rollbacks_and_releases(tmp_path: Path) -> None:
    """Three processes for one shard. Each round the operator rolls alpha back (or releases it)
    through whoever leads, and the leader is killed (-9) a random moment after the request left:
    before it arrives, while the rollback runs, after. Each round ends with a new leader in a
    newer term and the gateway doing what that leader wants (in sync); the gateway's dead-man's
    switch never trips; every store's audit log is one unbroken chain."""
    seed = random.SystemRandom().randrange(2**32)
    rnd = random.Random(seed)
    print(f"seed {seed}")
    ops = SigningKey.generate()
    operator = f'\n[[control.operators]]\nname = "ops"\nkey = "{ops.public_key}"\nrole = "admin"\n'

    async def scenario(cluster: NatsCluster) -> None:
        daemons = [Daemon(tmp_path, n, cluster.urls, extra=operator) for n in ("a", "b", "c")]
        keys = [k for d in daemons for k in rampart_keys(d.data)]
        gw_log = tmp_path / "gateway.jsonl"
        gateway = subprocess.Popen(
            [
                sys.executable,
                GATEWAY,
                ",".join(cluster.urls),
                "gw1",
                "alpha",
                str(gw_log),
                "--deadman",
                str(DEADMAN),
                "--trust",
                ",".join(keys),
                "--ha-log",
                str(gw_log),
            ]
        )
        nc = await nats.connect(servers=cluster.urls, max_reconnect_attempts=-1)
        subj = Subjects()

        async def status() -> StatusReply | None:
            try:
                msg = await nc.request(subj.status("algorithm"), b"alpha", timeout=1.0)
                return status_reply_decoder.decode(msg.data)
            except Exception:
                return None

        async def eventually(cond: Callable[[], Any], timeout: float, what: str) -> Any:
            deadline = time.monotonic() + timeout
            while True:
                got = await cond()
                if got:
                    return got
                if time.monotonic() > deadline:
                    raise AssertionError(f"{what} within {timeout}s")
                await asyncio.sleep(0.02)

        def by_pid(holder: str) -> Daemon:
            pid = int(holder.rsplit(":", 2)[1])
            (d,) = [d for d in daemons if d.proc is not None and d.proc.pid == pid]
            return d

        try:
            for d in daemons:
                d.start()
            for d in daemons:

                async def up(d: Daemon = d) -> bool:
                    return d.said("standby for shard s1")

                await eventually(up, 60, f"{d.cfg.stem} up")
            takeovers: list[float] = []
            for r in range(ROUNDS):

                async def in_sync() -> StatusReply | None:
                    st = await status()
                    ok = st is not None and st.daemon.ha is not None and st.algorithms
                    control = st.algorithms[0].control if ok else None  # type: ignore[union-attr]
                    return st if control is not None and control.in_sync else None

                st = await eventually(in_sync, 30, f"round {r}: alpha in sync")
                assert st.daemon.ha is not None and st.daemon.ha.holder is not None
                leader, term = by_pid(st.daemon.ha.holder), st.daemon.ha.term

                # a standby ready to take over (the one killed last round may still be starting)
                async def standby(leader: Daemon = leader) -> bool:
                    return any(
                        d is not leader
                        and d.proc is not None
                        and d.proc.poll() is None
                        and d.log.read_text().count("standby for shard s1") >= d.starts
                        for d in daemons
                    )

                await eventually(standby, 60, f"round {r}: a standby")
                halted = [h.algo for h in st.daemon.halted] == ["alpha"]
                verb = "release" if halted else "rollback"
                request = asyncio.ensure_future(
                    control(nc, None, verb, "alpha", reason=f"round {r}", key=ops, timeout=2.0)
                )
                await asyncio.sleep(rnd.uniform(0.0, 0.03))
                assert leader.proc is not None
                leader.proc.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                leader.proc.wait()
                await asyncio.gather(request, return_exceptions=True)

                async def newer(term: int = term) -> StatusReply | None:
                    st = await status()
                    ha = st.daemon.ha if st is not None else None
                    return st if ha is not None and ha.term > term else None

                await eventually(newer, 30, f"round {r}: a leader after term {term}")
                takeovers.append(time.monotonic() - killed)
                leader.start()  # back, as a standby
            st = await eventually(in_sync, 30, "alpha in sync at the end")
            # a release by the last leader is stored with its term: a halt an earlier leader
            # sent is judged against it by (term, epoch), whatever the two hosts' clocks say
            if [h.algo for h in st.daemon.halted] != ["alpha"]:
                back = await control(nc, None, "rollback", "alpha", reason="end", key=ops)
                assert back.ok, back
            freed = await control(nc, None, "release", "alpha", reason="end", key=ops)
            assert freed.ok, freed
            st = await eventually(in_sync, 30, "alpha released and in sync at the end")
            assert st.daemon.ha is not None and not st.daemon.halted
            intent = st.algorithms[0].control.intent
            assert intent.released_term == st.daemon.ha.term >= 2, intent

            # the state stream was snapshotted and purged as it went (ha.snapshot_every = 30),
            # and standbys restarted behind it came back
            async def purged() -> bool:
                info = await nc.jetstream().stream_info("RAMPART_STATE_s1")
                return info.state.first_seq > 1

            await eventually(purged, 10, "the state stream purged after a snapshot")
            assert any(d.said("snapshot at") for d in daemons)
            trips = [x for x in lines(gw_log) if x["kind"] == "deadman"]
            assert not trips, trips
            takeovers.sort()
            print(
                f"{ROUNDS} kills: status from the new leader after {takeovers[0]:.2f} to "
                f"{takeovers[-1]:.2f} s, median {takeovers[len(takeovers) // 2]:.2f} s"
            )
        finally:
            await nc.close()
            for d in daemons:
                d.stop()
            gateway.terminate()
            gateway.wait(20)
        for d in daemons:
            store = Store(d.data / "rampart.db", readonly=True)
            try:
                result = store.verify_audit()
            finally:
                store.close()
            assert result.ok, result.problems

    with NatsCluster(tmp_path / "cluster") as cluster:
        asyncio.run(scenario(cluster))
