"""The rollback executor against the reference gateway over a real nats-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from support import until

from rampart.embedded import EmbeddedNatsServer
from rampart.gateway.reference import HostedAlgo, Momentum, ReferenceGateway
from rampart.gateway.slippage import Side
from rampart.protocol import (
    Command,
    CommandTarget,
    Quote,
    SidecarHeartbeat,
    Subjects,
    command_ack_decoder,
    command_decoder,
    encoder,
)
from rampart.rollback import ExecutorSettings, RollbackExecutor, RollbackRequest
from rampart.signing import SigningKey, sign_headers

SUBJ = Subjects()
T0 = 1_764_028_800_000_000_000


# Rampart's signing key in these tests (no daemon: the executor signs with it)
KEY = SigningKey.generate()


def hosted() -> list[HostedAlgo]:
    return [
        HostedAlgo("mom-v1", "ESZ5", Momentum(lot=2), allocation=1.0, active=False),
        HostedAlgo("mom-v2", "ESZ5", Momentum(lot=40, sign=-1), allocation=1.0, active=True),
    ]


@asynccontextmanager
async def gateway(url: str, **kw: float) -> AsyncIterator[tuple[Client, ReferenceGateway]]:
    nc = await nats.connect(url)
    gw = ReferenceGateway(nc, "gw1", hosted(), trusted_keys=[KEY.public_key], **kw)  # type: ignore[arg-type]
    await gw.start()
    try:
        yield nc, gw
    finally:
        await gw.close()
        await nc.close()


def executor(nc: Client, **settings: Any) -> RollbackExecutor:
    return RollbackExecutor(
        nc,
        SUBJ,
        lambda algo: "gw1",
        settings=ExecutorSettings(**settings),
        sign=signed,
    )


def signed(subject: str, body: bytes) -> dict[str, str]:
    return sign_headers(KEY, subject, body)


async def request(nc: Client, subject: str, data: bytes) -> Msg:
    """A command as Rampart sends it: signed."""
    return await nc.request(subject, data, timeout=2, headers=signed(subject, data))


async def trade(gw: ReferenceGateway, n: int = 30) -> None:
    for i in range(n):
        px = 6000.0 + (i % 7) * 1.5 - (i % 3)
        await gw.on_quote(Quote(symbol="ESZ5", bid=px - 0.25, ask=px + 0.25, ts=T0 + i))


def test_rollback_halts_cancels_zeroes_and_brings_back_the_previous_version(
    server: EmbeddedNatsServer,
) -> None:
    async def scenario() -> None:
        async with gateway(server.url) as (_, gw):
            # latency so that orders are pending when the rollback comes
            gw.venue.latency_ns = 10**12
            await trade(gw)
            assert gw.venue.open_orders("mom-v2"), "the faulty version has working orders"
            rampart = await nats.connect(server.url)
            req = RollbackRequest(
                algos=("mom-v2",),
                scope="algo",
                trigger="limit:drawdown",
                reason="drawdown 0.06 > 0.05",
                actor="rampart",
                previous={"mom-v2": "mom-v1"},
            )
            record = await executor(rampart).execute(req)
            v1, v2 = gw.algos["mom-v1"], gw.algos["mom-v2"]
            assert v2.halted and v2.allocation == 0.0
            assert gw.venue.open_orders("mom-v2") == []
            assert v1.active and not v1.halted
            assert record.state == "succeeded"
            steps = {s.name: s for s in record.steps}
            assert set(steps) == {"halt", "cancel", "allocate", "activate", "total"}
            assert all(s.status == "acked" and s.duration_ns for s in steps.values())
            assert steps["total"].duration_ns >= steps["halt"].duration_ns  # type: ignore[operator]
            assert record.target_ms == {"halt": 100.0, "cancel": 500.0, "total": 1000.0}
            await rampart.close()

    asyncio.run(scenario())


def test_a_halted_algorithm_is_reduce_only(server: EmbeddedNatsServer) -> None:
    async def scenario() -> None:
        async with gateway(server.url) as (_, gw):
            await trade(gw)
            v2 = gw.algos["mom-v2"]
            held = gw.venue.positions("mom-v2")["ESZ5"]
            await gw.halt("mom-v2")
            q = Quote(symbol="ESZ5", bid=6000.0, ask=6000.5, ts=T0 + 100)
            grow: Side = "buy" if held > 0 else "sell"
            shrink: Side = "sell" if held > 0 else "buy"
            await gw.send_order(v2, grow, 1.0, q)
            assert gw.blocked_orders == 1
            assert gw.venue.positions("mom-v2")["ESZ5"] == held
            await gw.send_order(v2, shrink, abs(held) + 1, q)  # would flip: blocked
            assert gw.blocked_orders == 2
            await gw.send_order(v2, shrink, abs(held) / 2, q)
            assert gw.blocked_orders == 2
            assert abs(gw.venue.positions("mom-v2")["ESZ5"]) == pytest.approx(abs(held) / 2)

    asyncio.run(scenario())


def test_flatten_after_cancel_when_configured(server: EmbeddedNatsServer) -> None:
    async def scenario() -> None:
        async with gateway(server.url) as (_, gw):
            await trade(gw)
            assert gw.venue.positions("mom-v2")
            rampart = await nats.connect(server.url)
            req = RollbackRequest(
                algos=("mom-v2",),
                scope="algo",
                trigger="manual",
                reason="test",
                actor="alice",
                flatten=True,
            )
            record = await executor(rampart).execute(req)
            assert [s.name for s in record.steps] == [
                "halt",
                "cancel",
                "flatten",
                "allocate",
                "total",
            ]
            assert gw.venue.positions("mom-v2") == {}, "flatten passes while halted"
            await rampart.close()

    asyncio.run(scenario())


def test_a_gateway_that_does_not_answer_fails_loudly_and_is_retried_until_acked(
    server: EmbeddedNatsServer,
) -> None:
    async def scenario() -> None:
        rampart = await nats.connect(server.url)
        ex = executor(rampart, attempt_timeout=0.02, retry_interval=0.05)
        req = RollbackRequest(
            algos=("mom-v2",), scope="gateway", trigger="gateway_stale", reason="no hb", actor="r"
        )
        record = await ex.execute(req)
        assert record.state == "failed"
        halt = next(s for s in record.steps if s.name == "halt")
        assert halt.status == "failed" and halt.attempts > 1
        assert "not listening" in halt.detail
        assert ex.retrying > 0, "failed steps keep being retried in the background"
        # the gateway comes up: the background retries land and the algo ends halted
        async with gateway(server.url) as (_, gw):
            await until(lambda: gw.algos["mom-v2"].halted and ex.retrying == 0)
            assert gw.algos["mom-v2"].allocation == 0.0
        await rampart.close()

    asyncio.run(scenario())


def test_duplicate_and_expired_commands_over_nats(server: EmbeddedNatsServer) -> None:
    async def scenario() -> None:
        async with gateway(server.url) as (nc, gw):
            now = time.time_ns()
            halt = Command(
                command_id="same-id",
                epoch=1,
                kind="halt",
                targets=[CommandTarget(algo="mom-v1")],
                issued_at=now,
                valid_until=now + 10**9,
            )
            acks = []
            for _ in range(2):
                reply = await request(nc, SUBJ.command("gw1"), encoder.encode(halt))
                acks.append(command_ack_decoder.decode(reply.data).results[0].status)
            assert acks == ["applied", "duplicate"]
            expired = Command(
                command_id="late",
                epoch=2,
                kind="resume",
                targets=[CommandTarget(algo="mom-v1")],
                issued_at=now - 2 * 10**9,
                valid_until=now - 10**9,
            )
            reply = await request(nc, SUBJ.command("gw1"), encoder.encode(expired))
            assert command_ack_decoder.decode(reply.data).results[0].status == "expired"
            assert gw.algos["mom-v1"].halted
            assert gw.agent.commands_handled == 3

    asyncio.run(scenario())


def test_deadmans_switch_halts_everything_when_rampart_goes_silent(
    server: EmbeddedNatsServer,
) -> None:
    async def scenario() -> None:
        async with gateway(server.url, deadman_timeout=0.2) as (nc, gw):
            tripped: list[float] = []
            gw.agent.deadman_listeners.append(lambda: tripped.append(time.monotonic()))
            for _ in range(5):  # Rampart alive
                hb = SidecarHeartbeat(daemon="rampart", ts=time.time_ns(), interval_ms=50)
                data = encoder.encode(hb)
                await nc.publish(
                    SUBJ.sidecar_heartbeat, data, headers=signed(SUBJ.sidecar_heartbeat, data)
                )
                await asyncio.sleep(0.05)
            assert not any(a.halted for a in gw.algos.values())
            await until(lambda: bool(tripped))  # Rampart silent
            assert all(a.halted for a in gw.algos.values())

    asyncio.run(scenario())


# ---- halts signed in advance (rollback.presign_validity) ---------------------------------------


def test_a_halt_signed_in_advance_is_sent_as_it_is_and_applied(server: EmbeddedNatsServer) -> None:
    """The gateway verifies it like any command; the rollback's other steps carry the reason."""

    async def scenario() -> None:
        async with gateway(server.url) as (_, gw):
            rampart = await nats.connect(server.url)
            ex = executor(rampart)
            ex.presign("mom-v2")
            held = ex._presigned["mom-v2"]
            req = RollbackRequest(
                algos=("mom-v2",), scope="algo", trigger="limit:drawdown", reason="dd", actor="r"
            )
            record = await ex.execute(req)
            assert record.state == "succeeded" and ex.presigned_used == 1
            assert gw.algos["mom-v2"].halted
            assert gw.agent.book.control("mom-v2").halt_epoch == held.command.epoch
            assert "mom-v2" not in ex._presigned, "used once: the next rollback signs anew"
            # a second rollback (nothing signed in advance now) signs its halt on the way
            record = await ex.execute(req)
            assert record.state == "succeeded" and ex.presigned_used == 1
            await rampart.close()

    asyncio.run(scenario())


