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
from loops_webhooks.workers.scripts import register_script

__all__ = ["Reconciler"]

log = structlog.get_logger(logger_name="loops_webhooks.workers.reconciler")

BATCH_SIZE = 500

MAX_EVENTS_PER_PASS = 10_000
"""Pending events one pass looks at; the next pass goes on where it stopped, so events
waiting on long retries at the front never hide a newer one that lost its job."""

TRIM_BATCH_SIZE = 1000
"""Event-index entries one pass looks at for records that have expired."""


class Reconciler:
    def __init__(
        self,
        redis: Redis,
        *,
        queue_name: str,
        interval_seconds: float,
        grace_seconds: float,
        dedupe_ttl_seconds: int,
    ) -> None:
        """``dedupe_ttl_seconds``: a finished event's record expires this long after receipt,
        so older entries of the event index are checked and those expired removed."""
        self._redis = redis
        self._queue_name = queue_name
        self._interval = interval_seconds
        self._grace_ms = int(grace_seconds * 1000)
        self._reenqueue = register_script(redis, "reenqueue_orphans")
        self._trim = register_script(redis, "trim_event_index")
        self._dedupe_ttl_ms = dedupe_ttl_seconds * 1000
        self._task: asyncio.Task[None] | None = None
        self._resume_at = 0
        self._trim_resume_at = 0

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
            except (RedisError, OSError) as error:
                log.warning("reconciler could not reach Redis", error=str(error))
            except Exception:
                # A pass that fails for another reason must not end the reconciler for good:
                # it is what repairs lost jobs, and nothing else would notice it had stopped.
                log.exception("reconciler pass failed; the next one runs as usual")
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
        await self.trim_event_index(now_ms)
        return repaired

    async def trim_event_index(self, now_ms: int) -> int:
        """Remove index entries of expired event records, a batch per pass; dead events keep
        their records (and entries) until purged, so the next pass goes on after them."""
        looked_at, removed = await self._trim(
            keys=[keys.EVENT_INDEX],
            args=[
                keys.EVENT_PREFIX,
                now_ms - self._dedupe_ttl_ms,
                self._trim_resume_at,
                TRIM_BATCH_SIZE,
            ],
        )
        kept = int(looked_at) - int(removed)
        full = int(looked_at) == TRIM_BATCH_SIZE
        self._trim_resume_at = self._trim_resume_at + kept if full else 0
        return int(removed)

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
