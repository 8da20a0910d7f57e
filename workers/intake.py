"""The producer side of the queue: record a verified event and enqueue its job, atomically.

The receiver calls ``EventIntake.submit`` once per request. Requests that arrive within one
event-loop tick share a single Redis round trip (one script call for the whole batch), and
each caller is answered only once Redis has acknowledged its own event. Recording and
enqueueing happen inside one Lua script, so an event is never stored without its job; the
reconciler still repairs jobs lost later (expired, dropped, flushed).

With ``min_replicas`` (``LOOPS_REDIS_MIN_REPLICAS``) the same round trip also asks Redis to
``WAIT`` until that many replicas hold the write; an event is acknowledged only then, so the
replica that Sentinel promotes after a failover holds every acknowledged event.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson
from arq.jobs import serialize_job
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from loops_webhooks.workers import keys
from loops_webhooks.workers.dead_letters import (
    DeadLetterReason,
    build_dead_letter,
    encode_dead_letter,
)
from loops_webhooks.workers.scripts import register_script
from loops_webhooks.workers.search import pack_terms, search_terms
from loops_webhooks.workers.sessions import created_ms, session_id

__all__ = [
    "PROCESS_EVENT_JOB",
    "EventIntake",
    "NotReplicated",
    "ReceivedEvent",
    "job_payload",
    "received_event",
]

PROCESS_EVENT_JOB = "process_event"
JOB_TTL_MS = 86_400_000
"""How long an enqueued job payload lives in Redis (arq's default); the reconciler re-enqueues
an event whose job expired before it ran."""

MAX_EVENTS_PER_CALL = 256


class NotReplicated(RedisError):
    """Redis stored the write, but fewer replicas than required confirmed it in time.

    A RedisError like any other failed write: the receiver answers 503 and Loops redelivers;
    the redelivery is answered (as a duplicate) once the replicas confirm it.
    """


def _record(event: ReceivedEvent, now_ms: int) -> bytes:
    """The script's argument for one event (see ``lua/record_and_enqueue.lua``): its fields,
    each written ``<length>:<bytes>``, in one argument; the keys are derived in the script.

    One argument per event rather than one per field: redis-py's per-argument packing, not
    Redis, was the largest cost of a batch when each field was an argument of its own.
    """
    event_id = event.event_id.encode()
    event_type = event.event_type.encode()
    headers = orjson.dumps(dict(event.headers))
    received_at = b"%d" % event.received_at_ms
    payload = job_payload(event.event_id, event.event_type, now_ms)
    trace = event.trace_context.encode()
    session = event.session_id.encode() if event.session_id is not None else b""
    created = b"%d" % (event.received_at_ms if event.created_ms is None else event.created_ms)
    terms = pack_terms(event.search_terms) if event.search_terms else b""
    return b"%d:%b%d:%b%d:%b%d:%b%d:%b%d:%b%d:%b%d:%b%d:%b%d:%b" % (
        len(event_id), event_id,
        len(event_type), event_type,
        len(event.raw), event.raw,
        len(headers), headers,
        len(received_at), received_at,
        len(payload), payload,
        len(trace), trace,
        len(session), session,
        len(created), created,
        len(terms), terms,
    )  # fmt: skip


class ReceivedEvent(NamedTuple):
    """A verified request, as it will be stored: the exact raw bytes and what replay needs.

    A named tuple: made once per request, and a frozen dataclass's ``__init__`` costs several
    times more.
    """

    event_id: str
    event_type: str
    raw: bytes
    headers: Mapping[str, str]
    received_at_ms: int
    trace_context: str = ""
    """The receiver span's ``traceparent`` when traces are on (``loops_webhooks.tracing``)."""
    session_id: str | None = None
    """Its checkout session (``workers/sessions.py``): admission keeps its order among the
    session's events. None: it has none, and is not held back."""
    created_ms: int | None = None
    """When Loops created it (ms); its place in its session. None: the receipt time."""
    search_terms: tuple[str, ...] = ()
    """What the event is found by (``workers/search.py``), indexed in the same script."""


def received_event(
    event_id: str,
    event_type: str,
    raw: bytes,
    headers: Mapping[str, str],
    received_at_ms: int,
    document: Mapping[str, Any],
    *,
    metadata_keys: tuple[str, ...],
    trace_context: str = "",
) -> ReceivedEvent:
    """The event as the receiver stores it, its session, ``created`` and search terms taken
    from ``document`` (its parsed body): the one way to build it, for the receiver and for
    what stores events as the receiver does (the benchmarks)."""
    return ReceivedEvent(
        event_id,
        event_type,
        raw,
        headers,
        received_at_ms,
        trace_context,
        session_id=session_id(document),
        created_ms=created_ms(document, received_at_ms),
        search_terms=search_terms(document, metadata_keys),
    )


def job_payload(event_id: str, event_type: str, enqueued_at_ms: int) -> bytes:
    """The arq job for one event, as JSON (never pickle: Redis writers must not run code)."""
    return serialize_job(
        PROCESS_EVENT_JOB,
        (event_id, event_type),
        {},
        None,
        enqueued_at_ms,
        serializer=orjson.dumps,
    )


def _expire(waiting: list[asyncio.Future[bool]], seconds: float) -> None:
    """The deadline of a batch passed: its callers get TimeoutError; the write goes on."""
    for future in waiting:
        if not future.done():
            future.set_exception(TimeoutError(f"Redis did not answer within {seconds:g}s"))


class EventIntake:
    """Records and enqueues events for the receiver, batching concurrent requests."""

    def __init__(
        self,
        redis: Redis,
        *,
        queue_name: str,
        deadline_seconds: float | None = None,
        min_replicas: int = 0,
        replica_timeout_ms: int = 1000,
    ) -> None:
        """``deadline_seconds``: how long ``submit`` waits for Redis at most before it raises
        TimeoutError (None: as long as the client's own timeouts let it)."""
        self._redis = redis
        self._queue_name = queue_name
        self._deadline_seconds = deadline_seconds
        self._min_replicas = min_replicas
        self._replica_timeout_ms = replica_timeout_ms
        self._record_and_enqueue = register_script(redis, "record_and_enqueue")
        self._dead_letter_unparseable = register_script(redis, "dead_letter_unparseable")
        self._waiting: list[tuple[ReceivedEvent, asyncio.Future[bool]]] = []
        self._flushes: set[asyncio.Task[None]] = set()

    def submit(self, event: ReceivedEvent) -> asyncio.Future[bool]:
        """Store and enqueue ``event``: await the future for True if it is new, False if its
        id was already recorded.

        It resolves only after Redis acknowledged the write; it raises the Redis error
        otherwise, or TimeoutError once the deadline passed (the write may still be committed
        later). A future rather than a coroutine: one frame less on every request's way back.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._start_flush)
        self._waiting.append((event, future))
        return future

    def _start_flush(self) -> None:
        batch, self._waiting = self._waiting, []
        for start in range(0, len(batch), MAX_EVENTS_PER_CALL):
            task = asyncio.create_task(self._flush(batch[start : start + MAX_EVENTS_PER_CALL]))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[tuple[ReceivedEvent, asyncio.Future[bool]]]) -> None:
        """One script call for the batch. Every waiting caller gets its own answer or error,
        whatever fails, so none waits forever; an event that cannot be encoded fails alone.

        The deadline is one timer for the batch rather than one per caller: they were all
        queued within the tick before this flush started, so they share it.
        """
        now_ms = int(time.time() * 1000)
        records: list[bytes] = []
        waiting: list[asyncio.Future[bool]] = []
        for event, future in batch:
            try:
                records.append(_record(event, now_ms))
            except Exception as error:
                if not future.done():
                    future.set_exception(error)
            else:
                waiting.append(future)
        if not records:
            return
        deadline = None
        if self._deadline_seconds is not None:
            deadline = asyncio.get_running_loop().call_later(
                self._deadline_seconds, _expire, waiting, self._deadline_seconds
            )
        try:
            results = await self._write(
                self._record_and_enqueue,
                [keys.PENDING_EVENTS, keys.EVENT_INDEX, self._queue_name, keys.SEARCH_TERMS],
                [
                    JOB_TTL_MS,
                    keys.EVENT_PREFIX,
                    keys.JOB_ID_PREFIX,
                    keys.ARQ_JOB_PREFIX,
                    keys.TRACE_CONTEXT_FIELD,
                    keys.SESSION_EVENTS_PREFIX,
                    keys.SEARCH_PREFIX,
                    *records,
                ],
            )
        except BaseException as error:
            for future in waiting:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        finally:
            if deadline is not None:
                deadline.cancel()
        if not isinstance(results, list) or len(results) != len(waiting):
            # Not the script's reply for this batch: nobody is told "stored", nobody waits.
            mismatch = RedisError(f"the record script answered {results!r:.80} for {len(waiting)}")
            for future in waiting:
                if not future.done():
                    future.set_exception(mismatch)
            return
        for future, created in zip(waiting, results, strict=True):
            if not future.done():
                future.set_result(bool(created))

    async def dead_letter_unparseable(
        self, raw: bytes, headers: Mapping[str, str], received_at_ms: int, detail: str
    ) -> str:
        """Keep a signed body that is not a usable event, so nothing signed is lost.

        Deduplicated by the body's hash; returns the dead letter's id.
        """
        letter = build_dead_letter(
            DeadLetterReason.INVALID_PAYLOAD,
            now_ms=received_at_ms,
            letter_id=keys.unparseable_dead_letter_id(hashlib.sha256(raw).hexdigest()),
            error_type="InvalidPayload",
            error_message=detail,
            received_at=received_at_ms,
            raw=raw,
            headers=orjson.dumps(dict(headers)).decode(),
        )
        await self._write(
            self._dead_letter_unparseable,
            [
                keys.dead_letter_key(letter.id),
                keys.DEAD_LETTER_INDEX,
                keys.DEAD_LETTER_REASON_COUNTS,
            ],
            [encode_dead_letter(letter)],
        )
        return letter.id

    async def _write(self, script: AsyncScript, script_keys: list[str], args: list[Any]) -> Any:
        """Run ``script``; with ``min_replicas``, in one round trip with ``WAIT``, and raise
        NotReplicated unless enough replicas confirmed it."""
        if not self._min_replicas:
            return await script(keys=script_keys, args=args)
        try:
            reply, replicas = await self._write_and_wait(script, script_keys, args)
        except NoScriptError:  # a new or restarted primary: load it, once
            await self._redis.script_load(script.script)
            reply, replicas = await self._write_and_wait(script, script_keys, args)
        if replicas < self._min_replicas:
            raise NotReplicated(
                f"{replicas} of the {self._min_replicas} replica(s) required "
                f"(LOOPS_REDIS_MIN_REPLICAS) confirmed the write within "
                f"{self._replica_timeout_ms} ms"
            )
        return reply

    async def _write_and_wait(
        self, script: AsyncScript, script_keys: list[str], args: list[Any]
    ) -> tuple[Any, int]:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.evalsha(script.sha, len(script_keys), *script_keys, *args)
            pipe.set(keys.REPLICATION_MARK, b"1")
            pipe.wait(self._min_replicas, self._replica_timeout_ms)
            reply, _, replicas = await pipe.execute()
        return reply, int(replicas)
