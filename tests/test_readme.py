"""The README's "Running it for real" commands, as written and in order (issue 13: its examples
did not work together). They run from a copy of ``examples/`` in a temporary directory, against
the daemon they start (embedded nats-server, secure by default) and the reference gateway
hosting the example configuration's algorithms; each command's exit status and output are
checked."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rampart.nats_connection import URL_FILE

REPO = Path(__file__).resolve().parent.parent
GATEWAY = Path(__file__).resolve().parent / "gateway_proc.py"


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Running it for real", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.1)


def test_the_readme_commands_work_together(tmp_path: Path) -> None:
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAMPART_CONFIG", None)
    env.pop("RAMPART_NATS_URL", None)
    data = tmp_path / ".rampart"  # the example configuration's data_dir
    background: list[subprocess.Popen[bytes]] = []

    def rampart(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rampart", *argv],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def gateway_up() -> bool:
        done = rampart(["status", "--json"])
        if done.returncode != 0:
            return False
        daemon = json.loads(done.stdout).get("daemon", {})
        return any(g.get("gateway") == "gw1" for g in daemon.get("gateways", []))

    outputs: dict[str, str] = {}
    try:
        for line in readme_commands():
            argv = []
            for word in shlex.split(line.removesuffix("&").strip()):  # globs, as a shell would
                hits = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob(word))
                argv += hits if any(c in word for c in "*?[") and hits else [word]
            if argv[0] == "export":
                name, _, value = argv[1].partition("=")
                env[name] = value
                continue
            assert argv[0] == "rampart", line
            if line.endswith("&"):
                with (tmp_path / "daemon.log").open("wb") as log:
                    background.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "rampart", *argv[1:]],
                            cwd=tmp_path,
                            env=env,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                        )
                    )
                wait_for("the daemon answers", lambda: rampart(["status"]).returncode == 0)
                gw = [
                    sys.executable,
                    str(GATEWAY),
                    (data / URL_FILE).read_text().strip(),
                    "gw1",
                    "momentum-v2.0.0,momentum-v2.1.0,momentum-v2.2.0,ml-model-v3.0.0",
                    str(tmp_path / "gateway.jsonl"),
                    "--deadman",
                    "3600",
                    "--trust",
                    (data / "keys" / "rampart.pub").read_text().strip(),
                    "--nkey-seed",
                    str(data / "nats-auth" / "gateway-gw1.nk"),
                ]
                background.append(subprocess.Popen(gw, cwd=tmp_path, env=env))
                wait_for("the daemon hears the gateway", gateway_up)
                continue
            done = rampart(argv[1:])
            assert done.returncode == 0, (line, done.stdout, done.stderr)
            outputs[argv[1]] = done.stdout + done.stderr
        assert outputs["validate"].count("ok ") == 5, outputs["validate"]
        assert "applied by the gateway" in outputs["deploy"], outputs["deploy"]
        assert "momentum-v2.1.0" in outputs["status"] and "algo-deploy-002" in outputs["status"]
        assert "rollback SUCCEEDED" in outputs["rollback"], outputs["rollback"]
        assert "local-admin <" in outputs["release"], outputs["release"]
        assert "transition canary" in outputs["replay"], outputs["replay"]
        assert (tmp_path / "recorded.jsonl").exists(), outputs["record"]
        assert "intact" in outputs["audit"] or "ok" in outputs["audit"].lower(), outputs["audit"]
        assert list((tmp_path / "backups").glob("*.db")), outputs["backup"]
    finally:
        for proc in reversed(background):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
