"""The producer side of the queue: record a verified event and enqueue its job, atomically.

The receiver calls ``EventIntake.submit`` once per request. Requests that arrive within one
event-loop tick share a single Redis round trip (one script call for the whole batch), and
each caller is answered only once Redis has acknowledged its own event. Recording and
enqueueing happen inside one Lua script, so an event is never stored without its job; the
reconciler still repairs jobs lost later (expired, dropped, flushed).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from arq.jobs import serialize_job
from redis.asyncio import Redis

from workers import keys
from workers.dead_letters import DeadLetter, DeadLetterReason

__all__ = ["PROCESS_EVENT_JOB", "EventIntake", "ReceivedEvent", "job_payload"]

PROCESS_EVENT_JOB = "process_event"
JOB_TTL_MS = 86_400_000
"""How long an enqueued job payload lives in Redis (arq's default); the reconciler re-enqueues
an event whose job expired before it ran."""

MAX_EVENTS_PER_CALL = 256

_RECORD_AND_ENQUEUE = """
local ttl = ARGV[1]
local n = (#KEYS - 2) / 2
local results = {}
for i = 1, n do
  local event_key = KEYS[2 * i + 1]
  local job_key = KEYS[2 * i + 2]
  local a = 1 + (i - 1) * 7
  if redis.call('EXISTS', event_key) == 1 then
    results[i] = 0
  else
    redis.call('HSET', event_key, 'id', ARGV[a + 1], 'type', ARGV[a + 2], 'raw', ARGV[a + 3],
               'headers', ARGV[a + 4], 'received_at', ARGV[a + 5], 'status', 'pending')
    redis.call('ZADD', KEYS[1], ARGV[a + 5], ARGV[a + 1])
    redis.call('SET', job_key, ARGV[a + 7], 'PX', ttl)
    redis.call('ZADD', KEYS[2], ARGV[a + 5], ARGV[a + 6])
    results[i] = 1
  end
end
return results
"""

_DEAD_LETTER_UNPARSEABLE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """A verified request, as it will be stored: the exact raw bytes and what replay needs."""

    event_id: str
    event_type: str
    raw: bytes
    headers: Mapping[str, str]
    received_at_ms: int


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


class EventIntake:
    """Records and enqueues events for the receiver, batching concurrent requests."""

    def __init__(self, redis: Redis, *, queue_name: str) -> None:
        self._redis = redis
        self._queue_name = queue_name
        self._record_and_enqueue = redis.register_script(_RECORD_AND_ENQUEUE)
        self._dead_letter_unparseable = redis.register_script(_DEAD_LETTER_UNPARSEABLE)
        self._waiting: list[tuple[ReceivedEvent, asyncio.Future[bool]]] = []
        self._flushes: set[asyncio.Task[None]] = set()

    async def submit(self, event: ReceivedEvent) -> bool:
        """Store and enqueue ``event``; True if it is new, False if its id was already recorded.

        Returns only after Redis acknowledged the write; raises the Redis error otherwise.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._start_flush)
        self._waiting.append((event, future))
        return await future

    def _start_flush(self) -> None:
        batch, self._waiting = self._waiting, []
        for start in range(0, len(batch), MAX_EVENTS_PER_CALL):
            task = asyncio.create_task(self._flush(batch[start : start + MAX_EVENTS_PER_CALL]))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[tuple[ReceivedEvent, asyncio.Future[bool]]]) -> None:
        now_ms = int(time.time() * 1000)
        script_keys: list[Any] = [keys.PENDING_EVENTS, self._queue_name]
        args: list[Any] = [JOB_TTL_MS]
        for event, _ in batch:
            job_id = keys.job_id_for_event(event.event_id)
            script_keys += [keys.event_key(event.event_id), keys.arq_job_key(job_id)]
            args += [
                event.event_id,
                event.event_type,
                event.raw,
                orjson.dumps(dict(event.headers)),
                event.received_at_ms,
                job_id,
                job_payload(event.event_id, event.event_type, now_ms),
            ]
        try:
            results = await self._record_and_enqueue(keys=script_keys, args=args)
        except BaseException as error:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for (_, future), created in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(bool(created))

    async def dead_letter_unparseable(
        self, raw: bytes, headers: Mapping[str, str], received_at_ms: int, detail: str
    ) -> str:
        """Keep a signed body that is not a usable event, so nothing signed is lost.

        Deduplicated by the body's hash; returns the dead letter's id.
        """
        letter = DeadLetter(
            id="invalid_payload:" + hashlib.sha256(raw).hexdigest(),
            reason=DeadLetterReason.INVALID_PAYLOAD,
            error_type="InvalidPayload",
            error_message=detail,
            dead_lettered_at=received_at_ms,
            received_at=received_at_ms,
            raw=raw,
            headers=orjson.dumps(dict(headers)).decode(),
        )
        flat: list[Any] = [received_at_ms, letter.id]
        for name, value in letter.redis_fields().items():
            flat += [name, value]
        await self._dead_letter_unparseable(
            keys=[keys.dead_letter_key(letter.id), keys.DEAD_LETTER_INDEX], args=flat
        )
        return letter.id
