"""Commands gateways can verify (issue 12): every command and sidecar heartbeat Rampart sends is
signed, and the SDK refuses anything else. Against a real nats-server with the daemon and the
reference gateway: a forged resume with a huge epoch is ignored and a later real halt applied;
forged and replayed heartbeats do not keep the dead-man's switch from tripping; the refusals are
alerted by Rampart. And the scheme's test vector (docs/protocol.md, "Signatures")."""

from __future__ import annotations

import asyncio
import os
import stat
import time
import uuid
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.msg import Msg
from support import live_config, rampart_keys, until

from rampart.cli import main
from rampart.config import parse_config
from rampart.daemon import Daemon
from rampart.embedded import EmbeddedNatsServer
from rampart.gateway.reference import HostedAlgo, Momentum, ReferenceGateway
from rampart.operators import local_admin_path
from rampart.protocol import (
    Alert,
    Command,
    CommandTarget,
    SidecarHeartbeat,
    Subjects,
    encoder,
)
from rampart.signing import (
    KEY_HEADER,
    SIG_HEADER,
    SigningKey,
    SigningKeyError,
    Verifier,
    load_or_create,
    sign_headers,
    verify_message,
)

SUBJ = Subjects()

# docs/protocol.md, "Signatures": the test vector
VECTOR_SEED = "SUAED7QJ7F5WOT7E34TMKEGXOKTIYYK67OONIYTTTPUBBPJRZLJH6TJMPI"
VECTOR_PUBLIC = "UDMX63M6L3AAXY6FYZSEWWAA4T7G7GDEVPDBIGWL3WBHXR2RHIH7OCCU"
VECTOR_SUBJECT = "rampart.cmd.gw1"
VECTOR_BODY = (
    b'{"type":"command","command_id":"c1","epoch":7,"kind":"halt",'
    b'"targets":[{"algo":"momentum-v2"}],"issued_at":1764028800000000000,'
    b'"valid_until":1764028801000000000,"reason":"limit:drawdown","v":1}'
)
VECTOR_SIG = (
    "Rw0enqFKekpaxPCxIGAeSeFd3u3paKXMjcDTXCNomWCPLGjhRugV3Cxw0Y-eZ0PN7wuC3vrnp43wBSCWK6sdBw"
)


def test_the_documented_test_vector() -> None:
    key = SigningKey(VECTOR_SEED)
    assert key.public_key == VECTOR_PUBLIC
    assert key.sign_message(VECTOR_SUBJECT, VECTOR_BODY) == VECTOR_SIG
    assert verify_message(VECTOR_PUBLIC, VECTOR_SUBJECT, VECTOR_BODY, VECTOR_SIG)
    # the subject is signed: the same command for another gateway does not verify
    assert not verify_message(VECTOR_PUBLIC, "rampart.cmd.gw2", VECTOR_BODY, VECTOR_SIG)
    v = Verifier([VECTOR_PUBLIC])
    headers = {KEY_HEADER: VECTOR_PUBLIC, SIG_HEADER: VECTOR_SIG}
    assert v.check(VECTOR_SUBJECT, VECTOR_BODY, headers) is None
    assert v.check(VECTOR_SUBJECT, VECTOR_BODY, None) == "unsigned"
    assert v.check(VECTOR_SUBJECT, VECTOR_BODY + b" ", headers) == "the signature does not match"
    other = SigningKey.generate()
    forged = sign_headers(other, VECTOR_SUBJECT, VECTOR_BODY)
    assert (v.check(VECTOR_SUBJECT, VECTOR_BODY, forged) or "").startswith("signed by an untrusted")
    # claiming the trusted key with another key's signature
    claimed = {KEY_HEADER: VECTOR_PUBLIC, SIG_HEADER: forged[SIG_HEADER]}
    assert v.check(VECTOR_SUBJECT, VECTOR_BODY, claimed) == "the signature does not match"
    with pytest.raises(ValueError, match="no trusted key"):
        Verifier([])
    with pytest.raises(ValueError, match="not NKEY public keys"):
        Verifier(["UNOTAKEY"])
    with pytest.raises(ValueError, match="not an NKEY seed"):
        SigningKey("SUnot-a-seed")
    assert VECTOR_SEED not in repr(key)


def test_the_key_file_is_created_private_and_a_readable_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "rampart.nk"
    key = load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (tmp_path / "keys" / "rampart.pub").read_text().strip() == key.public_key
    assert load_or_create(path).public_key == key.public_key  # loaded, never replaced
    os.chmod(path, 0o644)
    with pytest.raises(SigningKeyError, match="readable by others"):
        load_or_create(path)


