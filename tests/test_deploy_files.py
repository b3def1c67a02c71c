"""The files under deploy/: the systemd unit, its configuration, the Prometheus rules and the
Grafana dashboard (docs/operations.md, "Running under systemd" and "Monitoring").

Every ``rampart_*`` series the rules and the dashboard query must be one a running daemon
exports: the test starts a Daemon with ``metrics_port``, gives it an event, a refusal, a
deployment and a failed rollback so that every metric family has samples, scrapes ``/metrics``
and compares names and label names. The rules file is read without a YAML library (the project
has none): one ``expr:`` per line.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import control

from rampart.config import load_config, parse_config
from rampart.daemon import Daemon
from rampart.embedded import EmbeddedNatsServer
from rampart.protocol import Fill, Subjects, encoder

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "rampart.service"
RULES = DEPLOY / "prometheus" / "rampart-rules.yml"
DASHBOARD = DEPLOY / "grafana" / "rampart.json"
CONFIG = DEPLOY / "rampart.toml"
EXEC_START = "/opt/rampart/venv/bin/rampart run --config /etc/rampart/rampart.toml"
STATE_DIR = "/var/lib/rampart"
SEVERITIES = {"critical", "warning", "info"}
# labels Prometheus adds to every scraped series
TARGET_LABELS = {"instance", "job"}

METRIC = re.compile(r"\brampart_[A-Za-z0-9_]+\b")
SELECTOR = re.compile(r"\b(rampart_[A-Za-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


# -- the systemd unit -----------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file (every occurrence of a key, in order)."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_unit_runs_the_daemon_confined_to_its_state_directory() -> None:
    s = unit_settings(UNIT.read_text())
    one = {k: v[-1] for k, v in s.items()}
    assert one["ExecStart"] == EXEC_START
    assert one["Type"] in {"simple", "exec", "notify"}
    assert one["Restart"] == "always"
    assert one["User"] == "rampart"
    assert one["StateDirectory"] == "rampart"
    assert one["ReadWritePaths"] == STATE_DIR
    # SIGTERM to the daemon alone: it stops its embedded nats-server itself, after draining
    assert one["KillMode"] == "mixed"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
    }.items():
        assert one[key] == value, key
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    # seconds, short: a restart longer than the gateways' dead-man timeout latches their halts
    assert float(one["RestartSec"].removesuffix("s")) <= 2


def test_the_shipped_configuration_keeps_state_in_the_units_state_directory() -> None:
    config = load_config(CONFIG)
    assert config.data_dir == STATE_DIR
    assert config.metrics_port is not None
    assert not config.nats.servers  # the embedded server unless the operator configures one


def run_verify(unit: Path) -> str:
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 on a directive it cannot parse ("..., ignoring"): its messages count too
    out = (done.stdout + done.stderr).splitlines()
    return "\n".join(out if done.returncode else (line for line in out if unit.name in line))


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    # verify checks that ExecStart's program exists: the same unit with a stand-in for it
    program = tmp_path / "rampart"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    text = UNIT.read_text()
    assert "/opt/rampart/venv/bin/rampart " in text
    unit = tmp_path / "ok" / "rampart.service"
    unit.parent.mkdir()
    unit.write_text(text.replace("/opt/rampart/venv/bin/rampart ", f"{program} "))
    assert run_verify(unit) == ""
    # and it would say so: the same unit with a bad value
    bad = tmp_path / "bad" / "rampart.service"
    bad.parent.mkdir()
    bad.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=sometimes"))
    assert "protect system" in run_verify(bad).lower()


# -- the rules and the dashboard ------------------------------------------------------------


def alert_rules() -> list[dict[str, str]]:
    """Each ``- alert:`` block of the rules file as {field: value} (one line each; nested
    ``labels:``/``annotations:`` keys flattened)."""
    rules: list[dict[str, str]] = []
    for line in RULES.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("- alert:"):
            rules.append({"alert": stripped.removeprefix("- alert:").strip()})
        elif rules and ":" in stripped and not stripped.startswith("#"):
            key, _, value = stripped.partition(":")
            rules[-1][key.strip()] = value.strip()
    return rules


def rule_exprs() -> list[str]:
    exprs = []
    for line in RULES.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("expr:"):
            value = stripped.removeprefix("expr:").strip()
            assert value and value[0] not in "|>'\"", f"keep each expr on one line: {line}"
            exprs.append(value)
    return exprs


def dashboard_queries() -> list[str]:
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "definition") and isinstance(value, str):
                    found.append(value)
                elif key == "query" and isinstance(value, str) and "(" in value:
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(DASHBOARD.read_text()))
    return found


def test_rules_are_complete_alerts() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), names
    assert len(rule_exprs()) == len(rules)
    for r in rules:
        assert r.get("severity") in SEVERITIES, r
        assert r.get("for"), r
        assert r.get("summary") and r.get("description"), r
    assert {"RampartDown", "RampartAlgorithmHalted", "RampartRollbackFailed"} <= set(names)
    assert 'up{job="rampart"} == 0' in rule_exprs()


def test_the_dashboard_is_grafana_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "rampart" and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]
        for t in p.get("targets", []):
            assert t["expr"].strip() and t["refId"], p["title"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_checks_the_rules() -> None:
    done = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


CANARY = {
    "deploymentId": "deploy-files",
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


@pytest.fixture
def scraped(server: EmbeddedNatsServer, tmp_path: Path) -> Iterator[dict[str, set[str]]]:
    """What a running daemon exports: series name -> the label names seen on it."""
    port = free_port()
    config = parse_config(
        f"""
