"""Least privilege, generated (issue 12): `rampart nats-config` writes NKEY users per role and the
nats-server authorization block; a real nats-server runs with it. Anonymous logins are refused;
the whole role x subject matrix is checked, allowed and denied; and Rampart, a gateway, an
operator and a viewer each work with only their own permissions, end to end."""

from __future__ import annotations

import asyncio
import stat
import time
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client
from support import live_config, until

from rampart.cli import main
from rampart.config import parse_config
from rampart.daemon import Daemon
from rampart.embedded import EmbeddedNatsServer
from rampart.gateway.reference import HostedAlgo, Momentum, ReferenceGateway
from rampart.nats_auth import roles
from rampart.protocol import Quote, Subjects
from rampart.signing import read_key

SUBJ = Subjects()

CONFIG = live_config([("alpha", "gw1"), ("beta", "gw2")])

# (subject, may each role publish on it?) - the roles of `roles(config)`, in this order
ROLE_NAMES = (
    "daemon",
    "gateway-gw1",
    "gateway-gw2",
    "feed",
    "operator",
    "viewer",
    "recorder",
    "person-alice",
)
PUBLISH: list[tuple[str, tuple[bool, ...]]] = [
    (SUBJ.fills("gw1", "alpha"), (True, True, False, False, False, False, False, False)),
    (SUBJ.fills("gw2", "beta"), (True, False, True, False, False, False, False, False)),
    (SUBJ.orders("gw1", "alpha"), (True, True, False, False, False, False, False, False)),
    (SUBJ.batch("gw1"), (True, True, False, False, False, False, False, False)),
    (SUBJ.heartbeat("gw1"), (True, True, False, False, False, False, False, False)),
    (SUBJ.heartbeat("gw2"), (True, False, True, False, False, False, False, False)),
    (SUBJ.market("ES"), (True, False, False, True, False, False, False, False)),
    (SUBJ.command("gw1"), (True, False, False, False, False, False, False, False)),
    (SUBJ.sidecar_heartbeat, (True, False, False, False, False, False, False, False)),
    (SUBJ.alert("critical"), (True, False, False, False, False, False, False, False)),
    (SUBJ.control("rollback"), (True, False, False, False, True, False, False, True)),
    (SUBJ.control("release"), (True, False, False, False, True, False, False, True)),
    (SUBJ.status("algorithms"), (True, False, False, False, True, True, False, True)),
    (
        "$JS.API.STREAM.DELETE.rampart_events",
        (True, False, False, False, False, False, False, False),
    ),
    ("_INBOX_operator.x", (False, False, False, False, False, False, False, False)),
]
SUBSCRIBE: list[tuple[str, tuple[bool, ...]]] = [
    (SUBJ.command("gw1"), (True, True, False, False, False, False, False, False)),
    (SUBJ.command("gw2"), (True, False, True, False, False, False, False, False)),
    (SUBJ.sidecar_heartbeat, (True, True, True, False, False, False, False, False)),
    (SUBJ.market("ES"), (True, True, True, False, False, False, True, False)),
    (SUBJ.fills("gw1", "alpha"), (True, False, False, False, False, False, True, False)),
    (SUBJ.orders("gw2", "beta"), (True, False, False, False, False, False, True, False)),
    (SUBJ.batch("gw1"), (True, False, False, False, False, False, True, False)),
    (SUBJ.heartbeat("gw1"), (True, False, False, False, False, False, False, False)),
    (SUBJ.control("rollback"), (True, False, False, False, False, False, False, False)),
    (SUBJ.alert("critical"), (True, False, False, False, True, True, False, True)),
    (SUBJ.breach("alpha"), (True, False, False, False, True, True, False, True)),
    ("_INBOX_operator.>", (False, False, False, False, True, False, False, False)),
    ("_INBOX_viewer.>", (False, False, False, False, False, True, False, False)),
    ("_INBOX_recorder.>", (False, False, False, False, False, False, True, False)),
    ("_INBOX_gateway-gw2.>", (False, False, True, False, False, False, False, False)),
    ("_INBOX_person-alice.>", (False, False, False, False, False, False, False, True)),
    ("_INBOX.>", (False, False, False, False, False, False, False, False)),
    (">", (False, False, False, False, False, False, False, False)),
]


