"""Nothing lost (issue 10): one daemon per data_dir, an embedded nats-server that dies with its
daemon, and JetStream that fsyncs every write. The daemons run as `rampart run` processes and the
faults (a second daemon, kill -9, a stale server) come from outside."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from support import rampart_keys

import rampart.daemon
from rampart.config import parse_config
from rampart.daemon import Daemon, DaemonError
from rampart.datalock import LOCK_FILE, DataDirLock, DataDirLocked
from rampart.embedded import EmbeddedNatsServer
from rampart.nats_auth import EMBEDDED_AUTH_DIR
from rampart.nats_auth import write as write_nats_auth
from rampart.nats_connection import URL_FILE
from rampart.protocol import Subjects, status_reply_decoder

SUBJ = Subjects()
GATEWAY = str(Path(__file__).with_name("gateway_proc.py"))
BOUND = 20.0  # seconds: a bound on waits that succeed much sooner, never a timing claim

CONFIG = """
data_dir = "{data_dir}"
heartbeat_interval = "PT0.1S"

[nats]
reconnect_time_wait = "PT0.05S"

[triggers]
market_data_timeout = "PT1H"
gateway_heartbeat_timeout = "PT1H"
nats_disconnect = false

[[algorithms]]
id = "alpha"
version = "1"
gateway = "gw1"
capital = 100000
"""


def write_config(tmp: Path, port: int | None = None) -> Path:
    cfg = tmp / "rampart.toml"
    text = CONFIG.format(data_dir=tmp / "data")
    if port is not None:
        text += f"\n[embedded]\nport = {port}\n"
    cfg.write_text(text)
    return cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an exited child nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def greets(port: int) -> bool:
    """A nats-server on ``port`` answers a new connection with its INFO line."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            return sock.recv(5) == b"INFO "
    except OSError:
        return False


