"""The worker's Prometheus metrics, served with a liveness check on ``LOOPS_METRICS_PORT``.

Counters are updated as handlers finish; the queue gauges are refreshed from Redis every few
seconds by a background task, so a scrape never waits on Redis. Labels are bounded: handler
names (registered in code), outcomes and reasons from fixed sets, never event ids.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from loops_webhooks.workers.stats import queue_figures

__all__ = [
    "DEAD_LETTERS",
    "HANDLER_DURATION",
    "HANDLER_RUNS",
    "RECONCILER_REPAIRS",
    "RETRIES_SCHEDULED",
    "UNHANDLED_EVENTS",
    "MetricsServer",
]

log = structlog.get_logger(logger_name="loops_webhooks.workers.metrics")

GAUGE_REFRESH_SECONDS = 5.0

HANDLER_RUNS = Counter(
    "loops_webhooks_handler_runs",
    "Handler attempts finished, by handler and outcome (done, retry, dead_letter).",
    ["handler", "outcome"],
)
HANDLER_DURATION = Histogram(
    "loops_webhooks_handler_duration_seconds",
    "How long one handler attempt ran.",
    ["handler"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RETRIES_SCHEDULED = Counter(
    "loops_webhooks_retries_scheduled", "Handler retries scheduled after a failed attempt."
)
DEAD_LETTERS = Counter(
    "loops_webhooks_dead_letters", "(event, handler) pairs dead-lettered, by reason.", ["reason"]
)
UNHANDLED_EVENTS = Counter(
    "loops_webhooks_unhandled_events", "Events whose type no registered handler matches."
)
RECONCILER_REPAIRS = Counter(
    "loops_webhooks_reconciler_repairs", "Pending events re-enqueued because their job was lost."
)
QUEUE_DEPTH = Gauge("loops_webhooks_queue_depth", "Jobs due now, waiting or running.")
SCHEDULED_RETRIES = Gauge("loops_webhooks_scheduled_retries", "Jobs scheduled for later.")
DEAD_LETTER_QUEUE_SIZE = Gauge("loops_webhooks_dead_letter_queue_size", "Dead letters stored.")
OLDEST_PENDING_AGE = Gauge(
    "loops_webhooks_oldest_pending_event_age_seconds",
    "Age of the oldest event accepted but not finished (0 when none).",
)


class MetricsServer:
    """``/metrics`` and ``/healthz`` for one worker, plus the gauge refresher.

    ``/healthz`` answers 503 with the reason while ``redis_problem`` returns one (Redis full,
    down or stalled as the worker's own calls found), else 200.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        queue_name: str,
        port: int,
        host: str = "127.0.0.1",
        redis_problem: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._redis = redis
        self._queue_name = queue_name
        self._port = port
        self._host = host
        self._redis_problem = redis_problem
        self._runner: web.AppRunner | None = None
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._refresher = asyncio.create_task(self._refresh_forever(), name="loops-gauges")
        app = web.Application()
        app.router.add_get("/metrics", _metrics)
        app.router.add_get("/healthz", self._healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except OSError as error:
            await runner.cleanup()
            log.error(
                "cannot serve worker metrics", host=self._host, port=self._port, error=str(error)
            )
            return
        self._runner = runner

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._runner is not None:
            await self._runner.cleanup()

    async def refresh_gauges(self) -> None:
        figures = await queue_figures(self._redis, queue_name=self._queue_name)
        QUEUE_DEPTH.set(figures.due)
        SCHEDULED_RETRIES.set(figures.scheduled)
        DEAD_LETTER_QUEUE_SIZE.set(figures.dead_letters)
        OLDEST_PENDING_AGE.set(figures.oldest_pending_age_seconds or 0)

    async def _healthz(self, request: web.Request) -> web.Response:
        problem = self._redis_problem()
        if problem is not None:
            return web.json_response({"status": "redis_unusable", "detail": problem}, status=503)
        return web.json_response({"status": "ok"})

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.refresh_gauges()
            except RedisError as error:
                log.warning("cannot refresh queue gauges", error=str(error))
            await asyncio.sleep(GAUGE_REFRESH_SECONDS)


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