@pytest.fixture
def secured(tmp_path: Path) -> tuple[Path, EmbeddedNatsServer, Path]:
    """The configuration (with one person, alice, an operator whose signing key is in
    ``tmp_path/alice.nk``), the server with the generated authorization, and the files."""
    cfg = tmp_path / "rampart.toml"
    alice = tmp_path / "alice.nk"
    assert main(["key", "--new", str(alice)]) == 0
    person = (
        f'\n[[control.operators]]\nname = "alice"\nkey = "{read_key(alice).public_key}"\n'
        'role = "operator"\n'
    )
    cfg.write_text(CONFIG.format(data_dir=tmp_path / "data") + person)
    out = tmp_path / "nats-auth"
    assert main(["nats-config", "-c", str(cfg), "--out", str(out)]) == 0
    server = EmbeddedNatsServer(
        store_dir=tmp_path / "nats",
        extra_config=(out / "authorization.conf").read_text(),
    )
    return cfg, server, out


async def login(server: EmbeddedNatsServer, out: Path, role: str, errors: list[str]) -> Client:
    inbox = "_INBOX_" + role
    seed = out / f"{role}.nk"

    async def on_error(e: Exception) -> None:
        errors.append(str(e))

    return await nats.connect(
        server.url,
        nkeys_seed=str(seed),
        inbox_prefix=inbox,
        error_cb=on_error,
        allow_reconnect=False,
    )


def test_the_generated_files(
    secured: tuple[Path, EmbeddedNatsServer, Path], tmp_path: Path
) -> None:
    cfg, _, out = secured
    config = parse_config(cfg.read_bytes())
    assert [r.name for r in roles(config)] == list(ROLE_NAMES)
    for name in ROLE_NAMES:
        seed = out / f"{name}.nk"
        fragment = msgspec.toml.decode((out / f"{name}.toml").read_bytes())["nats"]
        assert fragment["inbox_prefix"] == "_INBOX_" + name
        assert stat.S_IMODE(seed.stat().st_mode) == 0o600
        assert fragment["nkeys_seed"] == str(seed.resolve())
    text = (out / "authorization.conf").read_text()
    # a person's NATS login is never their signing key (a server signs its login nonce with it)
    assert read_key(tmp_path / "alice.nk").public_key not in text
    for name in ROLE_NAMES:
        assert (out / f"{name}.nk").read_text().strip() not in text, "a seed in the server's conf"
    before = (out / "operator.nk").read_text()
    assert main(["nats-config", "-c", str(cfg), "--out", str(out)]) == 0
    assert (out / "operator.nk").read_text() == before, "a seed was replaced"


