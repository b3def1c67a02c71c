"""The durable events stream: fills and order events on JetStream, applied exactly once.

Gateways publish fills and order events with a ``Nats-Msg-Id`` (the SDK's ``Outbox``); the stream
stores each id once within its duplicate window. The daemon applies them in stream order and
stores the sequence of the last one it applied (the *cursor*) in the same transaction as the
core's checkpoints, so after a crash it restores both and resumes at the next sequence: nothing
missed, nothing applied twice, whatever moment the kill came.

The cursor lives in Rampart's store, not in a server-side consumer: an acknowledged durable
consumer and the checkpoint could disagree after a crash (acked but not stored, or stored but not
acked); the store is the one place the two are written together. The consumer itself is an
ordered push consumer started at the cursor + 1 (it re-creates itself on a gap).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import NotFoundError

from rampart.config import EventsConfig
from rampart.protocol import Subjects

log = logging.getLogger("rampart.events")


class EventStreamError(RuntimeError):
    """The events stream cannot be used safely (missing JetStream, unsafe settings)."""


def event_subjects(subjects: Subjects) -> list[str]:
    """What the stream carries: fills, order events, and gateways' batches of both."""
    return [subjects.fills_all, subjects.orders_all, subjects.batch_all]


def wanted_config(
    name: str, cfg: EventsConfig, subjects: Subjects, max_msg_size: int
) -> StreamConfig:
    return StreamConfig(
        name=name,
        description="Rampart: fills and order events, applied exactly once",
        subjects=event_subjects(subjects),
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.NEW,
        max_age=cfg.max_age.total_seconds(),
        max_bytes=cfg.max_bytes,
        max_msg_size=max_msg_size,
        storage=StorageType.FILE,
        num_replicas=cfg.replicas,
        duplicate_window=cfg.duplicate_window.total_seconds(),
        deny_delete=True,
        deny_purge=True,
    )


def unsafe_settings(have: StreamConfig, cfg: EventsConfig, subjects: Subjects) -> list[str]:
    """What in an existing stream's settings could lose or double-apply events."""
    problems = []
    if have.retention not in (None, RetentionPolicy.LIMITS):
        problems.append(
            f"retention is {have.retention.value}: events would be removed before Rampart "
            "applied them (needs limits)"
        )
    limited = (
        any((v or 0) > 0 for v in (have.max_msgs, have.max_bytes))
        or (have.max_msgs_per_subject or 0) > 0
    )
    if limited and have.discard != DiscardPolicy.NEW:
        problems.append(
            "discard is old with a size limit: a full stream would drop events Rampart has not "
            "applied (needs discard new)"
        )
    if (have.max_msgs_per_subject or 0) > 0:
        problems.append("max_msgs_per_subject is set: older events of a busy algorithm are dropped")
    want_age = cfg.max_age.total_seconds()
    if have.max_age and have.max_age < want_age:
        problems.append(f"max_age is {have.max_age:g}s, less than events.max_age ({want_age:g}s)")
    if have.storage == StorageType.MEMORY:
        problems.append("storage is memory: a server restart loses every event")
    if (have.duplicate_window or 0) < 10:
        problems.append(
            f"duplicate_window is {have.duplicate_window or 0:g}s: a gateway's retry would be "
            "applied twice (needs >= 10s)"
        )
    covered = set(have.subjects or ())
    for subject in event_subjects(subjects):
        if subject not in covered:
            problems.append(f"subjects do not include {subject}")
    return problems


@dataclass(frozen=True)
class StreamState:
    name: str
    first_seq: int
    last_seq: int
    created: bool


async def ensure_stream(
    js: JetStreamContext, cfg: EventsConfig, subjects: Subjects, max_msg_size: int
) -> StreamState:
    """Create the events stream, or check the one that exists; raises EventStreamError with
    what to fix when it cannot be used safely."""
    name = cfg.stream_name(subjects.prefix)
    created = False
    try:
        info: StreamInfo = await js.stream_info(name)
    except NotFoundError:
        try:
            info = await js.add_stream(wanted_config(name, cfg, subjects, max_msg_size))
        except Exception as e:
            raise EventStreamError(
                f"cannot create the events stream {name!r}: {e or type(e).__name__}"
            ) from e
        created = True
        log.info("created the events stream %s (%s)", name, ", ".join(info.config.subjects or ()))
    except Exception as e:
        raise EventStreamError(
            f"no JetStream for the events stream {name!r} ({e or type(e).__name__}): enable "
            "JetStream on the NATS server (fills must survive Rampart's restarts), or set "
            "`[events] durable = false` to take them at most once"
        ) from e
    if not created:
        info = await _upgrade(js, info, wanted_config(name, cfg, subjects, max_msg_size))
    problems = unsafe_settings(info.config, cfg, subjects)
    if problems:
        raise EventStreamError(
            f"the events stream {name!r} could lose or double-apply fills: "
            + "; ".join(problems)
            + f" (fix it with `nats stream edit {name}`, or delete it to let Rampart create it)"
        )
    return StreamState(name, info.state.first_seq, info.state.last_seq, created)


async def _upgrade(js: JetStreamContext, info: StreamInfo, want: StreamConfig) -> StreamInfo:
    """A stream made by an earlier Rampart: add the subjects it lacks (gateways' batches) and
    raise its message size limit to the batches' (both changes lose nothing)."""
    have = info.config
    missing = [s for s in want.subjects or () if s not in (have.subjects or ())]
    small = have.max_msg_size is not None and 0 < have.max_msg_size < (want.max_msg_size or 0)
    if not missing and not small:
        return info
    config = dataclasses.replace(
        have,
        subjects=[*(have.subjects or ()), *missing],
        max_msg_size=want.max_msg_size if small else have.max_msg_size,
    )
    try:
        info = await js.update_stream(config)
    except Exception as e:
        raise EventStreamError(
            f"cannot update the events stream {have.name!r} (add {missing or 'no subjects'}, "
            f"max_msg_size {want.max_msg_size}): {e or type(e).__name__}"
        ) from e
    log.info(
        "events stream %s updated: subjects %s", have.name, ", ".join(info.config.subjects or ())
    )
    return info


def start_cursor(stored: int | None, stream: StreamState) -> tuple[int, str | None]:
    """Where to resume (the cursor: the last sequence taken as applied) and, when events were
    lost, why: the caller fails closed on it.

    - nothing stored (a new store): the events before now are not Rampart's to apply; start
      at the stream's end.
    - events older than the cursor aged out of the stream (Rampart was down longer than
      ``max_age``, or they were deleted): the ones after the cursor are gone.
    - the cursor is beyond the stream's end: the stream was re-created or truncated.
    """
    if stored is None:
        return stream.last_seq, None
    if stored > stream.last_seq:
        return stream.last_seq, (
            f"the events stream {stream.name} ends at sequence {stream.last_seq} but Rampart "
            f"applied up to {stored}: it was re-created or truncated, and Rampart's positions "
            "may not match the gateways'"
        )
    if stream.last_seq > stored and stream.first_seq > stored + 1:
        lost = stream.first_seq - stored - 1
        return stream.first_seq - 1, (
            f"{lost} fills and order events (sequences {stored + 1} to {stream.first_seq - 1}) "
            f"aged out of the events stream {stream.name} before Rampart applied them "
            "(down longer than events.max_age?): its positions may not match the gateways'"
        )
    return stored, None
