"""Verified operators (issue 12): control requests signed with an operator's key, checked for
who, when and what. The rules on an injected clock (every refusal, the role x verb table, the
two-person rule), and end to end against a real nats-server: each verb by each role, forged,
replayed and out-of-role requests refused and alerted, the audit naming verified identities."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args

import msgspec
import nats
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.msg import Msg
from support import control, eventually, live_config, until

from rampart._core import SigningKey
from rampart.config import (
    ConfigFileError,
    ControlConfig,
    OperatorConfig,
    OperatorRole,
    parse_config,
)
from rampart.daemon import Daemon
from rampart.embedded import EmbeddedNatsServer
from rampart.operators import (
    PER_KEY_CAP,
    ROLE_FOR,
    ROLE_RANK,
    ControlAuth,
    Identity,
    Pending,
    Refusal,
    new_request,
)
from rampart.protocol import Alert, ControlVerb, Subjects
from rampart.signing import KEY_HEADER, SIG_HEADER

SUBJ = Subjects()
VERBS: tuple[ControlVerb, ...] = get_args(ControlVerb)
ROLES = ("viewer", "operator", "risk_manager", "admin")
S = 1_000_000_000
T0 = 1_800_000_000 * S


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


KEYS = {name: SigningKey.generate() for name in ("vera", "otto", "rita", "adam", "olga")}
CAST: tuple[tuple[str, OperatorRole], ...] = (
    ("vera", "viewer"),
    ("otto", "operator"),
    ("rita", "risk_manager"),
    ("adam", "admin"),
    ("olga", "operator"),
)
OPS = [OperatorConfig(name=name, key=KEYS[name].public_key, role=role) for name, role in CAST]
ROLE_OF = {op.name: op.role for op in OPS}


def auth(clock: Clock, **kw: Any) -> ControlAuth:
    return ControlAuth(ControlConfig(operators=OPS, **kw), clock=clock)


def signed(
    name: str, verb: ControlVerb, target: str = "alpha", **kw: Any
) -> tuple[str, bytes, dict[str, str]]:
    subject = SUBJ.control(verb)
    body, headers = new_request(KEYS[name], subject, target, **kw)
    return subject, body, headers


def refusal(a: ControlAuth, verb: ControlVerb, msg: tuple[str, bytes, dict[str, str]]) -> str:
    with pytest.raises(Refusal) as e:
        a.admit(verb, *msg)
    return e.value.kind


# ---- the rules, on an injected clock ------------------------------------------------------


def test_a_signed_request_names_its_verified_operator() -> None:
    clock = Clock()
    a = auth(clock)
    who, ctl = a.admit("rollback", *signed("otto", "rollback", ts=T0, reason="drill"))
    assert who == Identity("otto", KEYS["otto"].public_key, "operator")
    assert who.actor == f"otto <{KEYS['otto'].public_key}>"
    assert (ctl.target, ctl.reason) == ("alpha", "drill")


def test_unsigned_unknown_forged_and_misdirected_requests_are_refused() -> None:
    clock = Clock()
    a = auth(clock)
    subject, body, headers = signed("otto", "release", ts=T0)
    assert refusal(a, "release", (subject, body, {})) == "unsigned"
    stranger = SigningKey.generate()
    by_stranger = {
        KEY_HEADER: stranger.public_key,
        SIG_HEADER: stranger.sign_message(subject, body),
    }
    assert refusal(a, "release", (subject, body, by_stranger)) == "unknown_key"
    # the body changed after signing (a wider target), or a signature lifted onto another verb
    tampered = body.replace(b'"alpha"', b'"*"')
    assert refusal(a, "release", (subject, tampered, headers)) == "bad_signature"
    assert refusal(a, "rollback", (SUBJ.control("rollback"), body, headers)) == "bad_signature"
    # a key that is known, and a signature by another key under its name
    forged = {**headers, SIG_HEADER: KEYS["adam"].sign_message(subject, body)}
    assert refusal(a, "release", (subject, body, forged)) == "bad_signature"
    assert a.admit("release", subject, body, headers)[0].name == "otto"


def test_replayed_and_stale_requests_are_refused() -> None:
    clock = Clock()
    a = auth(clock, replay_window=timedelta(seconds=30))
    msg = signed("otto", "halt", ts=T0 + 1)
    clock.now = T0 + 5 * S
    a.admit("halt", *msg)
    assert refusal(a, "halt", msg) == "replayed"
    # the same request 29 s later is still remembered, and still refused
    clock.now = T0 + 29 * S
    assert refusal(a, "halt", msg) == "replayed"
    # out of the window either way: too old, or from a clock too far ahead
    clock.now = T0 + 40 * S
    assert refusal(a, "halt", msg) == "stale"
    assert refusal(a, "halt", signed("otto", "halt", ts=T0 + 71 * S)) == "stale"
    # the daemon's clock steps back: what it forgot stays refused (older than the latest
    # reading minus the window)
    clock.now = T0 + 10 * S
    assert refusal(a, "halt", msg) == "stale"
    # a nonce too short to be unique is a mistake, not an attack
    short = signed("otto", "halt", ts=T0 + 40 * S, nonce="abc")
    with pytest.raises(Refusal) as e:
        a.admit("halt", *short)
    assert e.value.kind == "malformed" and not e.value.alert


def test_a_restarted_daemon_refuses_what_the_earlier_run_carried_out() -> None:
    clock = Clock()
    first = auth(clock)
    msg = signed("otto", "release", ts=T0 + 2 * S)  # stamped ahead of the clock
    first.admit("release", *msg)
    stored = [(n, ts, key) for n, (ts, key) in first._nonces.items()]
    clock.now = T0 + S  # restarted within a second
    again = auth(clock)
    again.load(stored)
    assert refusal(again, "release", msg) == "replayed"


def test_a_flood_from_one_key_is_refused_never_evicting_what_it_must_remember() -> None:
    clock = Clock()
    a = auth(clock)
    kept = signed("adam", "release", ts=T0)
    a.admit("release", *kept)
    # a viewer's requests are refused for their role before their nonces are kept
    for _ in range(50):
        assert refusal(a, "release", signed("vera", "release", ts=T0)) == "role"
    assert len(a._nonces) == 1
    for _ in range(PER_KEY_CAP):
        a.admit("pause", *signed("otto", "pause", ts=T0))
    assert refusal(a, "pause", signed("otto", "pause", ts=T0)) == "flood"
    assert a.admit("pause", *signed("olga", "pause", ts=T0))[0].name == "olga"
    assert refusal(a, "release", kept) == "replayed", "a remembered request was forgotten"
    clock.now = T0 + 31 * S  # aged out: otto may act again
    assert a.admit("pause", *signed("otto", "pause", ts=clock.now))[0].name == "otto"


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("name", ["vera", "otto", "rita", "adam"])
def test_each_role_may_use_exactly_its_verbs(name: str, verb: ControlVerb) -> None:
    clock = Clock()
    a = auth(clock)
    msg = signed(name, verb, ts=T0)
    allowed = {
        "viewer": set(),
        "operator": set(VERBS) - {"approve"},
        "risk_manager": set(VERBS),
        "admin": set(VERBS),
    }[ROLE_OF[name]]
    if verb in allowed:
        assert a.admit(verb, *msg)[0].name == name
    else:
        with pytest.raises(Refusal) as e:
            a.admit(verb, *msg)
        assert e.value.kind == "role" and e.value.alert
        assert e.value.who is not None and e.value.who.name == name
        assert f"needs the role {ROLE_FOR[verb]}" in str(e.value)


def test_the_two_person_rule_needs_two_distinct_keys_within_the_window() -> None:
    clock = Clock()
    a = auth(clock, two_person=["release"])

    def ask(name: str, target: str = "alpha", reason: str = "ok") -> tuple[str, str] | Pending:
        who, ctl = a.admit("release", *signed(name, "release", target, ts=clock.now, reason=reason))
        return a.second("release", who, ctl)

    first = ask("otto", reason="fixed")
    assert isinstance(first, Pending) and "second operator" in first.message
    with pytest.raises(Refusal) as e:
        ask("otto")
    assert e.value.kind == "same_key"
    assert isinstance(ask("olga", target="beta"), Pending)  # another target: its own request
    done = ask("olga", reason="reviewed")
    otto, olga = (f"{n} <{KEYS[n].public_key}>" for n in ("otto", "olga"))
    assert done == (f"{otto} + {olga}", "fixed; reviewed")
    # consumed: the next request starts again, and an old one expires
    assert isinstance(ask("adam"), Pending)
    clock.now += 16 * 60 * S
    assert isinstance(ask("rita"), Pending), "a confirmation after the window starts afresh"
    # verbs outside the rule act at once
    who, ctl = a.admit("rollback", *signed("otto", "rollback", ts=clock.now))
    assert a.second("rollback", who, ctl) == (who.actor, "")


def test_the_local_admin_key_takes_no_part_in_the_two_person_rule() -> None:
    clock = Clock()
    local = SigningKey.generate()
    a = ControlAuth(
        ControlConfig(operators=OPS, two_person=["release"]),
        local_admin=local.public_key,
        clock=clock,
    )
    subject = SUBJ.control("release")
    assert isinstance(
        a.second("release", *a.admit("release", *signed("otto", "release", ts=T0))), Pending
    )
    body, headers = new_request(local, subject, "alpha", ts=clock.now)
    who, ctl = a.admit("release", subject, body, headers)
    with pytest.raises(Refusal) as e:
        a.second("release", who, ctl)
    assert e.value.kind == "two_person" and "local admin" in str(e.value)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["vera", "otto", "rita", "adam"]),
            st.sampled_from(VERBS),
            st.integers(0, 120),  # seconds after the start the request is stamped
            st.integers(0, 120),  # seconds after the start it arrives
            st.booleans(),  # re-sent (a replay of the previous request)
        ),
        max_size=40,
    )
)
def test_property_every_admitted_request_is_fresh_unseen_and_in_role(
    script: list[tuple[str, ControlVerb, int, int, bool]],
) -> None:
    clock = Clock()
    a = auth(clock)
    seen: set[bytes] = set()
    last: tuple[str, bytes, dict[str, str]] | None = None
    for name, verb, stamped, arrives, replay in script:
        msg = last if replay and last is not None else signed(name, verb, ts=T0 + stamped * S)
        clock.now = max(clock.now, T0 + arrives * S)
        verb = verb if not (replay and last is not None) else _verb_of(msg[0])
        try:
            who, ctl = a.admit(verb, *msg)
        except Refusal:
            continue
        assert msg[1] not in seen, "a request admitted twice"
        seen.add(msg[1])
        assert abs(ctl.ts - clock.now) <= 30 * S and ctl.ts >= T0
        assert ROLE_RANK[who.role] >= ROLE_RANK[ROLE_FOR[verb]]
        last = msg


def _verb_of(subject: str) -> ControlVerb:
    verb = subject.rsplit(".", 1)[1]
    assert verb in VERBS
    return verb


def test_the_configuration_is_checked() -> None:
    key = KEYS["otto"].public_key
    base = '[[control.operators]]\nname = "{n}"\nkey = "{k}"\nrole = "operator"\n'

    def fails(text: str, match: str) -> None:
        with pytest.raises(ConfigFileError, match=match):
            parse_config(text.encode())

    fails(base.format(n="otto", k="not-a-key"), "NKEY user public key")
    fails(base.format(n="local-admin", k=key), "reserved")
    fails(base.format(n="has space", k=key), "letters, digits")
    fails(base.format(n="a", k=key) + base.format(n="b", k=key), "one key is one person")
    fails(base.format(n="a", k=key) + base.format(n="a", k=KEYS["rita"].public_key), "twice")
    fails('[control]\ntwo_person = ["rollback"]\n', "two_person")
    one = '[control]\ntwo_person = ["release"]\n' + base.format(n="a", k=key)
    fails(one, "needs two configured operators")  # the local admin key does not count
    rita = KEYS["rita"].public_key
    two = base.format(n="a", k=key) + base.format(n="b", k=rita).replace(
        '"operator"', '"risk_manager"'
    )
    parse_config(('[control]\ntwo_person = ["release"]\n' + two).encode())
    fails('[control]\ntwo_person = ["approve"]\n' + two, "approve.*risk_manager")
    fails(base.format(n="a.b", k=key) + base.format(n="a_b", k=rita), "share the NATS user")
    fails('[control]\nreplay_window = "PT1H"\n', "replay_window")


# ---- end to end, against a real nats-server -------------------------------------------------


def e2e_config(tmp_path: Path, **control: Any) -> str:
    text = live_config([("alpha", "gw1")]).format(data_dir=tmp_path / "data")
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in control.items())
    text = text.replace("[triggers]", f"[control]\n{lines}\n[triggers]", 1)
    for op in OPS:
        text += (
            f'\n[[control.operators]]\nname = "{op.name}"\nkey = "{op.key}"\nrole = "{op.role}"\n'
        )
    return text


def test_each_verb_by_each_role_forged_replayed_and_out_of_role_end_to_end(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    config = parse_config(e2e_config(tmp_path, local_admin=False).encode())

    async def scenario() -> None:
        daemon = Daemon(config, servers=[server.url])
        await daemon.start()
        nc = await nats.connect(server.url)
        alerts: list[Alert] = []

        async def on_alert(msg: Msg) -> None:
            alerts.append(msgspec.json.decode(msg.data, type=Alert))

        await nc.subscribe(SUBJ.alert("critical"), cb=on_alert)
        try:
            assert not (tmp_path / "data" / "keys" / "local-admin.nk").exists()
            wrong: list[str] = []
            for name in ("vera", "otto", "rita", "adam"):
                for verb in VERBS:
                    target = "alpha" if verb in ("rollback", "release") else "no-such-deployment"
                    reply = await control(nc, None, verb, target, key=KEYS[name], reason="matrix")
                    refused = "needs the role" in (reply.error or "")
                    should = ROLE_RANK[ROLE_OF[name]] < ROLE_RANK[ROLE_FOR[verb]]
                    if refused != should:
                        wrong.append(f"{name} ({ROLE_OF[name]}) {verb}: {reply}")
                    if not refused:
                        assert reply.actor == f"{name} <{KEYS[name].public_key}>"
            assert not wrong, "\n".join(wrong)
            await until(lambda: any(a.title == "control request refused" for a in alerts))
            # a replay of a request that was carried out: the same bytes, refused
            subject = SUBJ.control("rollback")
            body, headers = new_request(KEYS["otto"], subject, "alpha", reason="once")
            first = await nc.request(subject, body, headers=headers, timeout=10)
            assert b'"ok":true' in first.data
            replay_body, replay_headers = body, headers
            again = await nc.request(subject, body, headers=headers, timeout=10)
            assert b"replayed request" in again.data
            # forged: otto's key named, the signature someone else's
            body, headers = new_request(KEYS["otto"], subject, "*", reason="forged")
            headers[SIG_HEADER] = SigningKey.generate().sign_message(subject, body)
            forged = await nc.request(subject, body, headers=headers, timeout=10)
            assert b"signature refused" in forged.data
            # the audit names verified identities only, and records refusals of known keys
            store = daemon.store
            assert store is not None
            actors = {r.actor for r in store.audit()}
            known = {f"{op.name} <{op.key}>" for op in OPS}
            assert actors <= known | {"rampart"}, actors - known
            refusals = [r for r in store.audit() if r.kind == "control_refused"]
            assert {r.actor.split(" ")[0] for r in refusals} == {"vera", "otto"}
            # a restarted daemon (the same store) refuses the replay too
            await daemon.close()
            daemon = Daemon(config, servers=[server.url])
            await daemon.start()

            async def answers() -> bool:
                try:
                    await nc.request(SUBJ.status("algorithms"), b"", timeout=1)
                except Exception:
                    return False
                return True

            await eventually(answers, 20, "the restarted daemon answers")
            subject = SUBJ.control("rollback")
            replayed = await nc.request(subject, replay_body, headers=replay_headers, timeout=10)
            assert b"replayed request" in replayed.data
        finally:
            await nc.close()
            await daemon.close()

    asyncio.run(scenario())


def test_two_person_release_end_to_end(server: EmbeddedNatsServer, tmp_path: Path) -> None:
    config = parse_config(e2e_config(tmp_path, two_person=["release"]).encode())

    async def scenario() -> None:
        daemon = Daemon(config, servers=[server.url])
        await daemon.start()
        nc = await nats.connect(server.url)
        guard = daemon.guard
        assert guard is not None
        try:
            rolled = await control(nc, None, "rollback", "alpha", key=KEYS["otto"])
            assert rolled.ok, rolled
            assert "alpha" in guard.halted
            first = await control(nc, None, "release", "alpha", key=KEYS["otto"], reason="fixed")
            assert first.ok and first.pending and "second operator" in first.pending
            assert "alpha" in guard.halted, "released on one key"
            same = await control(nc, None, "release", "alpha", key=KEYS["otto"], reason="fixed")
            assert not same.ok and "same key" in (same.error or "")
            done = await control(nc, None, "release", "alpha", key=KEYS["olga"], reason="seen")
            otto, olga = (f"{n} <{KEYS[n].public_key}>" for n in ("otto", "olga"))
            # carried out as both (stored; no gateway here to ack the resume)
            assert done.actor == f"{otto} + {olga}"
            assert done.ok or "released (stored)" in (done.error or ""), done
            assert "alpha" not in guard.halted
            store = daemon.store
            assert store is not None
            kinds = [(r.kind, r.actor) for r in store.audit() if r.kind != "rollback"]
            assert kinds == [("control_pending", otto), ("release", f"{otto} + {olga}")]
            assert store.audit()[-1].payload["reason"] == "fixed; seen"
        finally:
            await nc.close()
            await daemon.close()

    asyncio.run(scenario())
