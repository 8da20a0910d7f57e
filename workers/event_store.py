"""The event store, the record of truth: each event's raw bytes, status and per-handler state.

Each (event, handler) pair has its own state: attempts, times, next attempt, last error and
outcome. An attempt is counted *before* the handler runs (``begin``), so an event whose
handler kills the worker is dead-lettered once its attempts are spent instead of looping.
Both steps are single Lua scripts (``lua/begin.lua``, ``lua/finish.lua``), so a reader never
sees half of a transition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson
from redis.asyncio import Redis

from loops_webhooks.workers import keys
from loops_webhooks.workers.admission import DEFAULT_SLOT_TTL_SECONDS, Admission
from loops_webhooks.workers.dead_letters import DeadLetter, encode_dead_letter
from loops_webhooks.workers.scripts import BatchedScript, register_script
from loops_webhooks.workers.search import unpack_terms

__all__ = [
    "Action",
    "Begun",
    "EventStatus",
    "EventStore",
    "HandlerState",
    "HandlerStatus",
    "StoredEvent",
]


class EventStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    DEAD = "dead"


class HandlerStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    RETRY = "retry"
    DONE = "done"
    DEAD = "dead"


class Action(StrEnum):
    """What ``begin`` decided for one handler."""

    RUN = "run"
    SKIP = "skip"
    WAIT = "wait"
    EXHAUSTED = "exhausted"
    HELD = "held"
    """Admission held the run back (paused, over a limit); no attempt was counted."""


@dataclass(frozen=True, slots=True)
class HandlerState:
    status: HandlerStatus = HandlerStatus.PENDING
    attempts: int = 0
    first_attempt_at: int | None = None
    last_attempt_at: int | None = None
    next_attempt_at: int | None = None
    last_error: str | None = None
    duration_ms: float | None = None

    def to_json(self) -> str:
        present = {name: getattr(self, name) for name in self.__slots__}
        return orjson.dumps({k: v for k, v in present.items() if v is not None}).decode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> HandlerState:
        return cls.from_dict(orjson.loads(raw))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HandlerState:
        for name in ("first_attempt_at", "last_attempt_at", "next_attempt_at", "attempts"):
            if name in data:
                data[name] = int(data[name])
        data["status"] = HandlerStatus(data.get("status", HandlerStatus.PENDING))
        return cls(**{k: v for k, v in data.items() if k in cls.__slots__})


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event_id: str
    event_type: str
    raw: bytes
    headers: dict[str, str]
    received_at_ms: int
    status: EventStatus
    handlers: dict[str, HandlerState] = field(default_factory=dict)
    outcome: str | None = None
    finished_at_ms: int | None = None
    history: dict[str, list[HandlerState]] = field(default_factory=dict)
    """Per handler, the states that replays replaced, oldest first."""
    trace_context: str = ""
    """The ``traceparent`` stored with the event when traces were on at its receipt."""
    session_id: str | None = None
    """Its checkout session (``workers/sessions.py``), None for none."""
    search_terms: tuple[str, ...] = ()
    """What it is found by (``workers/search.py``); none for an event stored before search
    existed and not yet reindexed."""
    erased_at_ms: int | None = None
    """When its raw body and headers were erased (``events erase``); None: never."""


FINISHED = -2
MISSING = -1


@dataclass(frozen=True, slots=True)
class Begun:
    """An event as ``begin`` found it, and what to do with each of its handlers."""

    event: StoredEvent
    actions: dict[str, tuple[Action, HandlerState]]
    unknown: dict[str, HandlerState] = field(default_factory=dict)
    """Unfinished states of handlers that were not asked about: owed a run by a handler
    the caller does not have (a replayed letter, or a retry scheduled by another version)."""
    superseded_by: dict[str, str] = field(default_factory=dict)
    """Per handler to run: a later-created event of the same session that the handler has
    already finished (``HandlerContext.superseded_by``)."""


class EventStore:
    def __init__(
        self,
        redis: Redis,
        *,
        dedupe_ttl_seconds: int,
        queue_name: str = "",
        slot_ttl_seconds: float = DEFAULT_SLOT_TTL_SECONDS,
        ordering: bool = True,
    ) -> None:
        """``slot_ttl_seconds``: how long a concurrency slot taken in ``begin`` holds unless
        renewed: the worker's in-progress marker lifetime. ``ordering``: admission keeps the
        order of a checkout session's events (``LOOPS_ORDERING``)."""
        self._redis = redis
        self._queue_name = queue_name
        self._dedupe_ttl_ms = dedupe_ttl_seconds * 1000
        self._admission = Admission(slot_ttl_seconds=slot_ttl_seconds, ordering=ordering)
        self._begin = BatchedScript(redis, "begin", self._admission.settings)
        self._finish = BatchedScript(redis, "finish", self._admission.settings)
        self._retry_now = register_script(redis, "retry_now")

    async def begin(
        self,
        event_id: str,
        limits: Sequence[tuple[str, int, bytes]],
        now_ms: int,
        *,
        job_id: str = "",
    ) -> Begun | None:
        """Load the event and count an attempt for every handler that is due now and that
        admission lets start (``Action.HELD`` for one it holds back: no attempt counted).

        ``limits`` is (handler name, max attempts, admission limits from
        ``admission.encoded_limits``) per matching handler; ``job_id`` is the arq job running
        the event, in whose name concurrency slots are held. None if the event is not in the
        store (purged, or expired after it finished).
        """
        args: list[Any] = [now_ms, keys.TRACE_CONTEXT_FIELD, job_id, event_id]
        for name, limit, admission_limits in limits:
            args += [name, limit, admission_limits]
        reply = await self._begin(keys=[keys.event_key(event_id), *self._admission.keys], args=args)
        if not reply:
            return None
        status, raw, event_type, received_at, headers, trace_context, session = reply[:7]
        actions: dict[str, tuple[Action, HandlerState]] = {}
        unknown: dict[str, HandlerState] = {}
        superseded_by: dict[str, str] = {}
        rest = reply[7:]
        if rest:  # the script decides per handler only for a pending event
            asked, others = rest[: 3 * len(limits)], rest[3 * len(limits) :]
            decided = zip(limits, asked[0::3], asked[1::3], asked[2::3], strict=True)
            for (name, *_), action, state, superseded in decided:
                actions[name] = (Action(action.decode()), HandlerState.from_json(state))
                if superseded:
                    superseded_by[name] = superseded.decode()
            for name, state in zip(others[0::2], others[1::2], strict=True):
                unknown[name.decode()] = HandlerState.from_json(state)
        event = StoredEvent(
            event_id=event_id,
            event_type=event_type.decode(),
            raw=raw,
            headers=orjson.loads(headers or b"{}"),
            received_at_ms=int(received_at),
            status=EventStatus(status.decode()),
            trace_context=trace_context.decode() if trace_context else "",
            session_id=session.decode() or None,
        )
        return Begun(event, actions, unknown, superseded_by)

    async def finish(
        self,
        event: StoredEvent,
        states: Mapping[str, HandlerState],
        handler_names: Sequence[str],
        dead_letters: Sequence[DeadLetter] = (),
        *,
        now_ms: int,
        outcome: str = "",
        counts: Mapping[str, int] | None = None,
        settle_job: str = "",
        admitted: bytes = b"",
    ) -> int | None:
        """Record handler outcomes and dead letters; close the event if every handler is final.

        ``admitted`` (``Admission.settled``) names the runs admission held back in ``begin``,
        which wait (no attempt used) until their gate may open, and the runs whose slots are
        given back now.

        ``counts`` (outcome name to number) feed the per-minute figures of ``stats``. With
        ``settle_job`` (the running arq job's id), the same script also does what arq would
        do next, saving it a round trip: reschedule the job at the next due time, or remove
        it when the event is finished; the worker then skips arq's own ``finish_job``.
        Returns when the next handler is due (ms since the epoch), or None if the event is
        finished (or gone).
        """
        expire_at = event.received_at_ms + self._dedupe_ttl_ms
        script_keys = [
            keys.event_key(event.event_id),
            keys.PENDING_EVENTS,
            keys.DEAD_LETTER_INDEX,
            keys.outcome_counts_key(now_ms),
            self._queue_name,
            keys.arq_job_key(settle_job),
            keys.arq_in_progress_key(settle_job),
            keys.arq_retry_key(settle_job),
            keys.event_dead_letters_key(event.event_id),
            keys.DEAD_LETTER_REASON_COUNTS,
            *self._admission.keys,
            *(keys.dead_letter_key(letter.id) for letter in dead_letters),
        ]
        reply = await self._finish(
            keys=script_keys,
            args=[
                now_ms,
                max(expire_at, now_ms + 1000),
                event.event_id,
                orjson.dumps({name: state.to_json() for name, state in states.items()}),
                orjson.dumps(list(handler_names)),
                outcome,
                orjson.dumps(counts or {}) if counts else b"{}",
                keys.OUTCOME_COUNTS_TTL_SECONDS,
                settle_job,
                admitted,
                event.session_id or "",
                *(encode_dead_letter(letter) for letter in dead_letters),
            ],
        )
        next_due = int(reply)
        return None if next_due in (FINISHED, MISSING) else next_due

    async def retry_now(self, event_id: str, now_ms: int) -> int | None:
        """Make the event's scheduled retries due now (an operator's "retry now": the service
        behind the handler is back, why wait for the backoff). Returns how many were made
        due (0: the event is finished or has none), None if the event is not stored. The
        attempts are counted as usual; admission still applies (a paused handler waits)."""
        reply = await self._retry_now(
            keys=[keys.event_key(event_id), self._queue_name],
            args=[now_ms, keys.HANDLER_FIELD_PREFIX, keys.job_id_for_event(event_id)],
        )
        made_due = int(reply)
        return None if made_due == MISSING else made_due

    async def get(self, event_id: str) -> StoredEvent | None:
        """The whole record of one event, for inspection."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.event_key(event_id))
            pipe.hget(keys.SEARCH_TERMS, event_id)
            stored, terms = await pipe.execute()
        if not stored:
            return None
        handlers: dict[str, HandlerState] = {}
        history: dict[str, list[HandlerState]] = {}
        for field_name, value in stored.items():
            name = field_name.decode()
            if name.startswith(keys.HANDLER_FIELD_PREFIX):
                handlers[name.removeprefix(keys.HANDLER_FIELD_PREFIX)] = HandlerState.from_json(
                    value
                )
            elif name.startswith(keys.HANDLER_HISTORY_FIELD_PREFIX):
                history[name.removeprefix(keys.HANDLER_HISTORY_FIELD_PREFIX)] = [
                    HandlerState.from_dict(state) for state in orjson.loads(value)
                ]
        finished = stored.get(b"finished_at")
        outcome = stored.get(b"outcome")
        return StoredEvent(
            event_id=event_id,
            event_type=stored[b"type"].decode(),
            raw=stored[b"raw"],
            headers=orjson.loads(stored.get(b"headers", b"{}")),
            received_at_ms=int(stored[b"received_at"]),
            status=EventStatus(stored[b"status"].decode()),
            handlers=handlers,
            outcome=outcome.decode() if outcome else None,
            finished_at_ms=int(finished) if finished else None,
            history=history,
            session_id=stored[b"session"].decode() if b"session" in stored else None,
            search_terms=unpack_terms(terms) if terms else (),
            erased_at_ms=int(stored[b"erased_at"]) if b"erased_at" in stored else None,
        )
