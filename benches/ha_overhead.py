"""What high availability costs (issue 14, docs/ha.md): ingest and tick-to-halt of a shard run
as leader + standby against a single daemon, in one run on one real 3-node nats-server cluster
on loopback. Both are up the whole time, each with its own subject prefix (``single``, ``ha``)
and its own reference gateway (its own process) hosting ``--algos`` algorithms with a drawdown
limit; the measurements alternate between them (ABBA), so the machine's noise falls on both.

- tick-to-halt: each algorithm holds a position (a fill on the durable events stream at set-up);
  a quote at half the price breaches its drawdown limit. Timed from the publish to the gateway's
  halt handler (CLOCK_MONOTONIC: one clock for every process of the host). Each algorithm is
  breached once.
- ingest: ``--quotes`` quotes published as fast as one nats-py client can, timed from the first
  publish until the daemon's status counts them all (status polled every 5 ms).

In HA the leader replicates every store write to the state stream before it commits, and a
standby follows on the same 2 cores; the halt itself leaves before any write.

Run: ``.venv/bin/python benches/ha_overhead.py [--algos 100] [--quotes 20000] [--rounds 4]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cluster import NatsCluster
from support import rampart_keys

from rampart.protocol import Fill, Quote, StatusRequest, Subjects, encoder, status_reply_decoder

GATEWAY = str(Path(__file__).resolve().parents[1] / "tests" / "gateway_proc.py")
CONFIGS = ("single", "ha")


def daemon_config(data: Path, prefix: str, urls: list[str], algos: int, ha: bool) -> str:
    text = (
        f'data_dir = "{data}"\nsubject_prefix = "{prefix}"\nname = "{prefix}"\n'
        'heartbeat_interval = "PT0.05S"\n\n'
        '[triggers]\ngateway_heartbeat_timeout = "PT1H"\nmarket_data_timeout = "PT1H"\n'
        'nats_disconnect = false\nposition_drift = "P365D"\n\n'
        f"[nats]\nservers = {json.dumps(urls)}\n\n[events]\nreplicas = 3\n"
    )
    if ha:
        text += f'\n[ha]\nenabled = true\nshard = "{prefix}"\nreplicas = 3\n'
    for i in range(algos):
        text += (
            f'\n[[algorithms]]\nid = "a{i}"\nversion = "1"\ngateway = "gw1"\n'
            "capital = 100000\nlimits = { max_drawdown = 0.05 }\n"
        )
    return text


class Deployment:
    """One daemon (or leader + standby) with its gateway, on its own prefix."""

    def __init__(self, base: Path, name: str, urls: list[str], algos: int) -> None:
        self.name = name
        self.subj = Subjects(name)
        self.algos = [f"a{i}" for i in range(algos)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.datas = [base / f"{name}-{k}" for k in range(2 if name == "ha" else 1)]
        self.cfgs = []
        for d in self.datas:
            cfg = base / f"{d.name}.toml"
            cfg.write_text(daemon_config(d, name, urls, algos, name == "ha"))
            self.cfgs.append(cfg)
        self.gw_log = base / f"{name}-gateway.jsonl"
        self.logs = [base / f"{d.name}.log" for d in self.datas]
        self.urls = urls
        self._read = 0
        self.halts: dict[str, int] = {}

    def start(self) -> None:
        for k, (cfg, log) in enumerate(zip(self.cfgs, self.logs, strict=True)):
            with log.open("ab") as out:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "rampart", "run", "--config", str(cfg)],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
            if self.name == "ha":  # the first leads, the second stands by
                said = "leads shard" if k == 0 else "standby for shard"
                wait(lambda log=log, said=said: said in log.read_text(), 60, f"{log}: {said}")
        keys = [k for d in self.datas for k in rampart_keys(d)]
        self.procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    GATEWAY,
                    ",".join(self.urls),
                    "gw1",
                    ",".join(self.algos),
                    str(self.gw_log),
                    "--deadman",
                    "3600",
                    "--trust",
                    ",".join(keys),
                    "--prefix",
                    self.name,
                ]
            )
        )

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()

    def new_halts(self) -> None:
        if not self.gw_log.exists():
            return
        with self.gw_log.open() as f:
            f.seek(self._read)
            chunk = f.read()
        end = chunk.rfind("\n") + 1
        self._read += len(chunk[:end].encode())
        for line in chunk[:end].splitlines():
            x = json.loads(line)
            if x.get("kind") == "halt":
                self.halts.setdefault(x["algo"], x["mono"])

    async def status(self, nc: Client) -> Any:
        body = encoder.encode(StatusRequest(limit=1))
        msg = await nc.request(self.subj.status("algorithms"), body, timeout=2.0)
        return status_reply_decoder.decode(msg.data)


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {timeout}s")
        time.sleep(0.01)


async def eventually(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = await cond()
        except Exception:
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.005)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q / 100))]


async def bench(deps: dict[str, Deployment], args: argparse.Namespace) -> dict[str, Any]:
    nc = await nats.connect(servers=deps["single"].urls)
    js = nc.jetstream(timeout=10.0)
    try:
        for dep in deps.values():
            await eventually(
                lambda dep=dep: _gateway_seen(dep, nc), 60, f"{dep.name}: the gateway heard"
            )
        # set-up: every algorithm holds 1,000 of its own symbol at 100 (fills on the events
        # stream), marked at 100
        now = time.time_ns()
        for dep in deps.values():
            for i, a in enumerate(dep.algos):
                fill = Fill(algo=a, symbol=f"S{i}", side="buy", qty=1000, price=100.0, ts=now)
                await js.publish(
                    dep.subj.fills("gw1", a),
                    encoder.encode(fill),
                    headers={"Nats-Msg-Id": f"{dep.name}-{a}-setup"},
                )
                q = Quote(symbol=f"S{i}", bid=100.0, ask=100.0, ts=now + 1)
                await nc.publish(dep.subj.market(f"S{i}"), encoder.encode(q))
            await nc.flush()

            async def held(dep: Deployment = dep) -> bool:
                st = await dep.status(nc)
                return (
                    st.daemon.ingest.events_seq is not None
                    and st.daemon.ingest.events_seq >= len(dep.algos)
                )

            await eventually(held, 60, f"{dep.name}: the set-up fills applied")
        await asyncio.sleep(1.0)  # the checkpoints and heartbeats after the set-up
        t2h: dict[str, list[float]] = {c: [] for c in CONFIGS}
        ingest: dict[str, list[float]] = {c: [] for c in CONFIGS}
        # tick-to-halt first, one algorithm each, ABBA: the gateways subscribe to all market
        # data, and the ingest rounds' quotes would keep them busy for seconds
        n = len(deps["single"].algos)
        for i in range(n):
            order = CONFIGS if i % 4 in (0, 3) else CONFIGS[::-1]
            for c in order:
                t2h[c].append(await tick_to_halt(deps[c], nc, i))
        # ingest rounds, ABBA
        for r in range(args.rounds):
            order = CONFIGS if r % 2 == 0 else CONFIGS[::-1]
            for c in order:
                ingest[c].append(await ingest_rate(deps[c], nc, args.quotes))
        return {"t2h_ms": t2h, "ingest_per_s": ingest}
    finally:
        await nc.close()


async def _gateway_seen(dep: Deployment, nc: Client) -> bool:
    st = await dep.status(nc)
    return any(g.gateway == "gw1" for g in st.daemon.gateways)


async def ingest_rate(dep: Deployment, nc: Client, quotes: int) -> float:
    before = (await dep.status(nc)).daemon.ingest.ingested
    base = time.time_ns()
    payloads = [
        encoder.encode(Quote(symbol=f"X{j % 50}", bid=10.0, ask=10.0, ts=base + j))
        for j in range(quotes)
    ]
    subjects = [dep.subj.market(f"X{j % 50}") for j in range(quotes)]
    start = time.perf_counter()
    for subject, payload in zip(subjects, payloads, strict=True):
        await nc.publish(subject, payload)
    await nc.flush()

    async def done() -> bool:
        st = await dep.status(nc)
        return bool(st.daemon.ingest.ingested - before >= quotes)

    await eventually(done, 120, f"{dep.name}: {quotes} quotes ingested")
    return quotes / (time.perf_counter() - start)


async def tick_to_halt(dep: Deployment, nc: Client, i: int) -> float:
    algo = dep.algos[i]
    q = Quote(symbol=f"S{i}", bid=50.0, ask=50.0, ts=time.time_ns())
    payload = encoder.encode(q)
    start = time.monotonic_ns()
    await nc.publish(dep.subj.market(f"S{i}"), payload)
    await nc.flush()
    deadline = time.monotonic() + 10
    while algo not in dep.halts:
        dep.new_halts()
        if time.monotonic() > deadline:
            raise SystemExit(f"{dep.name}: {algo} not halted within 10 s")
        await asyncio.sleep(0.0005)
    return (dep.halts[algo] - start) / 1e6


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    t2h, ingest = results["t2h_ms"], results["ingest_per_s"]
    print(f"\n{args.algos} algorithms per deployment, {args.rounds} ingest rounds, ABBA")
    print("  tick-to-halt (publish -> gateway halt handler), ms:")
    for c in CONFIGS:
        v = t2h[c]
        print(
            f"    {c:>6}: n {len(v)}, p50 {pct(v, 50):.3f}, p99 {pct(v, 99):.3f}, max {max(v):.3f}"
        )
    print(
        f"    ha / single: p50 {pct(t2h['ha'], 50) / pct(t2h['single'], 50):.2f}x, "
        f"p99 {pct(t2h['ha'], 99) / pct(t2h['single'], 99):.2f}x"
    )
    print("  ingest, quotes/s (median of rounds):")
    for c in CONFIGS:
        print(
            f"    {c:>6}: {statistics.median(ingest[c]):,.0f}  "
            f"({', '.join(f'{x:,.0f}' for x in ingest[c])})"
        )
    ratio = statistics.median(ingest["ha"]) / statistics.median(ingest["single"])
    print(f"    ha / single: {ratio:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", type=int, default=100, help="algorithms per deployment")
    p.add_argument("--quotes", type=int, default=20_000, help="quotes per ingest round")
    p.add_argument("--rounds", type=int, default=4, help="ingest rounds per deployment")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="rampart-ha-overhead-"))
    with NatsCluster(base / "cluster") as cluster:
        deps = {c: Deployment(base, c, cluster.urls, args.algos) for c in CONFIGS}
        try:
            for dep in deps.values():
                dep.start()
            results = asyncio.run(bench(deps, args))
        finally:
            for dep in deps.values():
                dep.stop()
    report(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
