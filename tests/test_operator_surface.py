"""The operator's surface: `status --watch`, Prometheus metrics, JSON logs, control verbs as
plain NATS requests."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nats
import pytest
from support import control, local_admin

from rampart.config import parse_config
from rampart.daemon import Daemon
from rampart.embedded import EmbeddedNatsServer
from rampart.protocol import Fill, Quote, Subjects, control_reply_decoder, encoder

SUBJ = Subjects()
T0 = time.time_ns()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def config_text(tmp_path: Path, port: int) -> str:
    return f"""
data_dir = "{tmp_path / "data"}"
metrics_port = {port}
log_json = true
[triggers]
market_data_timeout = "PT1H"
gateway_heartbeat_timeout = "PT1H"
[[algorithms]]
id = "alpha"
version = "1.0.0"
gateway = "gw1"
capital = 100000
limits = {{ max_drawdown = 0.05 }}
"""


def test_prometheus_metrics_and_watch(server: EmbeddedNatsServer, tmp_path: Path) -> None:
    port = free_port()
    config = parse_config(config_text(tmp_path, port).encode())

    async def scenario() -> None:
        daemon = Daemon(config, servers=[server.url])
        await daemon.start()
        nc = await nats.connect(server.url)
        try:
            fill = Fill(algo="alpha", symbol="ES", side="buy", qty=10, price=100.0, ts=T0)
            await nc.publish(SUBJ.fills("gw1", "alpha"), encoder.encode(fill))
            await nc.publish(SUBJ.market("ES"), b"not json")
            quote = Quote(symbol="ES", bid=50.0, ask=50.0, ts=T0 + 1)  # a 0.5% drawdown
            await nc.publish(SUBJ.market("ES"), encoder.encode(quote))
            await nc.flush()
            deadline = time.monotonic() + 10
            while daemon.stats.ingested < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            body = await asyncio.to_thread(
                lambda: (
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
                    .read()
                    .decode()
                )
            )
            assert "rampart_events_ingested_total 2.0" in body
            assert 'rampart_events_refused_total{reason="decode"} 1.0' in body
            assert 'rampart_equity{algo="alpha",gateway="gw1",version="1.0.0"} 99500.0' in body
            assert "rampart_drawdown" in body and "rampart_halted" in body
            # the event loop's lag, as a histogram (its probe runs from the daemon's start)
            assert 'rampart_event_loop_lag_seconds_bucket{le="0.001"}' in body
            assert re.search(r"rampart_event_loop_lag_seconds_count [1-9]", body), body

            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "rampart",
                "status",
                "--watch",
                "--count",
                "2",
                "--interval",
                "0.1",
                "--servers",
                server.url,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()
            text = out.decode()
            assert "alpha" in text and "refused input: decode 1" in text
        finally:
            await nc.close()
            await daemon.close()
        # closed: the endpoint is gone and its port free for the next daemon
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
        with socket.socket() as s:  # as the next daemon's server binds it (reuse: TIME_WAIT)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen()

    asyncio.run(scenario())


def test_control_verbs_are_signed_nats_requests(server: EmbeddedNatsServer, tmp_path: Path) -> None:
    config = parse_config(config_text(tmp_path, free_port()).encode())

    async def scenario() -> None:
        daemon = Daemon(config, servers=[server.url])
        await daemon.start()
        nc = await nats.connect(server.url)
        data = tmp_path / "data"
        try:
            reply = await control(nc, data, "rollback", "alpha", reason="drill")
            assert reply.ok and reply.state is not None
            admin = f"local-admin <{local_admin(data).public_key}>"
            assert reply.state["trigger"] == "manual" and reply.state["actor"] == admin
            assert reply.actor == admin
            bad = await control(nc, data, "promote", "alpha")
            assert not bad.ok and "unknown deployment 'alpha'" in (bad.error or "")
            # the pre-signature shape, with a name in the body, is refused: it proves nothing
            payload = json.dumps({"operator": "alice", "target": "alpha", "v": 1}).encode()
            unsigned = control_reply_decoder.decode(
                (await nc.request(SUBJ.control("rollback"), payload, timeout=10)).data
            )
            assert not unsigned.ok and "unsigned control request" in (unsigned.error or "")
        finally:
            await nc.close()
            await daemon.close()

    asyncio.run(scenario())


def test_json_logs_one_object_per_line(server: EmbeddedNatsServer, tmp_path: Path) -> None:
    cfg = tmp_path / "r.toml"
    cfg.write_text(config_text(tmp_path, free_port()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "rampart", "run", "-c", str(cfg), "-s", server.url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            probe = subprocess.run(
                [sys.executable, "-m", "rampart", "status", "-s", server.url, "--timeout", "1"],
                capture_output=True,
                timeout=60,
            )
            if probe.returncode == 0:
                break
            assert time.monotonic() < deadline
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)
    assert any("rampart stopped" in x["msg"] for x in lines)


def test_alerts_reach_the_webhook(server: EmbeddedNatsServer, tmp_path: Path) -> None:
    """A rollback's alert is POSTed as JSON to alerts.webhook_url (here a local HTTP server)."""
    import http.server
    import threading

    received: list[dict[str, object]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/alerts"
    text = config_text(tmp_path, free_port()) + f'\n[alerts]\nwebhook_url = "{url}"\n'
    config = parse_config(text.encode())

    async def scenario() -> None:
        daemon = Daemon(config, servers=[server.url])
        await daemon.start()
        try:
            assert daemon.guard is not None
            task = daemon.guard.trigger(("alpha",), "algo", "manual", "drill", "alice", force=True)
            assert task is not None
            await task
            deadline = time.monotonic() + 10
            while not received:
                assert time.monotonic() < deadline, "no webhook call"
                await asyncio.sleep(0.01)
        finally:
            await daemon.close()

    try:
        asyncio.run(scenario())
    finally:
        httpd.shutdown()
        httpd.server_close()
    alert = received[0]
    assert alert["type"] == "alert" and alert["algos"] == ["alpha"]
    assert alert["severity"] in ("critical", "emergency") and "rollback" in str(alert["title"])


def test_a_failed_rollback_exits_non_zero(server: EmbeddedNatsServer, tmp_path: Path) -> None:
    """No gateway answers: the halt is never acked, so `rampart rollback` says FAILED and exits
    1 (it printed "rollback FAILED" and exited 0 before)."""
    text = config_text(tmp_path, free_port()) + '\n[rollback]\nhalt_deadline = "PT0.2S"\n'
    text += 'cancel_deadline = "PT0.2S"\nallocate_deadline = "PT0.2S"\n'
    config = parse_config(text.encode())

    async def scenario() -> None:
        daemon = Daemon(config, servers=[server.url])
        await daemon.start()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "rampart",
                "rollback",
                "alpha",
                "--key",
                str(tmp_path / "data" / "keys" / "local-admin.nk"),
                "--reason",
                "test",
                "--servers",
                server.url,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 1, (out.decode(), err.decode())
            assert "FAILED" in err.decode()
        finally:
            await daemon.close()

    asyncio.run(scenario())


def test_watch_survives_the_daemon_going_away_and_coming_back(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """`status --watch` while the daemon stops and starts again: a "disconnected, retrying" line
    once, then "reconnected", no traceback, and it carries on (issue 13: 14 tracebacks and a
    frozen view). Each event line carries one time, not two."""
    text = config_text(tmp_path, free_port())
    config = parse_config(
        "\n".join(x for x in text.splitlines() if "metrics_port" not in x).encode()
    )

    async def scenario() -> None:
        daemon = Daemon(config, servers=[server.url])
        await daemon.start()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rampart",
            "status",
            "--watch",
            "--count",
            "40",
            "--interval",
            "0.1",
            "--servers",
            server.url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            nc = await nats.connect(server.url)
            await control(nc, tmp_path / "data", "rollback", "alpha", reason="drill")
            await nc.close()
            await asyncio.sleep(1.0)
            await daemon.close()
            await asyncio.sleep(1.5)
            daemon = Daemon(config, servers=[server.url])
            await daemon.start()
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
            await daemon.close()
        text = out.decode()
        assert proc.returncode == 0, err.decode()
        assert "Traceback" not in text + err.decode()
        assert text.count("DISCONNECTED from the daemon") == 1, text
        assert "reconnected to the daemon" in text, text
        (rollback,) = [
            line for line in text.splitlines() if "rollback " in line and "alpha" in line
        ]
        assert len(re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", rollback)) == 1, rollback

    asyncio.run(scenario())