def test_a_halt_fired_from_the_ingest_path_is_waited_for_not_sent_again(
    server: EmbeddedNatsServer,
) -> None:
    async def scenario() -> None:
        async with gateway(server.url) as (gw_nc, gw):
            seen: list[Msg] = []

            async def on_command(msg: Msg) -> None:
                seen.append(msg)

            await gw_nc.subscribe(SUBJ.command("gw1"), cb=on_command)
            rampart = await nats.connect(server.url)
            ex = executor(rampart, attempt_timeout=2.0)  # (a slow machine: no second request)
            assert await ex.fire_halt("mom-v2") is None, "no reply subscription yet: not sent"
            await ex.start_fast_acks()
            ex.presign("mom-v2")
            held = ex._presigned["mom-v2"]
            fired = await ex.fire_halt("mom-v2")
            assert fired is not None and fired.command == held.command, "the one signed ahead"
            assert ex.fired_used == 1 and ex.presigned_used == 1
            req = RollbackRequest(
                algos=("mom-v2",),
                scope="algo",
                trigger="limit:drawdown",
                reason="dd",
                actor="r",
                fired={"mom-v2": fired},
            )
            record = await ex.execute(req)
            halt = next(s for s in record.steps if s.name == "halt")
            assert record.state == "succeeded" and halt.attempts == 1
            assert gw.algos["mom-v2"].halted
            assert gw.agent.book.control("mom-v2").halt_epoch == held.command.epoch
            await until(lambda: len(seen) >= 3)
            kinds = [command_decoder.decode(m.data).kind for m in seen]
            assert kinds.count("halt") == 1, kinds
            # nothing signed ahead: the halt is encoded and signed on the spot, still sent
            fired = await ex.fire_halt("mom-v1")
            assert fired is not None and fired.headers is not None and ex.presigned_used == 1
            ex.drop_fired(fired)
            await rampart.close()

    asyncio.run(scenario())


