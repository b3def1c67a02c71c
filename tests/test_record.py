"""`rampart record`: NATS messages to the JSON lines `rampart replay` reads (unit tests of the
pure expansion and the recorder), and end to end on a real nats-server: quotes on core NATS,
fills and order events on JetStream (a retried publish, a batch), recorded, then replayed with
a deployment from examples/deployments."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import nats
import pytest

from rampart._core import DecodeError, Engine
from rampart.config import DaemonConfig, EventsConfig
from rampart.deployment import load_deployment
from rampart.embedded import EmbeddedNatsServer
from rampart.event_stream import ensure_stream
from rampart.protocol import Fill, OrderEvent, Quote, Subjects, encoder
from rampart.record import Recorder, event_lines, format_stats, recorder_link
from rampart.replay import format_timeline, run_replay

SUBJ = Subjects()
S = 1_000_000_000
T0 = 1_764_028_800 * S
ALGO = "momentum-v2.1.0"  # examples/deployments/canary.json
CANARY = Path(__file__).parent.parent / "examples" / "deployments" / "canary.json"

QUOTE = b'{"type":"quote","symbol":"ESZ6","bid":6012.25,"ask":6012.5,"ts":1764028800000000000}'
FILL = (
    b'{"type":"fill","algo":"momentum","symbol":"ESZ6","side":"buy","qty":2,"price":6012.5,'
    b'"fee":1.2,"ts":1764028800000100000,"order_id":"o-1","v":1}'
)
ORDER = (
    b'{"type":"order","algo":"momentum","event":"acked","latency_ns":850000,'
    b'"ts":1764028800000050000}'
)


def decodes(line: bytes) -> bool:
    """The core decodes ``line`` (whatever it then thinks of it)."""
    try:
        Engine().ingest_json(line)
    except DecodeError:
        return False
    except Exception:
        return True
    return True


# ---- the pure expansion ---------------------------------------------------------------------


def test_an_event_is_written_as_it_arrived() -> None:
    for subject, data, kind in (
        (SUBJ.market("ESZ6"), QUOTE, "quote"),
        (SUBJ.fills("gw1", "momentum"), FILL, "fill"),
        (SUBJ.orders("gw1", "momentum"), ORDER, "order"),
    ):
        out = event_lines(subject, data)
        assert (out.lines, out.kinds, out.skipped) == ([data], [kind], [])


def test_a_pretty_printed_event_becomes_one_line() -> None:
    pretty = json.dumps(json.loads(FILL), indent=2).encode()
    assert b"\n" in pretty
    (line,) = event_lines(SUBJ.fills("gw1", "momentum"), pretty).lines
    assert b"\n" not in line and json.loads(line) == json.loads(FILL) and decodes(line)


def test_an_algorithm_id_with_dots_is_taken_from_the_subject() -> None:
    body = FILL.replace(b'"momentum"', b'"momentum-v2.1.0"')
    assert event_lines(SUBJ.fills("gw1", "momentum-v2.1.0"), body).lines == [body]


@pytest.mark.parametrize(
    ("subject", "data", "reason"),
    [
        (SUBJ.market("ESZ6"), b"not json", "decode"),
        (SUBJ.market("ESZ6"), b'{"type":"quote","symbol":"ESZ6","bid":1,"ask":2}', "decode"),
        (SUBJ.market("ESZ6"), b'{"type":"trade","symbol":"ESZ6","ts":1}', "decode"),
        (SUBJ.market("ESZ6"), QUOTE.replace(b"ESZ6", b"ES\xff6"), "decode"),
        (SUBJ.market("ESZ6"), QUOTE.replace(b"6012.25", b'"6012.25"'), "decode"),
        (SUBJ.market("ESZ6"), QUOTE.replace(b"}", b',"bid":1}'), "decode"),  # duplicate field
        (SUBJ.market("NQZ6"), QUOTE, "wrong_subject"),  # another symbol's subject
        (SUBJ.market("ESZ6"), FILL, "wrong_subject"),  # a fill on market data
        (SUBJ.fills("gw1", "momentum"), QUOTE, "wrong_subject"),
        (SUBJ.orders("gw1", "momentum"), FILL, "wrong_subject"),
        (SUBJ.heartbeat("gw1"), QUOTE, "wrong_subject"),
        ("elsewhere.md.ESZ6", QUOTE, "wrong_subject"),  # outside the prefix
        (SUBJ.fills("gw1", "meanrev"), FILL, "wrong_gateway"),  # body and subject disagree
        (SUBJ.orders("gw1", "meanrev"), ORDER, "wrong_gateway"),
        (SUBJ.market("ESZ6"), QUOTE[:-1] + b"," + b'"x":"' + b"a" * 17_000 + b'"}', "oversize"),
    ],
)
def test_what_the_daemon_refuses_first_is_skipped(subject: str, data: bytes, reason: str) -> None:
    out = event_lines(subject, data)
    assert (out.lines, out.skipped) == ([], [reason])


def test_what_only_the_daemons_state_refuses_is_recorded_for_the_replay_to_judge() -> None:
    # an unknown algorithm, a crossed quote, a timestamp in milliseconds: replay refuses them too
    for subject, data in (
        (SUBJ.fills("gw1", "ghost"), FILL.replace(b'"momentum"', b'"ghost"')),
        (SUBJ.market("ESZ6"), QUOTE.replace(b"6012.25", b"6013")),
        (SUBJ.market("ESZ6"), QUOTE.replace(b"1764028800000000000", b"1764028800000")),
    ):
        out = event_lines(subject, data)
        assert out.lines == [data] and decodes(data)


def test_a_batch_is_expanded_into_its_events_in_order() -> None:
    pretty_order = json.dumps(json.loads(ORDER), indent=1)
    batch = (
        f'[ {FILL.decode()},\n {pretty_order}, {QUOTE.decode()}, {{"type":"nope"}},'
        f" {FILL.decode().replace('momentum', 'meanrev')} ]"
    ).encode()
    out = event_lines(SUBJ.batch("gw1"), batch)
    assert out.kinds == ["fill", "order", "fill"]
    assert out.lines[0] == FILL and json.loads(out.lines[1]) == json.loads(ORDER)
    # market data in a batch, an event that does not decode; another gateway's algorithm is not
    # the recorder's to judge (it has no configuration of gateways): the replay's
    assert out.skipped == ["wrong_subject", "decode"]
    assert all(decodes(line) and b"\n" not in line for line in out.lines)


@pytest.mark.parametrize(
    ("subject", "data", "reason"),
    [
        (SUBJ.batch("gw1"), FILL, "decode"),  # not an array
        (SUBJ.batch("gw1"), b"[", "decode"),
        (SUBJ.batch("gw1") + ".x", b"[]", "wrong_subject"),
        (SUBJ.batch("gw1"), b"[" + b",".join([FILL] * 2000) + b"]", "oversize"),
    ],
)
def test_a_batch_that_cannot_be_taken_is_skipped_whole(
    subject: str, data: bytes, reason: str
) -> None:
    out = event_lines(subject, data)
    assert (out.lines, out.skipped) == ([], [reason])


def test_the_limits_and_the_prefix_are_the_configurations() -> None:
    assert event_lines(SUBJ.market("ESZ6"), QUOTE, max_payload_bytes=10).skipped == ["oversize"]
    assert event_lines("desk.md.ESZ6", QUOTE, prefix="desk").lines == [QUOTE]
    assert event_lines(SUBJ.market("ESZ6"), QUOTE, prefix="desk").skipped == ["wrong_subject"]
    batch = b"[" + FILL + b"]"
    assert event_lines(SUBJ.batch("gw1"), batch, max_batch_bytes=10).skipped == ["oversize"]
    assert event_lines("desk.batch.gw1", batch, prefix="desk").lines == [FILL]


# ---- the recorder ---------------------------------------------------------------------------


def test_the_recorder_writes_and_flushes_each_line_and_drops_retried_publishes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.jsonl"
    with path.open("xb") as out:
        rec = Recorder(out)
        assert rec.add(SUBJ.market("ESZ6"), QUOTE) == 1
        assert path.read_bytes() == QUOTE + b"\n"  # on disk before the file is closed
        assert rec.add(SUBJ.fills("gw1", "momentum"), FILL, "gw1.boot.1") == 1
        assert rec.add(SUBJ.fills("gw1", "momentum"), FILL, "gw1.boot.1") == 0  # a retry
        assert rec.add(SUBJ.market("ESZ6"), b"garbage") == 0
        assert rec.add(SUBJ.batch("gw1"), b"[" + ORDER + b"," + ORDER + b"]", "b-1") == 2
    assert path.read_bytes().splitlines() == [QUOTE, FILL, ORDER, ORDER]
    stats = rec.stats
    assert (stats.messages, stats.duplicates) == (5, 1)
    assert stats.events == {"quote": 1, "fill": 1, "order": 2}
    assert stats.skipped == {"decode": 1}
    text = format_stats(stats, str(path), 1.0)
    assert "recorded 4 events" in text and "fill 1, order 2, quote 1" in text
    assert "skipped 1: decode 1" in text and "duplicates 1" in text


def test_the_recorder_stops_at_its_count_even_inside_a_batch() -> None:
    out = io.BytesIO()
    rec = Recorder(out, count=3)
    assert rec.add(SUBJ.market("ESZ6"), QUOTE) == 1
    assert rec.add(SUBJ.batch("gw1"), b"[" + b",".join([ORDER] * 5) + b"]") == 2
    assert rec.full and rec.add(SUBJ.market("ESZ6"), QUOTE) == 0
    assert out.getvalue().splitlines() == [QUOTE, ORDER, ORDER]


def test_the_recorder_forgets_the_oldest_ids() -> None:
    rec = Recorder(io.BytesIO(), seen_ids=2)
    for msg_id in ("a", "b", "c", "a"):  # "a" was evicted by "c"
        rec.add(SUBJ.market("ESZ6"), QUOTE, msg_id)
    assert (rec.stats.written, rec.stats.duplicates) == (4, 0)
    rec.add(SUBJ.market("ESZ6"), QUOTE, "c")
    assert rec.stats.duplicates == 1


def test_on_the_embedded_server_the_recorder_logs_in_as_its_own_role(tmp_path: Path) -> None:
    auth = tmp_path / "nats-auth"
    auth.mkdir()
    for role in ("operator", "recorder"):
        (auth / f"{role}.nk").write_text("seed\n")
    (tmp_path / "nats.url").write_text("nats://127.0.0.1:4999\n")
    config = msgspec.convert({"data_dir": str(tmp_path)}, DaemonConfig)
    link = recorder_link(None, config)
    assert link.servers == ["nats://127.0.0.1:4999"]
    assert (link.nats.nkeys_seed, link.nats.inbox_prefix) == (
        str(auth / "recorder.nk"),
        "_INBOX_recorder",
    )
    # configured credentials are used as they are
    config = msgspec.convert(
        {"data_dir": str(tmp_path), "nats": {"user": "u", "password": "p"}}, DaemonConfig
    )
    link = recorder_link("nats://h:4222", config)
    assert (link.servers, link.nats.user, link.nats.nkeys_seed) == (["nats://h:4222"], "u", None)


# ---- end to end -----------------------------------------------------------------------------


def market(minutes: int) -> list[Quote]:
    """Rising for 3 minutes, then falling: the canary's long position loses its daily limit."""
    out, px = [], 100.0
    for i in range(minutes * 6 + 1):
        px = px + 0.01 if i <= 18 else px - 0.1
        out.append(Quote(symbol="ES", bid=px, ask=px, ts=T0 + i * 10 * S))
    return out


