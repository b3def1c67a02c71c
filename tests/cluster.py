"""A real 3-node nats-server cluster on loopback, JetStream on every node (for the standby
takeover tests, docs/ha.md). Routes on 127.0.0.1; each node's store in its own directory,
``sync_interval: always`` as the embedded server. Nodes can be killed (-9) and started again."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from rampart.embedded import nats_server_binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsCluster:
    def __init__(self, base: Path, nodes: int = 3) -> None:
        self.base = base
        self.names = [f"n{i + 1}" for i in range(nodes)]
        self.client_ports = [free_port() for _ in self.names]
        self.route_ports = [free_port() for _ in self.names]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.client_ports]

    def _config(self, i: int) -> Path:
        name = self.names[i]
        d = self.base / name
        d.mkdir(parents=True, exist_ok=True)
        routes = ", ".join(
            f'"nats-route://127.0.0.1:{p}"' for j, p in enumerate(self.route_ports) if j != i
        )
        store = json.dumps(str(d / "jetstream"))
        text = (
            f'server_name: "{name}"\nlisten: "127.0.0.1:{self.client_ports[i]}"\n'
            f'jetstream {{\n  store_dir: {store}\n  sync_interval: "always"\n}}\n'
            f'cluster {{\n  name: "rampart-test"\n  listen: "127.0.0.1:{self.route_ports[i]}"\n'
            f"  routes: [{routes}]\n}}\n"
        )
        path = d / "nats-server.conf"
        path.write_text(text)
        return path

    def start_node(self, name: str) -> None:
        i = self.names.index(name)
        conf = self._config(i)
        log = self.base / f"{name}.log"
        with log.open("ab") as out:  # the child keeps its own descriptor
            self.procs[name] = subprocess.Popen(
                [nats_server_binary(), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.client_ports[i]), 0.2).close()
                return
            except OSError as e:
                if time.monotonic() > deadline or self.procs[name].poll() is not None:
                    raise RuntimeError(f"cluster node {name} did not start: see {log}") from e
                time.sleep(0.02)

    def start(self) -> None:
        for name in self.names:
            self.start_node(name)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
