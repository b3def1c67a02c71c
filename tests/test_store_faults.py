"""A store that cannot be written fails Rampart closed (issue 10), tested from outside: the daemon
and a gateway run as their own processes, the daemon's data_dir on a small tmpfs that the test
fills up mid-run. Rampart must halt every algorithm at the gateway, say so in status, refuse
deploys, and after the space is freed and it restarts, come back halted, resuming nothing by
itself. The same for store files made read-only under the running daemon. Needs root (to mount
the tmpfs; to run the daemon bound by file permissions: setpriv): skipped otherwise, with the
reason."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from support import control, rampart_keys, spawn
from test_faults import GATEWAY, no_increase_while_halted, until

from rampart.embedded import EmbeddedNatsServer
from rampart.protocol import (
    Subjects,
    heartbeat_decoder,
    status_reply_decoder,
)

SUBJ = Subjects()

CONFIG = """
data_dir = "{data_dir}"
heartbeat_interval = "PT0.1S"
checkpoint_interval = "PT0.1S"

[triggers]
gateway_heartbeat_timeout = "PT1H"
market_data_timeout = "PT1H"
nats_disconnect = false

[[algorithms]]
id = "alpha"
version = "1"
gateway = "gw1"
capital = 100000

[[algorithms]]
id = "beta"
version = "1"
gateway = "gw1"
capital = 100000
"""

DEPLOY = {
    "deploymentId": "after-the-fault",
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


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (the full-disk test runs as root in CI)")
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_up(path: Path) -> Path:
    """Write a file until the disk is full; returns it (delete it to free the space)."""
    ballast = path / "ballast"
    with contextlib.suppress(OSError), ballast.open("wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    return ballast


# Root without the capabilities that let it write what file permissions forbid: the daemon is then
# bound by them like any user, and still reads the interpreter and the venv (under /root here).
_NO_DAC = "-dac_override,-dac_read_search"
BOUND_BY_PERMISSIONS: tuple[str, ...] = (
    "setpriv", "--bounding-set", _NO_DAC, "--inh-caps", _NO_DAC, "--",
)  # fmt: skip


def bound_by_permissions(tmp: Path) -> tuple[str, ...]:
    """How to run a process that a ``chmod 0444`` stops writing: as it is when not root, under
    ``setpriv`` as root. Skips, with the reason, when neither works here."""
    prefix = BOUND_BY_PERMISSIONS if os.geteuid() == 0 else ()
    if prefix and shutil.which(prefix[0]) is None:
        pytest.skip("runs as root and needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    probe = tmp / "read-only-probe"
    probe.write_bytes(b"")
    probe.chmod(0o444)
    code = f"import rampart; open({str(probe)!r}, 'ab')"
    done = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True)
    probe.unlink()
    if "PermissionError" not in done.stderr:
        pytest.skip(
            "cannot run the daemon bound by file permissions here "
            f"({' '.join(prefix) or 'as is'}): {done.stderr.strip()[-300:] or 'it wrote'}"
        )
    return prefix


class World:
    """A daemon and a gateway process; what the test sees of them over NATS."""

    def __init__(
        self, nc: Any, cfg: Path, url: str, tmp: Path, data: Path, prefix: tuple[str, ...]
    ) -> None:
        self.nc, self.tmp, self.data, self.prefix = nc, tmp, data, prefix
        self.run = ("-m", "rampart", "run", "--config", str(cfg), "--servers", url)
        self.hb: list[Any] = []
        self.gw_log = tmp / "gateway-commands.jsonl"
        self.daemons: list[Any] = []

    async def on_hb(self, msg: Any) -> None:
        self.hb[:] = [heartbeat_decoder.decode(msg.data)]

    async def status(self) -> Any:
        try:
            reply = await self.nc.request(SUBJ.status("algorithms"), b"", timeout=1)
        except Exception:
            return None
        return status_reply_decoder.decode(reply.data)

    def halted_at_gateway(self) -> bool:
        return bool(self.hb) and all(s.halted for s in self.hb[0].state)

    async def deploy(self, dep_id: str, algo: str = "alpha") -> Any:
        doc = {**DEPLOY, "deploymentId": dep_id, "algorithmId": algo}
        return await control(self.nc, self.data, "deploy", dep_id, document=doc)

    async def restart(self, daemon: Any) -> Any:
        if daemon.returncode is None:
            daemon.send_signal(signal.SIGKILL)
            await daemon.wait()
        daemon = await self.spawn()
        await until(self.status, what="the daemon answers status after the restart")
        return daemon

    async def spawn(self) -> Any:
        proc = await spawn(*self.run, log=self.tmp / "daemon.log", prefix=self.prefix)
        self.daemons.append(proc)  # each is killed at the end, even if the test fails
        return proc


async def with_world(
    server: EmbeddedNatsServer, tmp: Path, disk: Path, body: Any, prefix: tuple[str, ...] = ()
) -> None:
    cfg = tmp / "rampart.toml"
    cfg.write_text(CONFIG.format(data_dir=disk / "data"))
    nc = await nats.connect(server.url)
    w = World(nc, cfg, server.url, tmp, disk / "data", prefix)
    await nc.subscribe(SUBJ.heartbeat("gw1"), cb=w.on_hb)
    gateway = await spawn(
        GATEWAY, server.url, "gw1", "alpha,beta", str(w.gw_log), "--deadman", "3600",
        "--trust", rampart_keys(disk / "data")[0], log=tmp / "gateway.log",
    )  # fmt: skip
    daemon = await w.spawn()
    try:
        await until(w.status, what="the daemon answers status")
        await until(lambda: bool(w.hb), what="the gateway's heartbeat")
        assert not w.halted_at_gateway()
        await body(w, daemon)
    finally:
        for proc in [gateway, *w.daemons]:
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
        await nc.close()


@pytest.mark.timeout(300)
def test_a_store_that_cannot_grow_halts_everything_and_a_restart_stays_halted(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """From outside, the running daemon's file-size limit drops to 1 byte (``prlimit(2)``): every
    write that extends a file now fails with EFBIG, as on a full disk, at once and every time.
    Rampart fails closed: halts everything at the gateway, says why in status, refuses deploys;
    restarted without the limit, it comes back halted and resumes nothing by itself."""
    disk = tmp_path / "disk"
    disk.mkdir()

    async def body(w: World, daemon: Any) -> Any:
        resource.prlimit(daemon.pid, resource.RLIMIT_FSIZE, (1, 1))  # prlimit(2), from outside
        await until(w.halted_at_gateway, timeout=30, what="halted once writes fail")
        st = await w.status()
        assert st is not None and "cannot be written" in (st.daemon.store_error or ""), st
        reply = await w.deploy("after-the-fault")
        # refused: not done (its nonce, or its decision, cannot be stored)
        error = reply.error or ""
        assert not reply.ok and ("failed closed" in error or "not done" in error), reply
        daemon = await w.restart(daemon)  # the operator fixed the disk

        async def halted_in_rampart() -> bool:
            st = await w.status()
            return st is not None and {h.algo for h in st.daemon.halted} == {"alpha", "beta"}

        await until(halted_in_rampart, what="Rampart knows both are halted")
        await asyncio.sleep(1.0)  # a few reconcile rounds: nothing resumes by itself
        assert w.halted_at_gateway()
        for algo in ("alpha", "beta"):
            no_increase_while_halted(_commands(w.gw_log), algo)
        return daemon

    asyncio.run(with_world(server, tmp_path, disk, body))


@pytest.mark.timeout(300)
def test_a_disk_that_fills_mid_run_loses_nothing_rampart_acknowledged(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """A full disk does not fail SQLite at once (the WAL reuses its space): Rampart goes on
    while its writes fit and fails closed at the first that does not. Either way, every deploy
    it acknowledged is stored (there after a restart), and none it refused is."""
    with small_disk(tmp_path / "disk", "16m") as disk:

        async def body(w: World, daemon: Any) -> Any:
            ballast = fill_up(disk)
            acked: list[str] = []
            refused: list[str] = []
            for i in range(40):
                dep_id = f"full-{i}"
                reply = await w.deploy(dep_id)
                (acked if reply.ok else refused).append(dep_id)
            ballast.unlink()
            daemon = await w.restart(daemon)
            st = await w.status()
            stored = {d.deployment_id for d in st.deployments}
            assert set(acked) <= stored, f"acknowledged but lost: {set(acked) - stored}"
            assert not (set(refused) & stored), f"refused but stored: {set(refused) & stored}"
            print(f"{len(acked)} deploys acknowledged on the full disk, {len(refused)} refused")
            return daemon

        asyncio.run(with_world(server, tmp_path, disk, body))


STORE_FILES = ("rampart.db", "rampart.db-wal", "rampart.db-shm", "rampart.head")


@pytest.mark.timeout(300)
def test_store_files_made_read_only_mid_run_fail_closed_and_a_restart_says_what_to_fix(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """From outside, mid-run: the store's files ``chmod 0444``, its directory ``0555``. The
    daemon's open files keep their write access (SQLite goes on writing through them), but the
    head file cannot be replaced any more: at the next audit record (a deploy) Rampart fails
    closed, alive, saying why. Restarted while the files are read-only it starts halted, the
    status naming the read-only file (an unwritable lock file: exit 1, naming it); restarted after
    the repair, it comes back halted, with every deploy it acknowledged, resuming nothing."""
    prefix = bound_by_permissions(tmp_path)
    disk = tmp_path / "disk"
    disk.mkdir()
    data = disk / "data"

    async def body(w: World, daemon: Any) -> Any:
        assert (await w.deploy("before-the-fault")).ok
        for name in STORE_FILES:
            (data / name).chmod(0o444)
        data.chmod(0o555)
        during = await w.deploy("during-the-fault", algo="beta")  # an audit record: a new head
        await until(w.halted_at_gateway, timeout=30, what="halted once the head file fails")
        st = await w.status()
        assert st is not None and daemon.returncode is None, "alive, answering"
        error = st.daemon.store_error or ""
        assert "rampart.head cannot be written" in error, st.daemon
        reply = await w.deploy("after-the-fault", algo="beta")
        # refused: not done (its nonce, or its decision, cannot be stored)
        error = reply.error or ""
        assert not reply.ok and ("failed closed" in error or "not done" in error), reply
        assert "FAIL CLOSED" in (w.tmp / "daemon.log").read_text()

        daemon = await w.restart(daemon)  # nobody repaired anything yet
        st = await w.status()
        assert st is not None and {h.algo for h in st.daemon.halted} == {"alpha", "beta"}
        error = st.daemon.store_error or ""
        assert f"{data / 'rampart.db'} is read-only" in error, st.daemon
        assert "behind" not in error, "a read-only store is intact, not behind its mirror"

        daemon.send_signal(signal.SIGKILL)
        await daemon.wait()
        (data / "rampart.lock").chmod(0o444)  # `chmod -R a-w`: even the lock cannot be taken
        daemon = await w.spawn()
        assert await asyncio.wait_for(daemon.wait(), 60) == 1
        assert (
            f"cannot take the data_dir lock {data / 'rampart.lock'}"
            in (w.tmp / "daemon.log").read_text()
        )

        data.chmod(0o755)  # the operator repairs the permissions
        for f in data.iterdir():
            if f.is_file():  # (keys/ keeps its 0700)
                f.chmod(0o644)
        daemon = await w.restart(daemon)

        async def halted_in_rampart() -> bool:
            st = await w.status()
            return st is not None and {h.algo for h in st.daemon.halted} == {"alpha", "beta"}

        await until(halted_in_rampart, what="Rampart knows both are halted")
        await asyncio.sleep(1.0)  # a few reconcile rounds: nothing resumes by itself
        assert w.halted_at_gateway()
        for algo in ("alpha", "beta"):
            no_increase_while_halted(_commands(w.gw_log), algo)
        st = await w.status()
        stored = {d.deployment_id for d in st.deployments}
        acked = {"before-the-fault"} | ({"during-the-fault"} if during.ok else set())
        assert acked <= stored, f"acknowledged but lost: {acked - stored}"
        assert "after-the-fault" not in stored
        return daemon

    try:
        asyncio.run(with_world(server, tmp_path, disk, body, prefix))
    finally:  # pytest must be able to remove it
        if data.exists():
            data.chmod(0o755)


def _commands(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line]