def test_rampart_key_prints_the_public_key_the_daemon_signs_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "rampart.toml"
    cfg.write_text(CONFIG.format(data_dir=tmp_path / "data"))
    assert main(["key", "-c", str(cfg)]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == rampart_keys(tmp_path / "data")[0]
    assert main(["key", "-c", str(cfg)]) == 0  # the same key again, never a new one
    assert capsys.readouterr().out.strip() == printed
    os.chmod(tmp_path / "data" / "keys" / "rampart.nk", 0o640)
    assert main(["key", "-c", str(cfg)]) == 1
    assert "readable by others" in capsys.readouterr().err


CONFIG = live_config([("alpha", "gw1")])


def forged_command(kind: str, epoch: int) -> Command:
    now = time.time_ns()
    return Command(
        command_id=uuid.uuid4().hex,
        epoch=epoch,
        kind=kind,  # type: ignore[arg-type]
        targets=[CommandTarget(algo="alpha")],
        issued_at=now,
        valid_until=now + 60 * 1_000_000_000,
        reason="forged",
    )


def test_a_forged_resume_with_a_huge_epoch_is_ignored_and_a_real_halt_still_applies(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """The attack of issue 12: one anonymous ``resume`` with epoch 2^62 made every later halt
    ``stale_epoch``. Unsigned, or signed by a key the gateway does not trust, it is refused as
    ``bad_signature`` and changes nothing; Rampart's halt is applied; Rampart alerts."""

    async def scenario() -> None:
        config = parse_config(CONFIG.format(data_dir=tmp_path / "data").encode())
        daemon = Daemon(config, servers=[server.url])
        await daemon.start()
        nc = await nats.connect(server.url)
        alerts: list[Alert] = []

        async def on_alert(msg: Msg) -> None:
            alerts.append(msgspec.json.decode(msg.data, type=Alert))

        await nc.subscribe(SUBJ.alert("*"), cb=on_alert)
        gw_nc = await nats.connect(server.url)
        gw = ReferenceGateway(
            gw_nc,
            "gw1",
            [HostedAlgo("alpha", "ES", Momentum(), allocation=1.0, active=True)],
            heartbeat_interval=0.05,
            deadman_timeout=3600,
            trusted_keys=[daemon.public_key],
        )
        await gw.start()
        try:
            await until(lambda: "gw1" in daemon.gateways)
            subject = SUBJ.command("gw1")
            mallory = SigningKey.generate()
            # a reply inbox of the forger's: the gateway must not answer (with allow_responses
            # an answer would be a publish on a subject the forger chose)
            answers: list[Msg] = []

            async def on_answer(msg: Msg) -> None:
                answers.append(msg)

            await nc.subscribe("forger.inbox", cb=on_answer)
            for kind in ("halt", "resume"):  # unsigned, then signed by another key
                body = encoder.encode(forged_command(kind, 2**62))
                for headers in (None, sign_headers(mallory, subject, body)):
                    await nc.publish(subject, body, reply="forger.inbox", headers=headers)
            await until(lambda: gw.agent.refused_signatures.get("commands") == 4)
            await nc.flush()
            assert not answers, "a gateway answered a forged command"
            assert not gw.agent.is_halted("alpha")
            assert "alpha" not in gw.agent.book or all(
                e < 2**62 for e in gw.agent.book.report("alpha").epochs.values()
            )
            # Rampart's real halt is applied: epochs moved only through signed commands
            guard = daemon.guard
            assert guard is not None
            task = guard.trigger(["alpha"], "algo", "manual", "test", "alice", force=True)
            assert task is not None
            record = await task
            assert record is not None and record.state == "succeeded", record
            assert gw.agent.is_halted("alpha")
            # the gateway reports its refusals; Rampart alerts
            await until(lambda: any(a.title == "forged messages refused by gw1" for a in alerts))
            (alert,) = [a for a in alerts if a.title == "forged messages refused by gw1"]
            assert "4 commands" in alert.detail and alert.severity == "critical"
        finally:
            await gw.close()
            await gw_nc.close()
            await nc.close()
            await daemon.close()

    asyncio.run(scenario())


def test_forged_and_replayed_heartbeats_do_not_keep_the_deadmans_switch_alive(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """Rampart stops; a forger keeps publishing sidecar heartbeats: unsigned, signed by its own
    key, and Rampart's own last heartbeat replayed. The gateway's switch trips all the same."""

    async def scenario() -> None:
        config = parse_config(CONFIG.format(data_dir=tmp_path / "data").encode())
        daemon = Daemon(config, servers=[server.url])
        await daemon.start()
        nc = await nats.connect(server.url)
        captured: list[Msg] = []

        async def capture(msg: Msg) -> None:
            captured.append(msg)

        await nc.subscribe(SUBJ.sidecar_heartbeat, cb=capture)
        gw_nc = await nats.connect(server.url)
        gw = ReferenceGateway(
            gw_nc,
            "gw1",
            [HostedAlgo("alpha", "ES", Momentum(), allocation=1.0, active=True)],
            heartbeat_interval=0.05,
            deadman_timeout=0.5,
            trusted_keys=rampart_keys(config.data_dir),
        )
        tripped: list[float] = []
        gw.agent.deadman_listeners.append(lambda: tripped.append(time.monotonic()))
        await gw.start()
        try:
            await until(lambda: len(captured) >= 3)
            await asyncio.sleep(0.7)  # Rampart's signed heartbeats keep it armed
            assert not tripped
            await daemon.close()
            stopped = time.monotonic()
            last = captured[-1]
            mallory = SigningKey.generate()
            subject = SUBJ.sidecar_heartbeat
            while not tripped and time.monotonic() - stopped < 10:
                hb = encoder.encode(
                    SidecarHeartbeat(daemon="rampart", ts=time.time_ns(), interval_ms=50)
                )
                await nc.publish(subject, hb)  # unsigned
                await nc.publish(subject, hb, headers=sign_headers(mallory, subject, hb))
                await nc.publish(subject, last.data, headers=last.headers)  # replayed
                await asyncio.sleep(0.05)
            assert tripped, "forged heartbeats kept the dead-man's switch from tripping"
            assert gw.agent.is_halted("alpha")
            refused = gw.agent.refused_signatures["heartbeats"]
            assert refused >= 3
        finally:
            await gw.close()
            await gw_nc.close()
            await nc.close()
            await daemon.close()

    asyncio.run(scenario())


def test_the_cli_logs_in_with_the_configurations_credentials(tmp_path: Path) -> None:
    """`rampart status` and the control verbs use the config's [nats] credentials (they used
    to connect anonymously and fail with "Authorization Violation")."""
    server = EmbeddedNatsServer(
        store_dir=tmp_path / "nats",
        extra_config='authorization {\n  users = [ {user: "ops", password: "s3cret"} ]\n}\n',
    )
    url = server.start()
    try:
        text = CONFIG.format(data_dir=tmp_path / "data")
        creds = f'servers = ["{url}"]\nuser = "ops"\npassword = "s3cret"\n'
        cfg = tmp_path / "rampart.toml"
        cfg.write_text(text.replace("[triggers]", f"[nats]\n{creds}\n[triggers]"))
        anonymous = tmp_path / "anonymous.toml"
        anonymous.write_text(
            text.replace("[triggers]", f'[nats]\nservers = ["{url}"]\n\n[triggers]')
        )

        async def scenario() -> None:
            daemon = Daemon(parse_config(cfg.read_bytes()), servers=[url])
            await daemon.start()
            try:
                for args in (["status", "-c", str(cfg)], ["status", "alpha", "-c", str(cfg)]):
                    assert await asyncio.to_thread(main, args) == 0, args
                assert await asyncio.to_thread(main, ["status", "-c", str(anonymous)]) == 1
                code = await asyncio.to_thread(
                    main,
                    [
                        "rollback",
                        "alpha",
                        "-c",
                        str(cfg),
                        "--reason",
                        "test",
                    ],
                )
                assert code == 1  # heard and carried out; no gateway acks it here
                assert daemon.guard is not None and "alpha" in daemon.guard.halted
                admin = local_admin_path(tmp_path / "data").with_suffix(".pub").read_text()
                assert daemon.guard.halted["alpha"].actor == f"local-admin <{admin.strip()}>"
            finally:
                await daemon.close()

        asyncio.run(scenario())
    finally:
        server.stop()


def test_heartbeats_are_ordered_per_boot_of_rampart() -> None:
    """A replay within one boot is refused; a restarted Rampart whose clock is behind its
    previous run's is heard at once (its boot is new), as long as it is fresh."""
    from types import SimpleNamespace

    from rampart.gateway.sdk import GatewayAgent, GatewayHandlers

    key = SigningKey.generate()
    now = [time.time_ns()]
    agent = GatewayAgent(
        None,  # type: ignore[arg-type]
        "gw1",
        GatewayHandlers(),
        deadman_timeout=3.0,
        wall_clock=lambda: now[0],
        trusted_keys=[key.public_key],
    )
    subject = SUBJ.sidecar_heartbeat

    def beat(ts: int, boot: str) -> None:
        data = encoder.encode(SidecarHeartbeat(daemon="rampart", ts=ts, boot=boot))
        msg = SimpleNamespace(subject=subject, data=data, headers=sign_headers(key, subject, data))
        asyncio.run(agent._on_sidecar_heartbeat(msg))  # type: ignore[arg-type]

    beat(now[0], "first")
    beat(now[0], "first")  # the same heartbeat again: a replay
    assert agent.refused_signatures == {"heartbeats": 1}
    beat(now[0] - 1_000_000_000, "second")  # restarted, its clock 1 s behind: heard
    assert agent.refused_signatures == {"heartbeats": 1}
    beat(now[0] - 10 * 1_000_000_000, "third")  # stale beyond the dead-man timeout
    assert agent.refused_signatures == {"heartbeats": 2}
    # this gateway stopped 10 s (SIGSTOP): the heartbeats of a boot it heard that waited for it
    # come late, in order. Not counted for the switch, and not refused as forged (found from
    # outside: each raised Rampart's critical "forged messages" alert)
    start, fed = now[0], agent.deadman.last_seen
    now[0] += 10 * 1_000_000_000
    for i in range(1, 4):
        beat(start + i * 100_000_000, "second")
    assert agent.refused_signatures == {"heartbeats": 2} and agent.late_heartbeats == 3
    assert agent.deadman.last_seen == fed
    beat(start + 200_000_000, "second")  # not newer than the last: a replay, still refused
    assert agent.refused_signatures == {"heartbeats": 3}
