"""Takeover time of a standby (docs/ha.md): a real 3-node nats-server cluster on loopback, two
``rampart run`` processes for one shard ([ha], replicas 3), and the reference gateway in its own
process. Each round kills the leader (-9, or SIGSTOP past its lease with ``--stop``), times
from the signal to the new leader's first sidecar heartbeat at the gateway (CLOCK_MONOTONIC: one
clock for every process of the host), and starts the old one again as a standby.

Run: ``.venv/bin/python benches/takeover.py [--rounds 20] [--stop]``
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cluster import NatsCluster
from support import live_config, rampart_keys

GATEWAY = str(Path(__file__).resolve().parents[1] / "tests" / "gateway_proc.py")
TMP = Path(".")


def lines(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


STUCK: list[subprocess.Popen[bytes]] = []  # dumped (SIGABRT: faulthandler) when a wait fails


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            for proc in STUCK:  # every task's stack (SIGUSR1), then every thread's (SIGABRT)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
            for proc in STUCK:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGABRT)
            raise SystemExit(f"{what}: not within {timeout}s (daemon logs in {TMP})")
        time.sleep(0.005)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--stop", action="store_true", help="SIGSTOP the leader instead of kill -9")
    p.add_argument("--deadman", type=float, default=3.0, help="the gateway's dead-man timeout, s")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rampart-takeover-"))
    global TMP
    TMP = tmp
    with NatsCluster(tmp / "cluster") as cluster:
        procs: dict[str, subprocess.Popen[bytes] | None] = {"a": None, "b": None}
        cfgs = {}
        for name in procs:
            text = live_config([("alpha", "gw1")]).format(data_dir=tmp / name)
            text += f"\n[nats]\nservers = {json.dumps(cluster.urls)}\n"
            text += '\n[ha]\nenabled = true\nreplicas = 3\nshard = "s1"\n'
            cfgs[name] = tmp / f"{name}.toml"
            cfgs[name].write_text(text)
        keys = rampart_keys(tmp / "a") + rampart_keys(tmp / "b")
        gw_log = tmp / "gateway.jsonl"

        def start(name: str) -> None:
            with (tmp / f"{name}.log").open("ab") as out:
                procs[name] = proc = subprocess.Popen(
                    [sys.executable, "-m", "rampart", "run", "--config", str(cfgs[name])],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
                STUCK.append(proc)

        def said(name: str, text: str) -> int:
            log = tmp / f"{name}.log"
            return log.read_text().count(text) if log.exists() else 0

        def terms() -> list[tuple[int, int]]:
            return [(x["term"], x["mono"]) for x in lines(gw_log) if x["kind"] == "term"]  # type: ignore[misc]

        gateway = subprocess.Popen(
            [sys.executable, GATEWAY, ",".join(cluster.urls), "gw1", "alpha", str(gw_log),
             "--deadman", str(args.deadman), "--trust", ",".join(keys), "--ha-log", str(gw_log)]
        )  # fmt: skip
        samples: list[float] = []
        try:
            start("a")
            wait_for(lambda: said("a", "leads shard s1"), 60, "a leading")
            start("b")
            wait_for(lambda: said("b", "standby for shard s1"), 60, "b standby")
            leader, standby = "a", "b"
            for r in range(args.rounds):
                wait_for(lambda r=r: terms() and terms()[-1][0] >= r + 1, 30, "the leader's term")
                term = terms()[-1][0]
                time.sleep(0.3)  # somewhere in the lease's renewal cycle
                proc = procs[leader]
                assert proc is not None
                proc.send_signal(signal.SIGSTOP if args.stop else signal.SIGKILL)
                t0 = time.monotonic_ns()
                wait_for(lambda term=term: any(t > term for t, _ in terms()), 30, "a takeover")
                t1 = next(m for t, m in terms() if t > term)
                samples.append((t1 - t0) / 1e6)
                if args.stop:
                    proc.send_signal(signal.SIGCONT)
                proc.wait(30)
                before = said(leader, "standby for shard s1")
                start(leader)
                wait_for(
                    lambda leader=leader, before=before: (
                        said(leader, "standby for shard s1") > before
                    ),
                    60,
                    "the old leader back as a standby",
                )
                leader, standby = standby, leader
                print(f"round {r + 1}: {samples[-1]:.0f} ms", flush=True)
        finally:
            for proc in procs.values():
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGCONT)
                    proc.terminate()
                    proc.wait(20)
            gateway.terminate()
            gateway.wait(20)
        trips = sum(1 for x in lines(gw_log) if x["kind"] == "deadman")
    s = sorted(samples)
    p99 = s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]
    how = "SIGSTOP past the lease" if args.stop else "kill -9"
    print(
        f"takeover after {how}, {len(s)} rounds: p50 {statistics.median(s):.0f} ms, "
        f"p99 {p99:.0f} ms, max {s[-1]:.0f} ms; the gateway's dead-man timeout "
        f"{args.deadman * 1000:.0f} ms: {trips} trips"
    )


if __name__ == "__main__":
    main()