def test_anonymous_is_refused_and_every_role_gets_exactly_its_subjects(
    secured: tuple[Path, EmbeddedNatsServer, Path],
) -> None:
    _, server, out = secured
    server.start()

    async def scenario() -> None:
        anonymous = Client()
        with pytest.raises(Exception, match="Authorization Violation"):
            await anonymous.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0)
        await anonymous.close()
        errors: dict[str, list[str]] = {r: [] for r in ROLE_NAMES}
        conns = {r: await login(server, out, r, errors[r]) for r in ROLE_NAMES}
        try:
            wrong: list[str] = []
            for subject, allowed in SUBSCRIBE:
                for role, ok in zip(ROLE_NAMES, allowed, strict=True):
                    errors[role].clear()
                    sub = await conns[role].subscribe(subject)
                    await conns[role].flush()
                    await asyncio.sleep(0.02)
                    refused = any("subscription" in e.lower() for e in errors[role])
                    if refused == ok:
                        wrong.append(
                            f"{role} subscribe {subject}: {'refused' if refused else 'allowed'}"
                        )
                    if ok:
                        await sub.unsubscribe()
            for subject, allowed in PUBLISH:
                for role, ok in zip(ROLE_NAMES, allowed, strict=True):
                    errors[role].clear()
                    await conns[role].publish(subject, b"{}")
                    await conns[role].flush()
                    await asyncio.sleep(0.02)
                    refused = any("publish" in e.lower() for e in errors[role])
                    if refused == ok:
                        wrong.append(
                            f"{role} publish {subject}: {'refused' if refused else 'allowed'}"
                        )
            assert not wrong, "\n".join(wrong)
        finally:
            for nc in conns.values():
                await nc.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_rampart_a_gateway_an_operator_and_a_viewer_work_with_their_own_permissions(
    secured: tuple[Path, EmbeddedNatsServer, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg, server, out = secured
    url = server.start()
    text = cfg.read_text()
    daemon_cfg = parse_config((text + "\n" + (out / "daemon.toml").read_text()).encode())
    for role in ("operator", "viewer"):
        (tmp_path / f"{role}.toml").write_text(text + "\n" + (out / f"{role}.toml").read_text())
    # alice: her NATS user's fragment, and her own signing key for the CLI (control.key_file)
    alice_seed = tmp_path / "alice.nk"
    signing = text.replace("[triggers]", f'[control]\nkey_file = "{alice_seed}"\n\n[triggers]', 1)
    (tmp_path / "alice.toml").write_text(signing + "\n" + (out / "person-alice.toml").read_text())

    async def scenario() -> None:
        daemon = Daemon(daemon_cfg, servers=[url])
        await daemon.start()
        gw_errors: list[str] = []
        gw_nc = await login(server, out, "gateway-gw1", gw_errors)
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
            # its durable events reach Rampart through the stream (publish + ack on its inbox)
            quote = Quote(symbol="ES", bid=99.9, ask=100.1, ts=time.time_ns())
            gw.venue.on_quote(quote.symbol, quote.bid, quote.ask, quote.ts)
            await gw.send_order(gw.algos["alpha"], "buy", 2.0, quote)
            await until(lambda: daemon.engine.snapshot("alpha").fills == 1)
            viewer = ["-c", str(tmp_path / "viewer.toml"), "--servers", url]
            operator = ["-c", str(tmp_path / "operator.toml"), "--servers", url]
            assert await asyncio.to_thread(main, ["status", *viewer]) == 0
            assert await asyncio.to_thread(main, ["status", "alpha", *operator]) == 0
            verb = ["rollback", "alpha", "--reason", "test", "--timeout", "1"]
            assert await asyncio.to_thread(main, [*verb, *viewer]) == 1  # not its verb
            assert "NATS refused this user" in capsys.readouterr().err
            assert daemon.guard is not None and "alpha" not in daemon.guard.halted
            # the shared operator login, on the daemon's host: signed with the local admin key
            assert await asyncio.to_thread(main, [*verb, *operator]) == 0
            assert "alpha" in daemon.guard.halted
            assert daemon.guard.halted["alpha"].actor.startswith("local-admin <")
            await until(lambda: gw.agent.is_halted("alpha"))  # the command reached it
            # alice: her own NATS user, and her own key signs her request
            alice = ["-c", str(tmp_path / "alice.toml"), "--servers", url]
            release = ["release", "alpha", "--reason", "checked", "--timeout", "5"]
            assert await asyncio.to_thread(main, [*release, *alice]) == 0
            assert "alpha" not in daemon.guard.halted
            store = daemon.store
            assert store is not None
            alice_key = read_key(alice_seed).public_key
            assert store.audit()[-1].actor == f"alice <{alice_key}>"
            await until(lambda: not gw.agent.is_halted("alpha"))
            assert not gw_errors, gw_errors
        finally:
            await gw.close()
            await gw_nc.close()
            await daemon.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_the_embedded_server_is_secure_by_default(tmp_path: Path) -> None:
    """`rampart run` without [nats] servers: its embedded nats-server has a user per role in
    <data_dir>/nats-auth (seeds 0600), refuses anonymous clients, and the CLI on the host logs in
    as the operator without any flag."""
    cfg = tmp_path / "rampart.toml"
    cfg.write_text(CONFIG.format(data_dir=tmp_path / "data"))

    async def scenario() -> None:
        daemon = Daemon(parse_config(cfg.read_bytes()))
        await daemon.start()
        try:
            assert daemon.embedded is not None
            url = daemon.servers[0]
            users = tmp_path / "data" / "nats-auth"
            for role in ROLE_NAMES[:-1]:  # no person configured here
                assert stat.S_IMODE((users / f"{role}.nk").stat().st_mode) == 0o600
            anonymous = Client()
            with pytest.raises(Exception, match="Authorization Violation"):
                await anonymous.connect(url, allow_reconnect=False, max_reconnect_attempts=0)
            await anonymous.close()
            assert await asyncio.to_thread(main, ["status", "-c", str(cfg)]) == 0
            # a gateway logs in with its own seed; it may not speak for another gateway
            errors: list[str] = []

            async def on_error(e: Exception) -> None:
                errors.append(str(e))

            gw = await nats.connect(
                url,
                nkeys_seed=str(users / "gateway-gw1.nk"),
                inbox_prefix="_INBOX_gateway-gw1",
                error_cb=on_error,
                allow_reconnect=False,
            )
            await gw.publish(SUBJ.heartbeat("gw2"), b"{}")
            await gw.flush()
            await until(lambda: any("publish" in e.lower() for e in errors))
            await gw.close()
        finally:
            await daemon.close()

    asyncio.run(scenario())