def test_a_fired_halt_nobody_answers_is_requested_again_until_acked(
    server: EmbeddedNatsServer,
) -> None:
    async def scenario() -> None:
        rampart = await nats.connect(server.url)
        halt_30s = {**ExecutorSettings().step_deadline, "halt": 30.0}
        ex = executor(rampart, attempt_timeout=0.02, step_deadline=halt_30s)
        await ex.start_fast_acks()
        fired = await ex.fire_halt("mom-v2")  # no gateway listens: the server says so
        assert fired is not None
        req = RollbackRequest(
            algos=("mom-v2",),
            scope="algo",
            trigger="limit:drawdown",
            reason="dd",
            actor="r",
            fired={"mom-v2": fired},
        )
        execution = asyncio.ensure_future(ex.execute(req))
        await asyncio.sleep(0.1)
        async with gateway(server.url) as (_, gw):
            record = await execution
            halt = next(s for s in record.steps if s.name == "halt")
            assert halt.status == "acked" and halt.attempts > 1
            assert gw.algos["mom-v2"].halted
            assert gw.agent.book.control("mom-v2").halt_epoch == fired.command.epoch
        assert not ex._fired_acks, "no reply waited for any more"
        await rampart.close()

    asyncio.run(scenario())


def test_a_halt_signed_before_a_release_is_never_sent() -> None:
    """A release's resume has a newer epoch than a halt signed before it and would beat that
    halt at the gateway (resume wins over an older halt): such a halt is dropped, as is one too
    close to its end or made for another gateway."""
    ex = RollbackExecutor(None, SUBJ, lambda algo: "gw1", sign=signed)  # type: ignore[arg-type]
    ex.presign("a")
    ex.note_halt_epoch(["a"], ex.epochs.next())  # the release's epoch, taken before its resume
    assert ex._take_presigned("a", "gw1", 0.25) is None
    ex.presign("a")
    ex.command("resume", [CommandTarget(algo="a")], ex.epochs.next(), 1.0, "reconcile")
    assert ex._take_presigned("a", "gw1", 0.25) is None
    ex.presign("a")
    assert ex._take_presigned("a", "gw2", 0.25) is None, "another gateway's"
    ex.presign("a")
    assert ex._take_presigned("a", "gw1", 31.0) is None, "valid for less than the step may take"
    ex.presign("a")
    ex.presign("b")
    ex.command(
        "set_allocation", [CommandTarget(algo="a", allocation=0.0)], ex.epochs.next(), 1.0, "x"
    )
    held = ex._take_presigned("a", "gw1", 0.25)
    assert held is not None, "other dimensions do not touch the halt"
    assert held.command.kind == "halt" and held.headers is not None
    assert not ex.needs_presign("b") and ex.needs_presign("a")
    off = RollbackExecutor(
        None,  # type: ignore[arg-type]
        SUBJ,
        lambda algo: "gw1",
        settings=ExecutorSettings(presign_validity=0.0),
    )
    off.presign("a")
    assert not off.needs_presign("a") and off._take_presigned("a", "gw1", 0.25) is None