def test_recorded_quotes_and_fills_replay(server: EmbeddedNatsServer, tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    env = {**os.environ, "RAMPART_CONFIG": "", "RAMPART_NATS_URL": ""}
    recorder = subprocess.Popen(
        [sys.executable, "-m", "rampart", "record", "--out", str(out), "-s", server.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    quotes = market(10)
    buy = Fill(algo=ALGO, symbol="ES", side="buy", qty=5_000, price=100.0, ts=T0 + S)
    submitted = OrderEvent(algo=ALGO, event="submitted", ts=T0 + S // 2)
    acked = OrderEvent(algo=ALGO, event="acked", latency_ns=800_000, ts=T0 + S // 2 + 800_000)

    async def publish() -> None:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            await ensure_stream(js, EventsConfig(), SUBJ, 256 * 1024)
            await nc.publish(SUBJ.market("ES"), encoder.encode(quotes[0]))
            # the gateway's outbox: order events as one batch, the fill alone; the fill's ack
            # is lost and it is published again with the same id (the stream stores it once)
            batch = msgspec.json.encode([submitted, acked])
            await js.publish(SUBJ.batch("gw1"), batch, headers={"Nats-Msg-Id": "gw1.b.1-2"})
            for _ in range(2):
                ack = await js.publish(
                    SUBJ.fills("gw1", ALGO), encoder.encode(buy), headers={"Nats-Msg-Id": "gw1.b.3"}
                )
            assert ack.duplicate
            await nc.publish(SUBJ.market("ES"), b'{"type":"quote","symbol":"ES"}')  # no prices
            for q in quotes[1:]:
                await nc.publish(SUBJ.market("ES"), encoder.encode(q))
            await nc.flush()
            info = await js.stream_info("rampart_events")
            assert info.state.messages == 2  # the batch and the fill, once
        finally:
            await nc.close()

    try:
        assert recorder.stderr is not None
        line = recorder.stderr.readline()  # subscribed: what is published from now is recorded
        assert line.startswith("rampart record: recording rampart.md.>, rampart.fills.>"), line
        asyncio.run(publish())
        expected = len(quotes) + 3  # the quotes, the fill, the batch's two order events
        deadline = time.monotonic() + 20
        while not out.exists() or len(out.read_bytes().splitlines()) < expected:
            assert recorder.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        recorder.send_signal(signal.SIGINT)  # stops cleanly, with a summary
        stdout, stderr = recorder.communicate(timeout=20)
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait()
    assert recorder.returncode == 0, stderr
    assert f"recorded {expected} events" in stdout
    assert f"fill 1, order 2, quote {len(quotes)}" in stdout
    assert "skipped 1: decode 1" in stdout and "duplicates 1" in stdout
    lines = out.read_bytes().splitlines()
    assert len(lines) == expected and lines.count(encoder.encode(buy)) == 1
    assert [json.loads(x)["event"] for x in lines if b'"order"' in x] == ["submitted", "acked"]

    # the file replays: the same decisions as the events themselves
    doc = load_deployment(CANARY)
    published = [encoder.encode(quotes[0]), encoder.encode(submitted), encoder.encode(acked)]
    published += [encoder.encode(buy), *(encoder.encode(q) for q in quotes[1:])]
    replayed = run_replay(doc, lines)
    assert replayed.timeline == run_replay(doc, published).timeline
    assert replayed.summary.rollbacks == {"limit:daily_loss": 1}
    assert replayed.summary.phase == "rolled_back"
    proc = subprocess.run(
        [sys.executable, "-m", "rampart", "replay", str(CANARY), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(format_timeline(replayed.timeline))
    assert "trigger=limit:daily_loss" in proc.stdout
    assert f"events      {expected} read, {expected} applied, 0 refused" in proc.stdout
    assert "final       rolled_back, stage 0 (Micro), allocation 0" in proc.stdout


def test_record_refuses_to_overwrite_and_says_when_nats_is_not_there(tmp_path: Path) -> None:
    from rampart.cli import main

    out = tmp_path / "events.jsonl"
    out.write_bytes(QUOTE + b"\n")
    assert main(["record", "--out", str(out), "-s", "nats://127.0.0.1:1"]) == 2
    assert out.read_bytes() == QUOTE + b"\n"
    assert main(["record", "--out", str(tmp_path / "new.jsonl"), "--count", "0"]) == 2
    assert main(["record", "--out", str(tmp_path / "new.jsonl"), "--duration", "-1"]) == 2
    fresh = tmp_path / "fresh.jsonl"
    assert main(["record", "--out", str(fresh), "-s", "nats://127.0.0.1:1"]) == 1
    assert not fresh.exists()  # nothing recorded, no file left behind


def test_an_algorithm_from_another_gateway_than_configured_is_skipped() -> None:
    gateways = {"momentum": "gw1", "meanrev": "gw2"}
    assert event_lines(SUBJ.fills("gw1", "momentum"), FILL, gateways=gateways).lines == [FILL]
    out = event_lines(SUBJ.fills("gw2", "momentum"), FILL, gateways=gateways)
    assert out.skipped == ["wrong_gateway"]
    meanrev = FILL.replace(b'"momentum"', b'"meanrev"')
    batch = b"[" + FILL + b"," + meanrev + b"," + ORDER + b"]"
    out = event_lines(SUBJ.batch("gw1"), batch, gateways=gateways)
    assert (out.kinds, out.skipped) == (["fill", "order"], ["wrong_gateway"])
    # an algorithm the configuration does not name is the replay's to refuse (unknown)
    ghost = FILL.replace(b'"momentum"', b'"ghost"')
    assert event_lines(SUBJ.fills("gw9", "ghost"), ghost, gateways=gateways).lines == [ghost]
