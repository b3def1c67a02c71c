"""Separate ``rampart run`` processes of HA shards (docs/ha.md) for the tests on a real
cluster (tests/cluster.py): start, kill, read their logs, and ask them through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from support import live_config


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s")
        time.sleep(0.02)


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


class Daemon:
    """One ``rampart run`` process of a shard (``[ha]``) on the cluster at ``urls``."""

    def __init__(
        self,
        tmp: Path,
        name: str,
        urls: list[str],
        extra: str = "",
        *,
        shard: str = "s1",
        algos: Sequence[tuple[str, str]] = (("alpha", "gw1"),),
        top: str = "",
    ) -> None:
        self.data = tmp / name
        self.cfg = tmp / f"{name}.toml"
        self.log = tmp / f"{name}.log"
        self.starts = 0
        text = live_config(algos, top=top).format(data_dir=self.data) + extra
        text += f"\n[nats]\nservers = {json.dumps(urls)}\n"
        # snapshots every 30 writes (docs/ha.md, "Snapshots"): every HA test runs across
        # snapshots and purges of the state stream, and restarted standbys behind them
        text += f'\n[ha]\nenabled = true\nreplicas = 3\nshard = "{shard}"\nsnapshot_every = 30\n'
        self.cfg.write_text(text)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> None:
        """``env``: more environment (a failpoint, say) for this start only."""
        self.starts += 1
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rampart", "run", "--config", str(self.cfg)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env} if env else None,
            )

    def said(self, text: str) -> bool:
        return self.log.exists() and text in self.log.read_text()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rampart", *args, "--config", str(daemon.cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def status(daemon: Daemon) -> dict[str, Any]:
    out = cli(daemon, "status", "alpha", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    reply: dict[str, Any] = json.loads(out.stdout)
    return reply


def latched(daemon: Daemon) -> list[str]:
    out = cli(daemon, "status", "alpha", "--json")
    if out.returncode != 0:
        return []
    return [h["algo"] for h in json.loads(out.stdout)["daemon"]["halted"]]
