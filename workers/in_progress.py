"""Keeping a worker's claims alive from outside its event loop, and noticing a blocked loop.

A job's in-progress marker (arq's, with a TTL) is what keeps other workers off its event. If
it were refreshed from the event loop, a handler that blocks the loop (``time.sleep`` in an
``async def``, a CPU-bound loop) would let it expire and a second worker would run the same
event at the same time. So a thread refreshes the markers of every job this worker runs, with
its own Redis connection, whatever the loop does; a worker that dies stops refreshing, and
its jobs are taken over once their markers expire. The concurrency slots a job holds are
renewed with its marker, and lapse with it. The same thread pings the loop and logs,
with the names of the running handlers, when the loop has not answered for a while.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import redis
import structlog

from loops_webhooks.workers import keys
from loops_webhooks.workers.connection import open_blocking_redis

__all__ = ["InProgressKeeper"]

log = structlog.get_logger(logger_name="loops_webhooks.workers")

BLOCKED_LOOP_SECONDS = 1.0
"""How long the event loop may go without answering before it is reported as blocked."""

BLOCKED_LOOP_REPEAT_SECONDS = 10.0
"""While it stays blocked, the report is repeated this often."""


class InProgressKeeper:
    """A daemon thread refreshing the in-progress markers of the tracked jobs."""

    def __init__(
        self,
        redis_url: str,
        *,
        sentinel_password: str | None,
        ttl_seconds: float,
        running_handlers: Callable[[], list[str]],
        limited_handlers: list[str],
    ) -> None:
        """``limited_handlers``: the names of the concurrency-limited handlers, whose slots
        (held in a job's name, see ``admission``) are renewed with the job's marker."""
        self._ttl_ms = int(ttl_seconds * 1000)
        self._slot_keys = [keys.handler_slots_key(name) for name in limited_handlers]
        self._interval = min(1.0, ttl_seconds / 4)
        self._running_handlers = running_handlers
        self._redis = open_blocking_redis(
            redis_url,
            sentinel_password=sentinel_password,
            socket_timeout=self._interval,
            socket_connect_timeout=self._interval,
        )
        self._jobs: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_answered = 0.0

    def track(self, job_id: str) -> None:
        with self._lock:
            self._jobs.add(job_id)

    def untrack(self, job_id: str) -> None:
        with self._lock:
            self._jobs.discard(job_id)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="loops-in-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(self._interval * 4)
        self._redis.close()

    def _run(self) -> None:
        reported_at = 0.0
        pinged_at = 0.0
        longest = 0.0
        while not self._stopping.wait(self._interval):
            self._refresh()
            now = time.monotonic()
            blocked = now - pinged_at if pinged_at and self._loop_answered < pinged_at else 0.0
            longest = max(longest, blocked)
            if blocked < BLOCKED_LOOP_SECONDS:
                if reported_at:
                    log.warning("event loop answers again", blocked_for_s=round(longest, 3))
                reported_at = longest = 0.0
            elif now - reported_at >= BLOCKED_LOOP_REPEAT_SECONDS:
                reported_at = now
                log.error(
                    "event loop blocked: a handler is not yielding (time.sleep or CPU-bound "
                    "work in an async def handler?); its jobs' claims are kept alive meanwhile",
                    blocked_for_s=round(blocked, 3),
                    handlers=self._running_handlers(),
                )
            if not blocked and self._ping_loop():
                pinged_at = now

    def _ping_loop(self) -> bool:
        if self._loop is None:
            return False
        try:
            self._loop.call_soon_threadsafe(self._answered)
        except RuntimeError:  # the loop is closed: the worker is ending
            return False
        return True

    def _answered(self) -> None:
        self._loop_answered = time.monotonic()

    def _refresh(self) -> None:
        with self._lock:
            jobs = list(self._jobs)
        if not jobs:
            return
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                lapse_at = int(time.time() * 1000) + self._ttl_ms
                for job_id in jobs:
                    pipe.pexpire(keys.arq_in_progress_key(job_id), self._ttl_ms)
                    for slots in self._slot_keys:
                        pipe.zadd(slots, {job_id: lapse_at}, xx=True)
                pipe.execute()
        except (redis.RedisError, OSError) as error:
            log.warning("cannot refresh in-progress markers", error=str(error), jobs=len(jobs))
