"""The reconciler: nothing acknowledged may stay pending forever.

Every worker runs it periodically. It looks at events recorded but not finished for longer
than a grace period and re-enqueues those that have no live job (a job that expired, was
dropped, or was never written because Redis was flushed or restored from an old snapshot).
The job then decides per handler: run, wait, or dead-letter when attempts are spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from loops_webhooks.workers import keys
from loops_webhooks.workers.intake import JOB_TTL_MS, job_payload
from loops_webhooks.workers.metrics import RECONCILER_REPAIRS

__all__ = ["Reconciler"]

log = structlog.get_logger(logger_name="loops_webhooks.workers.reconciler")

BATCH_SIZE = 500

MAX_EVENTS_PER_PASS = 10_000
"""Pending events one pass looks at; the next pass goes on where it stopped, so events
waiting on long retries at the front never hide a newer one that lost its job."""

_REENQUEUE_ORPHANS = """
-- KEYS: pending set, queue, then per event: event key, job key
-- ARGV: job ttl ms, score, then per event: event id, job id, job payload
local repaired = 0
for i = 1, (#KEYS - 2) / 2 do
  local event_key, job_key = KEYS[2 * i + 1], KEYS[2 * i + 2]
  local event_id, job_id, payload = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
  if redis.call('HGET', event_key, 'status') ~= 'pending' then
    redis.call('ZREM', KEYS[1], event_id)
  elseif redis.call('EXISTS', job_key) == 0 or not redis.call('ZSCORE', KEYS[2], job_id) then
    redis.call('SET', job_key, payload, 'PX', ARGV[1])
    redis.call('ZADD', KEYS[2], ARGV[2], job_id)
    repaired = repaired + 1
  end
end
return repaired
"""


class Reconciler:
    def __init__(
        self, redis: Redis, *, queue_name: str, interval_seconds: float, grace_seconds: float
    ) -> None:
        self._redis = redis
        self._queue_name = queue_name
        self._interval = interval_seconds
        self._grace_ms = int(grace_seconds * 1000)
        self._reenqueue = redis.register_script(_REENQUEUE_ORPHANS)
        self._task: asyncio.Task[None] | None = None
        self._resume_at = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run_forever(), name="loops-reconciler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run_forever(self) -> None:
        while True:
            try:
                repaired = await self.reconcile_once()
            except RedisError as error:
                log.warning("reconciler could not reach Redis", error=str(error))
            else:
                if repaired:
                    log.warning("re-enqueued events that had no live job", count=repaired)
            await asyncio.sleep(self._interval)

    async def reconcile_once(self) -> int:
        """One pass; returns how many events were re-enqueued."""
        now_ms = int(time.time() * 1000)
        event_ids = await self._redis.zrangebyscore(
            keys.PENDING_EVENTS,
            "-inf",
            now_ms - self._grace_ms,
            start=self._resume_at,
            num=MAX_EVENTS_PER_PASS,
        )
        full_pass = len(event_ids) == MAX_EVENTS_PER_PASS
        self._resume_at = self._resume_at + len(event_ids) if full_pass else 0
        repaired = 0
        for start in range(0, len(event_ids), BATCH_SIZE):
            batch = [raw.decode() for raw in event_ids[start : start + BATCH_SIZE]]
            repaired += await self._repair(batch, now_ms)
        RECONCILER_REPAIRS.inc(repaired)
        return repaired

    async def _repair(self, event_ids: list[str], now_ms: int) -> int:
        """Two round trips for a whole batch: read the types, then one atomic script."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for event_id in event_ids:
                pipe.hget(keys.event_key(event_id), "type")
            types = await pipe.execute()
        script_keys: list[str] = [keys.PENDING_EVENTS, self._queue_name]
        args: list[str | int | bytes] = [JOB_TTL_MS, now_ms]
        for event_id, event_type in zip(event_ids, types, strict=True):
            job_id = keys.job_id_for_event(event_id)
            script_keys += [keys.event_key(event_id), keys.arq_job_key(job_id)]
            payload = job_payload(event_id, (event_type or b"").decode(), now_ms)
            args += [event_id, job_id, payload]
        return int(await self._reenqueue(keys=script_keys, args=args))
