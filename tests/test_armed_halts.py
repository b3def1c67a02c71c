"""Armed halts (docs/protocol.md, "Armed halts"): a halt Rampart signs in advance is announced
in its signed sidecar heartbeat by a commitment, SHA-256(reveal + the halt's signed bytes), and
the gateway accepts the halt, when it comes with ``Rampart-Reveal``, by that one hash instead of
an Ed25519 verification. What must hold: only a commitment from a heartbeat Rampart signed arms
anything; a reveal stands for those exact bytes on that subject, once; anything else falls back
to the signature, which is checked as before. And a real daemon's breach halt takes that path."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nats
from support import live_config, until

from rampart._core import armed_commit
from rampart.config import parse_config
from rampart.daemon import Daemon
from rampart.embedded import EmbeddedNatsServer
from rampart.gateway.reference import HostedAlgo, Momentum, ReferenceGateway
from rampart.gateway.sdk import GatewayAgent, GatewayHandlers
from rampart.protocol import (
    ArmedHalt,
    Command,
    CommandTarget,
    SidecarHeartbeat,
    Subjects,
    encoder,
)
from rampart.rollback import RollbackExecutor
from rampart.signing import (
    KEY_HEADER,
    REVEAL_HEADER,
    SIG_HEADER,
    SigningKey,
    Verifier,
    b64url,
    sign_headers,
)

SUBJ = Subjects()
SUBJECT = "rampart.cmd.gw1"
SECOND = 1_000_000_000

# docs/protocol.md, "Armed halts": the test vector (the body of the "Signatures" vector)
VECTOR_BODY = (
    b'{"type":"command","command_id":"c1","epoch":7,"kind":"halt",'
    b'"targets":[{"algo":"momentum-v2"}],"issued_at":1764028800000000000,'
    b'"valid_until":1764028801000000000,"reason":"limit:drawdown","v":1}'
)
VECTOR_REVEAL = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
VECTOR_COMMIT = "NpsmKFVY8Y-ibKZ_7rNAPf8ZbvGSI0nl7b71XNGg99k"


def test_the_documented_test_vector() -> None:
    reveal = bytes(range(32))
    assert b64url(reveal) == VECTOR_REVEAL
    assert armed_commit(reveal, SUBJECT, VECTOR_BODY) == VECTOR_COMMIT
    # the scheme as written in the docs, with nothing of Rampart's
    digest = hashlib.sha256(reveal + b"rampart-sig-v1\n" + SUBJECT.encode() + b"\n" + VECTOR_BODY)
    assert base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode() == VECTOR_COMMIT


class CountingRing:
    """The verifier's key ring, counting the Ed25519 verifications of commands it does."""

    def __init__(self, ring: Any) -> None:
        self.ring = ring
        self.calls = 0

    def verify(self, key: str, subject: str, body: bytes, sig: str) -> bool:
        if subject.startswith("rampart.cmd."):
            self.calls += 1
        return bool(self.ring.verify(key, subject, body, sig))


def halt_body(algo: str = "alpha", epoch: int = 7) -> bytes:
    now = time.time_ns()
    return encoder.encode(
        Command(
            command_id=os.urandom(8).hex(),
            epoch=epoch,
            kind="halt",
            targets=[CommandTarget(algo=algo)],
            issued_at=now,
            valid_until=now + 30 * SECOND,
            reason="test",
        )
    )


def armed_message(
    key: SigningKey, verifier: Verifier, body: bytes, subject: str = SUBJECT
) -> dict[str, str]:
    """The headers of a halt signed and armed as Rampart does: signature, reveal; its
    commitment given to ``verifier`` as a signed heartbeat would."""
    reveal = os.urandom(32)
    verifier.arm([(armed_commit(reveal, subject, body), time.time_ns() + 30 * SECOND)], 0)
    return {**sign_headers(key, subject, body), REVEAL_HEADER: b64url(reveal)}