data_dir = "{tmp_path / "data"}"
metrics_port = {port}
[triggers]
market_data_timeout = "PT1H"
gateway_heartbeat_timeout = "PT1H"
[rollback]
halt_deadline = "PT0.2S"
cancel_deadline = "PT0.2S"
allocate_deadline = "PT0.2S"
activate_deadline = "PT0.2S"
[[algorithms]]
id = "alpha"
version = "1.0.0"
gateway = "gw1"
capital = 100000
""".encode()
    )
    subjects = Subjects()

    async def scenario() -> str:
        daemon = Daemon(config, servers=[server.url])
        await daemon.start()
        nc = await nats.connect(server.url)
        try:
            fill = Fill(
                algo="alpha", symbol="ES", side="buy", qty=1, price=100.0, ts=time.time_ns()
            )
            await nc.publish(subjects.fills("gw1", "alpha"), encoder.encode(fill))
            await nc.publish(subjects.market("ES"), b"not json")  # refused: decode
            await nc.flush()
            deadline = time.monotonic() + 10
            while daemon.stats.ingested < 1 or not daemon.stats.rejected:
                assert time.monotonic() < deadline, daemon.stats
                await asyncio.sleep(0.01)
            data = tmp_path / "data"
            deployed = await control(nc, data, "deploy", "deploy-files", document=CANARY)
            assert deployed.ok, deployed.error
            # no gateway answers: the rollback fails, with its step times
            await control(nc, data, "rollback", "alpha", reason="deploy files test")
            return await asyncio.to_thread(
                lambda: (
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
                    .read()
                    .decode()
                )
            )
        finally:
            await nc.close()
            await daemon.close()

    body = asyncio.run(scenario())
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    yield series


def queries() -> list[tuple[str, str]]:
    return [*(("rules", e) for e in rule_exprs()), *(("dashboard", q) for q in dashboard_queries())]


def test_every_queried_metric_and_label_is_exported(scraped: dict[str, set[str]]) -> None:
    assert "rampart_rollback_step_seconds" in scraped and "rampart_phase" in scraped, scraped
    used: set[str] = set()
    problems = []
    for where, expr in queries():
        names = set(METRIC.findall(expr))
        used |= names
        for name in sorted(names - scraped.keys()):
            problems.append(f"{where}: {name} is not exported ({expr})")
        for name, matchers in SELECTOR.findall(expr):
            for label in MATCHER.findall(matchers):
                if label not in scraped.get(name, set()) | TARGET_LABELS:
                    problems.append(f"{where}: {name} has no label {label!r} ({expr})")
        known = set().union(*(scraped.get(n, set()) for n in names)) | TARGET_LABELS
        for group in GROUPING.findall(expr):
            for label in filter(None, (g.strip() for g in group.split(","))):
                if names and label not in known:
                    problems.append(f"{where}: no metric of {expr!r} has label {label!r}")
    assert not problems, "\n".join(problems)
    # the dashboard shows every metric Rampart exports
    shown = {n for q in dashboard_queries() for n in METRIC.findall(q)}
    exported = {n for n in scraped if n.startswith("rampart_") and not n.endswith("_created")}
    assert exported <= shown, f"not on the dashboard: {sorted(exported - shown)}"
    assert used