def test_the_reference_gateway_cancels_many_algorithms_in_one_pass(
    server: EmbeddedNatsServer,
) -> None:
    """Issue 15: a cancel-all of several algorithms is one batch (GatewayHandlers.apply_batch):
    every working order of each is cancelled and its events published; an algorithm the
    gateway does not host fails alone."""

    async def scenario() -> None:
        async with gateway(server.url) as (_, gw):
            gw.venue.latency_ns = 10**12
            await trade(gw)
            assert gw.venue.open_orders("mom-v2"), "working orders to cancel"
            published = gw.events_published
            now = time.time_ns()
            command = Command(
                command_id="cancel-many",
                epoch=now,
                kind="cancel_all",
                targets=[CommandTarget(algo=a) for a in ("mom-v1", "ghost", "mom-v2")],
                issued_at=now,
                valid_until=now + 10**9,
            )
            results = await gw.agent.handle(command)
            assert [r.status for r in results] == ["applied", "error", "applied"]
            assert "does not host 'ghost'" in results[1].detail
            assert gw.venue.open_orders("mom-v1") == gw.venue.open_orders("mom-v2") == []
            assert gw.events_published > published, "the cancellations were published"

    asyncio.run(scenario())


def test_the_epoch_clock_follows_what_gateways_hold_within_a_day_of_its_clock() -> None:
    """Epochs go past what a gateway reports holding (a run whose clock was ahead), never more
    than MAX_EPOCH_LEAD ahead of this host's clock: found in review, one lying gateway could
    drag every epoch to the 64-bit end, past what the next run could follow, and no halt would
    ever be applied again. The reconciler takes a gateway's word for its own algorithms only."""
    from typing import cast

    from nats.aio.client import Client

    from rampart import rollback
    from rampart.protocol import AlgoActual, Subjects
    from rampart.reconciler import Reconciler
    from rampart.rollback import EpochClock

    now = [10**18]
    clock = EpochClock(lambda: now[0])
    assert clock.next() == now[0]
    ahead = now[0] + 60 * 10**9
    clock.observe(ahead)
    first = clock.next()
    assert first > ahead and not clock.issued_here(ahead) and clock.issued_here(first)
    clock.observe(rollback.MAX_EPOCH)  # a lie: ignored
    clock.observe(now[0] + rollback.MAX_EPOCH_LEAD + 1)
    assert first < clock.next() < now[0] + rollback.MAX_EPOCH_LEAD

    executor = RollbackExecutor(cast(Client, None), Subjects(), lambda a: "gw1")
    executor.epochs = EpochClock(lambda: now[0])

    async def nothing(gateway: str, arg: object) -> None:
        pass

    rec = Reconciler(
        executor,
        {"gw1": ("alpha",), "gw2": ("beta",)},
        halted=lambda: (),
        busy=lambda: (),
        on_adopt=nothing,
        on_stuck=nothing,
        wall_clock=lambda: now[0],
    )
    theirs = now[0] + 3600 * 10**9
    rec.on_report("gw2", now[0], [AlgoActual(algo="alpha", halted=False, epochs={"halt": theirs})])
    assert executor.epochs.next() < theirs, "gw2 speaks for beta only"
    rec.on_report("gw1", now[0], [AlgoActual(algo="alpha", halted=False, epochs={"halt": theirs})])
    assert executor.epochs.next() > theirs