def test_an_armed_halt_is_accepted_once_without_an_ed25519_verification() -> None:
    key = SigningKey.generate()
    verifier = Verifier([key.public_key])
    ring = verifier._ring = CountingRing(verifier._ring)  # type: ignore[assignment]
    body = halt_body()
    headers = armed_message(key, verifier, body)
    assert verifier.armed == 1
    assert verifier.check(SUBJECT, body, headers) is None
    assert (ring.calls, verifier.armed_used, verifier.armed) == (0, 1, 0)
    # the same message again (Rampart retrying it): used up, so its signature is checked
    assert verifier.check(SUBJECT, body, headers) is None
    assert (ring.calls, verifier.armed_used) == (1, 1)


def test_a_reveal_stands_only_for_the_bytes_it_was_armed_with() -> None:
    """A forger who saw a reveal (or guesses one) gains nothing: on other bytes, on another
    gateway's subject, or with a reveal nobody armed, the message needs a valid signature."""
    key = SigningKey.generate()
    mallory = SigningKey.generate()
    verifier = Verifier([key.public_key])
    ring = verifier._ring = CountingRing(verifier._ring)  # type: ignore[assignment]
    body = halt_body()
    reveal = armed_message(key, verifier, body)[REVEAL_HEADER]
    resume = body.replace(b'"halt"', b'"resume"')
    # claims Rampart's key id, signed by another key, with the armed halt's reveal
    forged = {
        KEY_HEADER: key.public_key,
        SIG_HEADER: sign_headers(mallory, SUBJECT, resume)[SIG_HEADER],
        REVEAL_HEADER: reveal,
    }
    assert verifier.check(SUBJECT, resume, forged) == "the signature does not match"
    other_gateway = "rampart.cmd.gw2"
    assert verifier.check(other_gateway, body, forged) == "the signature does not match"
    nobodys = {**forged, REVEAL_HEADER: b64url(os.urandom(32))}
    assert verifier.check(SUBJECT, body, nobodys) == "the signature does not match"
    not_base64 = {**forged, REVEAL_HEADER: "!!"}
    assert verifier.check(SUBJECT, body, not_base64) == "the signature does not match"
    assert (ring.calls, verifier.armed_used, verifier.armed) == (4, 0, 1)
    # the real halt is still armed: nothing above used it up
    assert verifier.check(SUBJECT, body, {REVEAL_HEADER: reveal}) is None
    assert verifier.armed_used == 1


def test_an_expired_commitment_is_not_kept() -> None:
    verifier = Verifier([SigningKey.generate().public_key])
    now = time.time_ns()
    verifier.arm([(armed_commit(b"r" * 32, SUBJECT, b"{}"), now - 1)], now)
    assert verifier.armed == 0
    verifier.arm([(armed_commit(b"r" * 32, SUBJECT, b"{}"), now + SECOND)], now)
    assert verifier.armed == 1
    verifier.arm([], now + SECOND)  # expired since
    assert verifier.armed == 0


def agent_for(key: SigningKey, now: list[int]) -> GatewayAgent:
    return GatewayAgent(
        None,  # type: ignore[arg-type]
        "gw1",
        GatewayHandlers(),
        deadman_timeout=3.0,
        wall_clock=lambda: now[0],
        trusted_keys=[key.public_key],
    )


def beat(agent: GatewayAgent, signer: SigningKey | None, hb: SidecarHeartbeat) -> None:
    subject = SUBJ.sidecar_heartbeat
    data = encoder.encode(hb)
    headers = sign_headers(signer, subject, data) if signer is not None else None
    msg = SimpleNamespace(subject=subject, data=data, headers=headers)
    asyncio.run(agent._on_sidecar_heartbeat(msg))  # type: ignore[arg-type]


