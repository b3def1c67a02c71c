"""The daemon's request/reply surface on the NATS services API (``$SRV`` discovery): status
(``<prefix>.status.algorithms`` paged, ``<prefix>.status.algorithm``) and the operator verbs
(``<prefix>.control.<verb>``: rollback, release, deploy and the deployment verbs). Each request
is decoded and checked here, then handed to the guard or the deployments' effects; every reply
says ok or why not (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from rampart import __version__
from rampart._core import Engine
from rampart.config import DaemonConfig
from rampart.deployment import DeploymentError, decode_deployment
from rampart.effects import DeploymentEffects
from rampart.guard import Guard
from rampart.operators import ControlAuth, Identity, Pending, Refusal
from rampart.paging import StatusTooLargeError
from rampart.protocol import (
    ControlReply,
    ControlRequest,
    ControlVerb,
    ErrorReply,
    StatusRequest,
    encoder,
    status_request_decoder,
)
from rampart.status_builder import StatusBuilder
from rampart.store import StoreError
from rampart.strategies import Verb
from rampart.throttle import REPEAT_EVERY, Throttle

log = logging.getLogger("rampart.service")

# the store keeps admitted control requests' nonces under this prefix, for the replay window
NONCE_PREFIX = "control/nonce/"
# verbs that only ever stop trading: carried out even when their nonce cannot be stored
STOP_VERBS: frozenset[ControlVerb] = frozenset({"rollback", "halt"})
DEPLOYMENT_VERBS: tuple[Verb, ...] = ("approve", "promote", "pause", "resume", "abort", "halt")

# carries out a verified request as ``actor`` (the verified identity), for ``reason``
Act = Callable[[ControlRequest, str, str], Awaitable[dict[str, Any]]]


class DaemonService:
    def __init__(
        self,
        nc: Client,
        config: DaemonConfig,
        status: StatusBuilder,
        engine: Engine,
        guard: Guard,
        effects: DeploymentEffects,
        auth: ControlAuth,
        on_refusal: Callable[[ControlVerb, Refusal], None],
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.nc = nc
        # what `$SRV` discovery shows of this process (``rampart status --fleet``)
        self.metadata = {"prefix": config.subjects.prefix, **(metadata or {})}
        self.config = config
        self.subjects = config.subjects
        self.status = status
        self.engine = engine
        self.guard = guard
        self.effects = effects
        self.auth = auth
        self.on_refusal = on_refusal
        # a known key's out-of-role requests are audited once a minute per key
        self._role_audits = Throttle(REPEAT_EVERY)
        self._service: Service | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self._load_nonces)
        svc = self._service = await add_service(
            self.nc,
            name=self.config.name,
            version=__version__,
            description="Rampart risk sidecar: algorithm metrics and deployment status",
            metadata=self.metadata,
        )
        s = self.subjects
        await svc.add_endpoint(
            name="algorithms", subject=s.status("algorithms"), handler=self._status_all
        )
        await svc.add_endpoint(name="algorithm", subject=s.status("algorithm"), handler=self._one)
        endpoints: dict[ControlVerb, Act] = {
            "rollback": self._rollback,
            "deploy": self._deploy,
            **{verb: self._verb(verb) for verb in DEPLOYMENT_VERBS},
            "release": self._release,
        }
        for name, act in endpoints.items():
            await svc.add_endpoint(
                name=name, subject=s.control(name), handler=self._control(name, act)
            )

    async def stop(self) -> None:
        if self._service is not None:
            service, self._service = self._service, None
            await service.stop()

    # ---- status ---------------------------------------------------------------------------------

    async def _status_all(self, req: Request) -> None:
        try:
            page = status_request_decoder.decode(req.data) if req.data.strip() else StatusRequest()
        except msgspec.DecodeError as e:
            error = (
                f"bad status request: {e}; send an empty body or "
                '{"offset": N, "limit": M} (both optional)'
            )
            await req.respond_error("400", error, data=encoder.encode(ErrorReply(error=error)))
            return
        await self._respond_status(req, None, page.offset, page.limit)

    async def _one(self, req: Request) -> None:
        algo_id = req.data.decode("utf-8", errors="replace").strip()
        if algo_id not in self.engine:
            known = self.engine.algorithms()
            listed = ", ".join(known[:20]) + (f" and {len(known) - 20} more" if known[20:] else "")
            error = f"unknown algorithm {algo_id[:200]!r}; known: {listed or 'none'}"
            await req.respond_error("404", error, data=encoder.encode(ErrorReply(error=error)))
            return
        await self._respond_status(req, algo_id, 0, None)

    async def _respond_status(
        self, req: Request, algo_id: str | None, offset: int, limit: int | None
    ) -> None:
        try:
            data = await self.status.page_async(algo_id, offset=offset, limit=limit)
        except StatusTooLargeError as e:
            log.error("status request failed: %s", e)
            await req.respond_error("500", str(e), data=encoder.encode(ErrorReply(error=str(e))))
            return
        await req.respond(data)

    # ---- operator control -----------------------------------------------------------------------

    def _control(self, verb: ControlVerb, act: Act) -> Callable[[Request], Awaitable[None]]:
        async def handler(req: Request) -> None:
            actor: str | None = None
            try:
                try:
                    who, ctl = self.auth.admit(verb, req.subject, req.data, req.headers)
                    decided = self.auth.second(verb, who, ctl)
                except Refusal as r:
                    self.on_refusal(verb, r)
                    if (
                        r.who is not None
                        and r.kind == "role"
                        and self._role_audits.ready(r.who.key)
                    ):
                        await self.guard.note(
                            "control_refused",
                            {"verb": verb, "reason": str(r), "kind": r.kind},
                            r.who.actor,
                        )
                    reply = ControlReply(
                        ok=False, error=str(r), actor=r.who.actor if r.who else None
                    )
                    await req.respond(encoder.encode(reply))
                    return
                actor = who.actor
                # remembered by the store too: not carried out again after a restart. A stop
                # goes ahead when the store cannot take it (a replayed stop only stops again)
                try:
                    await asyncio.to_thread(self._persist_nonce, ctl, who)
                except StoreError as e:
                    if verb not in STOP_VERBS:
                        raise
                    log.error("%s by %s goes ahead, its nonce not stored: %s", verb, actor, e)
                if isinstance(decided, Pending):
                    payload = {"verb": verb, "target": ctl.target, "reason": ctl.reason}
                    await self.guard.note("control_pending", payload, actor)
                    reply = ControlReply(ok=True, pending=decided.message, actor=actor)
                    await req.respond(encoder.encode(reply))
                    return
                actor, reason = decided
                state = await act(ctl, actor, reason)
            except (msgspec.DecodeError, ValueError, KeyError, RuntimeError, DeploymentError) as e:
                error = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
                await req.respond(encoder.encode(ControlReply(ok=False, error=error, actor=actor)))
                return
            except StoreError as e:  # not stored, so not done (Rampart fails closed on it)
                error = f"not done: {e}"
                await req.respond(encoder.encode(ControlReply(ok=False, error=error, actor=actor)))
                return
            except Exception as e:  # a bug: the operator still gets an answer, and the log
                log.exception("control request failed")
                error = f"internal error: {type(e).__name__}: {e}"
                await req.respond(encoder.encode(ControlReply(ok=False, error=error, actor=actor)))
                return
            await req.respond(encoder.encode(ControlReply(ok=True, state=state, actor=actor)))

        return handler

    def _load_nonces(self) -> None:
        seen = []
        for key, value in self.guard.store.items(NONCE_PREFIX):
            ts, _, signer = value.decode().partition(" ")
            seen.append((key.removeprefix(NONCE_PREFIX), int(ts), signer))
        self.auth.load(seen)

    def _persist_nonce(self, ctl: ControlRequest, who: Identity) -> None:
        """The admitted request's nonce into the store (in a thread); those older than the
        replay window out."""
        store = self.guard.store
        horizon = self.auth.horizon()
        with store.transaction():
            store.put(NONCE_PREFIX + ctl.nonce, f"{ctl.ts} {who.key}".encode())
            for key, value in store.items(NONCE_PREFIX):
                if int(value.split(b" ", 1)[0]) < horizon:
                    store.delete(key)

    async def _rollback(self, ctl: ControlRequest, actor: str, reason: str) -> dict[str, Any]:
        guard = self.guard
        scope, algos = guard.resolve(ctl.target)
        reason = reason or "manual intervention"
        log.critical("manual rollback of %s by %s: %s", ctl.target, actor, reason)
        task = guard.trigger(algos, scope, "manual", reason, actor, force=True)
        if task is None:
            raise RuntimeError(f"{ctl.target}: a rollback is already running")
        record = await task
        if record is None:
            raise RuntimeError("the rollback did not run")
        return msgspec.to_builtins(record)  # type: ignore[no-any-return]

    async def _release(self, ctl: ControlRequest, actor: str, reason: str) -> dict[str, Any]:
        guard = self.guard
        _, algos = guard.resolve(ctl.target)
        if not reason.strip():
            raise ValueError("`reason` must say why it is safe to resume")
        await guard.release(algos, actor, reason)
        return {"resumed": list(algos), "halted": sorted(guard.halted)}

    async def _deploy(self, ctl: ControlRequest, actor: str, reason: str) -> dict[str, Any]:
        if ctl.document is None:
            raise ValueError("`document` must hold the deployment document")
        doc = decode_deployment(msgspec.json.encode(ctl.document))
        state = await self.effects.deploy(doc, actor)
        return msgspec.to_builtins(state)  # type: ignore[no-any-return]

    def _verb(self, verb: Verb) -> Act:
        async def act(ctl: ControlRequest, actor: str, reason: str) -> dict[str, Any]:
            decision = await self.effects.command(ctl.target, verb, actor)
            if decision.refused is not None:
                raise RuntimeError(f"{verb} refused: {decision.refused}")
            return msgspec.to_builtins(decision.state)  # type: ignore[no-any-return]

        return act
