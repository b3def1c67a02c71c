"""The machine a benchmark ran on, recorded next to its numbers."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from rampart.embedded import nats_server_binary


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    server = subprocess.run(
        [nats_server_binary(), "--version"], capture_output=True, text=True, timeout=10
    ).stdout.strip()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "python": platform.python_version(),
        "nats-py": importlib.metadata.version("nats-py"),
        "uvloop": importlib.metadata.version("uvloop"),
        "nats-server": server,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