def test_only_a_heartbeat_rampart_signed_arms_and_only_for_this_gateway() -> None:
    key = SigningKey.generate()
    mallory = SigningKey.generate()
    now = [time.time_ns()]
    agent = agent_for(key, now)
    until_ = now[0] + 30 * SECOND

    def armed(commit: str, gateway: str = "gw1") -> ArmedHalt:
        return ArmedHalt(gateway=gateway, commit=commit, valid_until=until_)

    c1, c2, c3, c4 = (armed_commit(os.urandom(32), SUBJECT, b"{}") for _ in range(4))
    forged = SidecarHeartbeat(daemon="rampart", ts=now[0], boot="b", armed=[armed(c1)])
    beat(agent, None, forged)  # unsigned
    beat(agent, mallory, forged)  # signed by another key
    assert agent.refused_signatures == {"heartbeats": 2}
    assert agent.verifier.armed == 0
    real = SidecarHeartbeat(
        daemon="rampart", ts=now[0], boot="b", armed=[armed(c2), armed(c3, gateway="gw2")]
    )
    beat(agent, key, real)
    assert agent.verifier.armed == 1  # gw2's commitment is not this gateway's
    # a replay of Rampart's own heartbeat is refused, and arms nothing it carries
    replay = SidecarHeartbeat(daemon="rampart", ts=now[0], boot="b", armed=[armed(c4)])
    beat(agent, key, replay)
    assert agent.refused_signatures == {"heartbeats": 3}
    assert agent.verifier.armed == 1


def test_the_executor_announces_each_armed_halt_once(server: EmbeddedNatsServer) -> None:
    """Each halt signed in advance is committed to once (``take_armed``, for the next
    heartbeat), its reveal in its headers; the commitment matches the bytes it will send. An
    unsigned executor (tests) arms nothing."""
    key = SigningKey.generate()

    async def scenario() -> None:
        nc = await nats.connect(server.url)
        try:
            ex = RollbackExecutor(
                nc, SUBJ, lambda a: "gw1", sign=lambda s, b: sign_headers(key, s, b)
            )
            ex.presign("alpha")
            ex.presign("beta")
            taken = ex.take_armed()
            assert [a.gateway for a in taken] == ["gw1", "gw1"]
            assert ex.take_armed() == []
            held = ex._presigned["alpha"]
            assert held.headers is not None
            reveal = base64.urlsafe_b64decode(held.headers[REVEAL_HEADER] + "=")
            assert taken[0].commit == armed_commit(reveal, SUBJECT, held.payload)
            assert taken[0].valid_until == held.command.valid_until
            for algo in ("gamma", "delta", "epsilon"):
                ex.presign(algo)
            assert len(ex.take_armed(limit=2)) == 2 and len(ex.take_armed()) == 1
            # a halt signed again before its commitment left: only the newest is announced
            ex.presign("zeta")
            ex.presign("zeta")
            (only,) = ex.take_armed()
            assert only is ex._presigned["zeta"].armed
            unsigned = RollbackExecutor(nc, SUBJ, lambda a: "gw1")
            unsigned.presign("alpha")
            assert unsigned.take_armed() == []
        finally:
            await nc.close()

    asyncio.run(scenario())