async def until(cond: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + BOUND
    while True:
        ok = cond()
        if not isinstance(ok, bool):
            ok = await ok
        if ok:
            return
        if loop.time() > end:
            raise AssertionError(f"not within {BOUND}s: {what}")
        await asyncio.sleep(0.02)


async def run_daemon(cfg: Path, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as f:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rampart", "run", "--config", str(cfg),
            stdout=asyncio.subprocess.DEVNULL, stderr=f,
        )  # fmt: skip


async def stop(proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> None:
    if proc.returncode is None:
        proc.send_signal(sig)
        await asyncio.wait_for(proc.wait(), 60)


async def status(nc: Client) -> Any:
    reply = await nc.request(SUBJ.status("algorithms"), b"", timeout=1)
    return status_reply_decoder.decode(reply.data)


def answers(nc: Client) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            await status(nc)
        except Exception:
            return False
        return True

    return check


def hears_gateway(nc: Client) -> Callable[[], Awaitable[bool]]:
    """The daemon has had a heartbeat of gw1 since it started."""

    async def check() -> bool:
        try:
            st = await status(nc)
        except Exception:
            return False
        return any(g.gateway == "gw1" for g in st.daemon.gateways)

    return check


def embedded_users(data: Path) -> Path:
    """The embedded server's users (the daemon generates them at start, keeping what exists:
    made here first so the test can log in before the daemon is up)."""
    text = (data.parent / "rampart.toml").read_text()
    write_nats_auth(parse_config(text.encode()), data / EMBEDDED_AUTH_DIR, [])
    return data / EMBEDDED_AUTH_DIR


@asynccontextmanager
async def client(url: str, data: Path, role: str = "operator") -> AsyncIterator[Client]:
    """A client of the embedded server: no anonymous access there, it logs in as ``role``."""
    seed = embedded_users(data) / f"{role}.nk"
    nc = await nats.connect(
        url,
        reconnect_time_wait=0.05,
        max_reconnect_attempts=-1,
        nkeys_seed=str(seed),
        inbox_prefix="_INBOX_" + role,
    )
    try:
        yield nc
    finally:
        await nc.close()


async def url_of(data: Path, daemon: asyncio.subprocess.Process, log: Path) -> str:
    url_file = data / URL_FILE

    def written() -> bool:
        assert daemon.returncode is None, log.read_text()
        return url_file.exists()

    await until(written, "the daemon wrote nats.url")
    return url_file.read_text().strip()


def test_a_second_daemon_on_the_same_data_dir_exits_naming_the_first(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    data = tmp_path / "data"
    log = tmp_path / "daemon.log"

    async def scenario() -> None:
        first = await run_daemon(cfg, log)
        try:
            url = await url_of(data, first, log)
            server_pid = int((data / "nats" / "nats-server.pid").read_text())
            async with client(url, data) as nc:
                await until(answers(nc), "the first daemon answers status")
                second = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "rampart", "run", "--config", str(cfg),
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                _, err = await asyncio.wait_for(second.communicate(), 60)
                assert second.returncode == 1, err.decode()
                message = err.decode()
                assert f"PID {first.pid}" in message, message
                assert "only one daemon may run on a data_dir" in message
                # the first is untouched: still serving, its URL and its server in place
                assert first.returncode is None
                assert (data / URL_FILE).read_text().strip() == url
                assert (data / LOCK_FILE).read_text().strip() == str(first.pid)
                assert int((data / "nats" / "nats-server.pid").read_text()) == server_pid
                assert alive(server_pid)
                st = await status(nc)
                assert [a.algo_id for a in st.algorithms] == ["alpha"]
        finally:
            await stop(first)
        assert first.returncode == 0, log.read_text()
        assert (data / LOCK_FILE).read_text() == "", "no PID of a stopped daemon"

    asyncio.run(scenario())


def test_kill_9_of_the_daemon_takes_its_nats_server_and_a_restart_on_the_same_port_serves(
    tmp_path: Path,
) -> None:
    """kill -9 of `rampart run` with an embedded server on a fixed port: the server dies with it
    (parent-death signal), a new daemon comes up on the same port (it was 'address already in
    use'), and a gateway process that kept reconnecting is heard by the new daemon."""
    port = free_port()
    cfg = write_config(tmp_path, port=port)
    data = tmp_path / "data"
    log = tmp_path / "daemon.log"
    url = f"nats://127.0.0.1:{port}"

    async def scenario() -> None:
        first = await run_daemon(cfg, log)
        second: asyncio.subprocess.Process | None = None
        gateway: asyncio.subprocess.Process | None = None
        try:
            assert await url_of(data, first, log) == url
            server_pid = int((data / "nats" / "nats-server.pid").read_text())
            assert alive(server_pid)
            with (tmp_path / "gateway.log").open("ab") as f:
                gateway = await asyncio.create_subprocess_exec(
                    sys.executable, GATEWAY, url, "gw1", "alpha",
                    str(tmp_path / "gateway-commands.jsonl"), "--deadman", "60",
                    "--trust", rampart_keys(data)[0],
                    "--nkey-seed", str(embedded_users(data) / "gateway-gw1.nk"),
                    stdout=asyncio.subprocess.DEVNULL, stderr=f,
                )  # fmt: skip
            async with client(url, data) as nc:
                await until(hears_gateway(nc), "the first daemon hears the gateway")
                await stop(first, signal.SIGKILL)
                await until(lambda: not alive(server_pid), "the nats-server died with its daemon")
                second = await run_daemon(cfg, log)
                await until(answers(nc), "a new daemon answers on the same port")
                await until(hears_gateway(nc), "the gateway reconnected to the new server")
                assert gateway.returncode is None
                new_pid = int((data / "nats" / "nats-server.pid").read_text())
                assert new_pid != server_pid and alive(new_pid)
        finally:
            for proc in (gateway, second, first):
                if proc is not None:
                    await stop(proc)
        assert second is not None and second.returncode == 0, log.read_text()

    asyncio.run(scenario())


def test_a_stale_nats_server_in_the_pid_file_is_stopped_at_start(tmp_path: Path) -> None:
    """A nats-server left running on the store (detached, as one outliving its daemon would
    be) holds the fixed port: `rampart run` stops it and starts its own."""
    port = free_port()
    cfg = write_config(tmp_path, port=port)
    data = tmp_path / "data"
    log = tmp_path / "daemon.log"
    url = f"nats://127.0.0.1:{port}"
    left = EmbeddedNatsServer(store_dir=data / "nats", port=port)  # the daemon's own settings
    left.store_dir.mkdir(parents=True)
    left.write_config()
    (tmp_path / "ports").mkdir()
    stale = subprocess.Popen(
        left.args(tmp_path / "ports"),
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    left.pid_file.write_text(f"{stale.pid}\n")

    def accepting() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    async def scenario() -> None:
        await until(accepting, "the stale server accepts connections")
        async with client(url, data) as nc:  # connected to the stale server first
            daemon = await run_daemon(cfg, log)
            try:
                await until(answers(nc), "the daemon answers on the port the stale server held")
                await asyncio.to_thread(stale.wait, 60)  # it was stopped (SIGTERM: exits 0)
                pid = int(left.pid_file.read_text())
                assert pid != stale.pid and alive(pid)
            finally:
                await stop(daemon)
        assert daemon.returncode == 0, log.read_text()
        assert "left on" in log.read_text() and f"PID {stale.pid}" in log.read_text()

    try:
        asyncio.run(scenario())
    finally:
        if stale.poll() is None:
            stale.kill()
            stale.wait()


def test_a_pid_file_naming_another_process_kills_nothing(tmp_path: Path) -> None:
    """The PID in the pid file may have been reused: neither an unrelated process nor a
    nats-server of another store is touched."""
    sleep = shutil.which("sleep")
    assert sleep is not None
    sleeper = subprocess.Popen([sleep, "60"])
    other = EmbeddedNatsServer(store_dir=tmp_path / "other")
    try:
        other.start()
        assert other.pid is not None
        for pid in (sleeper.pid, other.pid):
            srv = EmbeddedNatsServer(store_dir=tmp_path / "nats")
            srv.store_dir.mkdir(exist_ok=True)
            srv.pid_file.write_text(f"{pid}\n")
            srv.start()
            try:
                assert sleeper.poll() is None and other.running
                assert int(srv.pid_file.read_text()) == srv.pid
            finally:
                srv.stop()
            assert not srv.pid_file.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        other.cleanup()


def test_the_server_outlives_the_worker_thread_that_started_it(tmp_path: Path) -> None:
    """The daemon starts its server in an `asyncio.to_thread` worker. A parent-death signal
    tied to that thread would kill the server when the worker ends (here: asyncio.run shuts its
    executor down); the fork happens on a thread that lives as long as the process instead."""
    srv = EmbeddedNatsServer(store_dir=tmp_path / "nats")
    worker: list[int] = []

    def start() -> str:
        worker.append(threading.get_native_id())
        return srv.start()

    async def start_in_worker() -> str:
        return await asyncio.to_thread(start)

    try:
        asyncio.run(start_in_worker())

        async def scenario() -> None:
            await until(
                lambda: not Path(f"/proc/self/task/{worker[0]}").exists(),
                "the worker thread has exited",
            )
            assert await asyncio.to_thread(greets, srv.port), "the server is there"
            assert srv.running

        asyncio.run(scenario())
    finally:
        srv.cleanup()


def test_the_embedded_jetstream_fsyncs_every_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's embedded server runs with JetStream `sync_interval: always`, read back from
    the running server's /varz (monitoring switched on for the test only)."""
    monkeypatch.setattr(
        rampart.daemon, "EmbeddedNatsServer", functools.partial(EmbeddedNatsServer, monitor=True)
    )
    config = parse_config(CONFIG.format(data_dir=tmp_path / "data").encode())

    async def scenario() -> None:
        daemon = Daemon(config)
        await daemon.start()
        try:
            assert daemon.embedded is not None and daemon.embedded.monitor_url is not None
            varz_url = daemon.embedded.monitor_url + "/varz"

            def fetch() -> Any:
                with urllib.request.urlopen(varz_url, timeout=10) as r:
                    return json.load(r)

            js = (await asyncio.to_thread(fetch))["jetstream"]["config"]
        finally:
            await daemon.close()
        assert js["sync_always"] is True
        # the store is where it always was (the config file replaced `-js -sd <store>`)
        assert js["store_dir"] == str(tmp_path / "data" / "nats" / "jetstream" / "jetstream")

    asyncio.run(scenario())


def test_the_lock_is_held_from_start_to_close_and_freed_by_a_failed_start(
    tmp_path: Path,
) -> None:
    text = CONFIG.format(data_dir=tmp_path / "data")
    config = parse_config(text.encode())

    async def scenario() -> None:
        async with embedded(tmp_path) as url:
            first = Daemon(config, servers=[url])
            await first.start()
            try:
                with pytest.raises(DaemonError, match=f"PID {os.getpid()}"):
                    await Daemon(config, servers=[url]).start()
                assert first.store is not None and not first.store.closed
            finally:
                await first.close()
            with socket.socket() as taken:  # the embedded server's port is taken: start fails
                taken.bind(("127.0.0.1", 0))
                taken.listen()
                port = taken.getsockname()[1]
                busy = parse_config(f"{text}\n[embedded]\nport = {port}\n".encode())
                with pytest.raises(DaemonError, match="cannot start the embedded nats-server"):
                    await Daemon(busy).start()
            again = Daemon(config, servers=[url])  # neither left the lock behind
            await again.start()
            await again.close()

    asyncio.run(scenario())
    lock = DataDirLock(tmp_path / "data")
    lock.acquire()
    with pytest.raises(DataDirLocked) as e:
        DataDirLock(tmp_path / "data").acquire()
    assert e.value.holder == os.getpid()
    lock.release()


@asynccontextmanager
async def embedded(tmp: Path) -> AsyncIterator[str]:
    srv = EmbeddedNatsServer(store_dir=tmp / "nats-ext")
    try:
        yield await asyncio.to_thread(srv.start)
    finally:
        await asyncio.to_thread(srv.cleanup)


def test_a_second_rampart_on_the_same_prefix_is_alerted_and_one_with_its_key_fails_closed(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """Found from outside: a second daemon on the same bus and prefix (its own data_dir)
    answered half the operators' status and control requests, and nothing said so. Each now
    sees the other's heartbeats: shown in status and alerted. A second one signing with the
    first's own key (a copy of its data directory elsewhere) fails both closed."""

    def config(name: str) -> Path:
        cfg = tmp_path / f"{name}.toml"
        text = CONFIG.format(data_dir=tmp_path / name)
        cfg.write_text(f'name = "{name}"\n' + text)
        return cfg

    async def run(name: str) -> asyncio.subprocess.Process:
        with (tmp_path / f"{name}.log").open("ab") as log:
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "rampart", "run", "--config", str(config(name)),
                "--servers", server.url, stdout=asyncio.subprocess.DEVNULL, stderr=log,
            )  # fmt: skip

    async def statuses(nc: Client, n: int = 8) -> list[Any]:
        out = []
        for _ in range(n):
            reply = await nc.request(SUBJ.status("algorithms"), b"", timeout=2)
            out.append(status_reply_decoder.decode(reply.data).daemon)
        return out

    async def until_all(
        nc: Client, names: set[str], ok: Callable[[Any], bool], what: str
    ) -> list[Any]:
        deadline = asyncio.get_running_loop().time() + BOUND
        while True:
            try:
                seen = await statuses(nc)
            except Exception:
                seen = []
            if seen and all(ok(d) for d in seen) and {d.name for d in seen} == names:
                return seen
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"not within {BOUND}s: {what}: {seen}")
            await asyncio.sleep(0.1)

    async def scenario() -> None:
        nc = await nats.connect(server.url)
        alerts: list[bytes] = []
        await nc.subscribe(SUBJ.alert("critical"), cb=functools.partial(_keep_msg, alerts))
        procs = [await run("one"), await run("two")]
        try:
            seen = await until_all(
                nc, {"one", "two"}, lambda d: len(d.others) == 1, "each shows the other"
            )
            for d in seen:
                [other] = d.others
                assert other.name == ({"one", "two"} - {d.name}).pop()
                assert not other.same_key and d.store_error is None
            assert any(b"another Rampart on this prefix" in a for a in alerts)
            # instead of two, three: a data directory with a copy of one's keys (its key)
            procs[1].send_signal(signal.SIGTERM)
            await procs[1].wait()
            (tmp_path / "three").mkdir()
            shutil.copytree(tmp_path / "one" / "keys", tmp_path / "three" / "keys")
            procs[1] = await run("three")
            await until_all(
                nc,
                {"one", "three"},
                lambda d: d.store_error is not None and "this Rampart's own key" in d.store_error,
                "both failed closed",
            )
        finally:
            for p in procs:
                if p.returncode is None:
                    p.kill()
                    await p.wait()
            await nc.close()

    asyncio.run(scenario())


async def _keep_msg(into: list[bytes], msg: Any) -> None:
    into.append(msg.data)
