"""The reconciler: nothing acknowledged may stay pending forever.

Every worker runs it periodically. It looks at events recorded but not finished for longer
than a grace period and re-enqueues those that have no live job (a job that expired, was
dropped, or was never written because Redis was flushed or restored from an old snapshot).
The job then decides per handler: run, wait, or dead-letter when attempts are spent.

It also keeps Redis's memory bounded: once per interval, one worker (``keys.TRIM_LOCK``)
removes the dead letters older than their retention, then the index and search entries of
every event whose record is gone or due to expire. A pass goes on until it has looked at
every entry old enough, so the trimming keeps up with intake whatever its rate; its cost is
the entries that expired since the last pass, plus the events kept without an expiry
(pending and dead ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from loops_webhooks.workers import keys
from loops_webhooks.workers.dead_letters import get_dead_letter
from loops_webhooks.workers.intake import JOB_TTL_MS, job_payload
from loops_webhooks.workers.metrics import RECONCILER_REPAIRS
from loops_webhooks.workers.replay import purge_dead_letter
from loops_webhooks.workers.scripts import register_script

__all__ = ["Reconciler"]

log = structlog.get_logger(logger_name="loops_webhooks.workers.reconciler")

BATCH_SIZE = 500

MAX_EVENTS_PER_PASS = 10_000
"""Pending events one pass looks at; the next pass goes on where it stopped, so events
waiting on long retries at the front never hide a newer one that lost its job."""

TRIM_BATCH_SIZE = 1000
"""Event-index entries one script call looks at; a pass makes as many calls as it needs, each
short, so Redis serves other clients between them."""

DEAD_LETTER_BATCH_SIZE = 500
DAY_MS = 24 * 60 * 60 * 1000


class Reconciler:
    def __init__(
        self,
        redis: Redis,
        *,
        queue_name: str,
        interval_seconds: float,
        grace_seconds: float,
        dedupe_ttl_seconds: int,
        dead_letter_retention_days: float | None,
    ) -> None:
        """``dedupe_ttl_seconds``: a finished event's record expires this long after receipt,
        so older index entries are checked and those of expiring records removed.
        ``dead_letter_retention_days``: dead letters older than this are purged (None: kept
        until an operator replays or purges them)."""
        self._redis = redis
        self._queue_name = queue_name
        self._interval = interval_seconds
        self._grace_ms = int(grace_seconds * 1000)
        self._reenqueue = register_script(redis, "reenqueue_orphans")
        self._trim = register_script(redis, "trim_indexes")
        self._dedupe_ttl_ms = dedupe_ttl_seconds * 1000
        self._dead_letter_retention_ms = (
            None if dead_letter_retention_days is None else int(dead_letter_retention_days * DAY_MS)
        )
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
        if await self._redis.set(keys.TRIM_LOCK, b"1", nx=True, px=self._trim_lock_ms()):
            expired = await self.expire_dead_letters(now_ms)
            if expired:
                log.info("purged dead letters past their retention", count=expired)
            await self.trim_indexes(now_ms)
        return repaired

    def _trim_lock_ms(self) -> int:
        """Half an interval: the worker that trimmed takes the next turn too, unless it left."""
        return max(1, int(self._interval * 500))

    async def expire_dead_letters(self, now_ms: int) -> int:
        """Purge the dead letters older than the retention; returns how many."""
        if self._dead_letter_retention_ms is None:
            return 0
        oldest_kept = now_ms - self._dead_letter_retention_ms
        purged = 0
        while True:
            letter_ids = await self._redis.zrangebyscore(
                keys.DEAD_LETTER_INDEX,
                "-inf",
                f"({oldest_kept}",
                start=0,
                num=DEAD_LETTER_BATCH_SIZE,
            )
            if not letter_ids:
                return purged
            for raw_id in letter_ids:
                letter = await get_dead_letter(self._redis, raw_id.decode())
                if letter is None:  # an index entry without its letter: nothing else to do
                    await self._redis.zrem(keys.DEAD_LETTER_INDEX, raw_id)
                    continue
                purged += await purge_dead_letter(
                    self._redis, letter, dedupe_ttl_seconds=self._dedupe_ttl_ms // 1000
                )

    async def trim_indexes(self, now_ms: int) -> int:
        """Remove the index and search entries of every event received long enough ago whose
        record is gone or due to expire; returns how many events left the indexes."""
        before = now_ms - self._dedupe_ttl_ms
        offset = removed = 0
        while True:
            looked_at, gone = await self._trim(
                keys=[keys.EVENT_INDEX, keys.SEARCH_TERMS],
                args=[
                    keys.EVENT_PREFIX,
                    keys.SEARCH_PREFIX,
                    before,
                    offset,
                    TRIM_BATCH_SIZE,
                ],
            )
            removed += int(gone)
            offset += int(looked_at) - int(gone)
            if int(looked_at) < TRIM_BATCH_SIZE:
                return removed

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