def test_a_daemons_halt_is_accepted_armed_by_the_reference_gateway(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """End to end: the daemon signs alpha's halt in advance, its heartbeat arms it at the
    gateway, and the rollback's halt is accepted by its commitment, with no Ed25519
    verification; the next commands (signed when sent) are verified as before."""

    async def scenario() -> None:
        config = parse_config(live_config([("alpha", "gw1")]).format(data_dir=tmp_path).encode())
        daemon = Daemon(config, servers=[server.url])
        await daemon.start()
        gw_nc = await nats.connect(server.url)
        gw = ReferenceGateway(
            gw_nc,
            "gw1",
            [HostedAlgo("alpha", "ES", Momentum(), allocation=1.0, active=True)],
            heartbeat_interval=0.05,
            deadman_timeout=3600,
            trusted_keys=[daemon.public_key],
        )
        verifier = gw.agent.verifier
        ring = verifier._ring = CountingRing(verifier._ring)  # type: ignore[assignment]
        await gw.start()
        try:
            await until(lambda: "gw1" in daemon.gateways and gw.agent.verifier.armed >= 1)
            before = ring.calls
            guard = daemon.guard
            assert guard is not None
            task = guard.trigger(["alpha"], "algo", "manual", "test", "alice", force=True)
            assert task is not None
            record = await task
            assert record is not None and record.state == "succeeded", record
            assert gw.agent.is_halted("alpha")
            assert gw.agent.verifier.armed_used == 1
            # cancel_all and set_allocation 0 were verified by signature, the halt was not
            assert ring.calls - before == 2, ring.calls - before
        finally:
            await gw.close()
            await gw_nc.close()
            await daemon.close()

    asyncio.run(scenario())


def test_a_gateway_that_lost_its_armed_halts_is_told_them_again(
    server: EmbeddedNatsServer,
) -> None:
    """A gateway reports how many armed halts it holds; fewer than were announced to it before
    its report (it restarted, it missed a heartbeat): they are announced again, and not when
    the report could predate the announcement."""
    key = SigningKey.generate()

    async def scenario() -> None:
        nc = await nats.connect(server.url)
        now = [10 * SECOND]
        try:
            ex = RollbackExecutor(
                nc,
                SUBJ,
                lambda a: "gw1" if a != "other" else "gw2",
                sign=lambda s, b: sign_headers(key, s, b),
                wall_clock=lambda: now[0],
            )
            for algo in ("alpha", "beta", "other"):
                ex.presign(algo)
            assert len(ex.take_armed()) == 3
            now[0] += SECOND // 10
            ex.note_armed_report("gw1", 0)  # may predate the announcement: nothing yet
            ex.note_armed_report("gw2", 1)
            assert ex.rearm_lost() == [] and ex.take_armed() == []
            now[0] += SECOND
            ex.note_armed_report("gw1", 2)  # holds both: nothing
            assert ex.rearm_lost() == []
            ex.note_armed_report("gw1", 1)  # lost one (a restart): both again, gw2's not
            assert ex.rearm_lost() == ["gw1"]
            again = ex.take_armed()
            assert sorted(a.commit for a in again) == sorted(
                ex._presigned[a].armed.commit  # type: ignore[union-attr]
                for a in ("alpha", "beta")
            )
            # just announced again: the same stale report does not repeat it
            assert ex.rearm_lost() == []
        finally:
            await nc.close()

    asyncio.run(scenario())


def test_a_restarted_gateway_is_armed_again(server: EmbeddedNatsServer, tmp_path: Path) -> None:
    """The gateway process restarts (a new agent, nothing armed): its heartbeat says so, the
    daemon announces its armed halts again, and the next halt is accepted armed."""

    async def scenario() -> None:
        config = parse_config(live_config([("alpha", "gw1")]).format(data_dir=tmp_path).encode())
        daemon = Daemon(config, servers=[server.url])
        await daemon.start()

        def gateway(nc: Any) -> ReferenceGateway:
            return ReferenceGateway(
                nc,
                "gw1",
                [HostedAlgo("alpha", "ES", Momentum(), allocation=1.0, active=True)],
                heartbeat_interval=0.05,
                deadman_timeout=3600,
                trusted_keys=[daemon.public_key],
            )

        gw_nc = await nats.connect(server.url)
        gw = gateway(gw_nc)
        await gw.start()
        try:
            await until(lambda: gw.agent.verifier.armed >= 1)
            await gw.close()
            await gw_nc.close()
            gw_nc = await nats.connect(server.url)
            gw = gateway(gw_nc)  # restarted within the heartbeat timeout: not "first seen"
            await gw.start()
            await until(lambda: gw.agent.verifier.armed >= 1)
            assert daemon.guard is not None and daemon.guard.executor.rearmed >= 2
            task = daemon.guard.trigger(["alpha"], "algo", "manual", "test", "alice", force=True)
            assert task is not None
            record = await task
            assert record is not None and record.state == "succeeded", record
            assert gw.agent.verifier.armed_used == 1
        finally:
            await gw.close()
            await gw_nc.close()
            await daemon.close()

    asyncio.run(scenario())
