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

from workers import keys
from workers.intake import JOB_TTL_MS, job_payload
from workers.metrics import RECONCILER_REPAIRS

__all__ = ["Reconciler"]

log = structlog.get_logger("workers.reconciler")

BATCH_SIZE = 500

_REENQUEUE_IF_ORPHANED = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'pending' then
  redis.call('ZREM', KEYS[4], ARGV[5])
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 1 and redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
return 1
"""


class Reconciler:
    def __init__(
        self, redis: Redis, *, queue_name: str, interval_seconds: float, grace_seconds: float
    ) -> None:
        self._redis = redis
        self._queue_name = queue_name
        self._interval = interval_seconds
        self._grace_ms = int(grace_seconds * 1000)
        self._reenqueue = redis.register_script(_REENQUEUE_IF_ORPHANED)
        self._task: asyncio.Task[None] | None = None

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
        repaired = 0
        offset = 0
        while True:
            event_ids = await self._redis.zrangebyscore(
                keys.PENDING_EVENTS, "-inf", now_ms - self._grace_ms, start=offset, num=BATCH_SIZE
            )
            if not event_ids:
                RECONCILER_REPAIRS.inc(repaired)
                return repaired
            offset += len(event_ids)
            for event_id in (raw.decode() for raw in event_ids):
                repaired += await self._repair(event_id, now_ms)

    async def _repair(self, event_id: str, now_ms: int) -> int:
        event_type = await self._redis.hget(keys.event_key(event_id), "type")  # type: ignore[misc]
        job_id = keys.job_id_for_event(event_id)
        payload = job_payload(event_id, (event_type or b"").decode(), now_ms)
        reenqueued = await self._reenqueue(
            keys=[
                keys.event_key(event_id),
                keys.arq_job_key(job_id),
                self._queue_name,
                keys.PENDING_EVENTS,
            ],
            args=[job_id, payload, JOB_TTL_MS, now_ms, event_id],
        )
        return int(reenqueued)
