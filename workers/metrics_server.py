"""``/metrics`` and ``/healthz`` on their own port, apart from any public one.

The receiver and each worker run one, on ``LOOPS_METRICS_HOST``:``LOOPS_METRICS_PORT`` (by
default one port for receivers and another for workers). It holds no metrics of its own: it
exposes whatever this process registered with ``prometheus_client``, so a receiver shows
only the receiver's and a worker only a worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["MetricsServer"]

log = structlog.get_logger(logger_name="loops_webhooks.metrics")

REFRESH_SECONDS = 5.0

Refresh = Callable[[], Awaitable[None]]


class MetricsServer:
    """Serves ``/metrics`` and ``/healthz``; with ``refresh``, calls it every
    ``REFRESH_SECONDS`` in the background so that a scrape never waits on it (a worker's queue
    gauges come from Redis that way).

    A port that cannot be bound (a second worker on the host, say) is logged with the
    setting that moves it, not raised: the process goes on without metrics.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        refresh: Refresh | None = None,
        problem: Callable[[], str | None] = lambda: None,
    ) -> None:
        """``problem``: why the process cannot do its work now (a worker: Redis full, down
        or stalled, as its own calls found), or None; ``/healthz`` answers 503 with it."""
        self._host = host
        self._port = port
        self._refresh = refresh
        self._problem = problem
        self._runner: web.AppRunner | None = None
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._refresh is not None:
            self._refresher = asyncio.create_task(self._refresh_forever(self._refresh))
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
                "cannot serve metrics; going on without them. Give each receiver and worker "
                "on this host its own LOOPS_METRICS_PORT (0 turns metrics off)",
                host=self._host,
                port=self._port,
                error=error.strerror or str(error),
            )
            return
        self._runner = runner
        log.info("metrics listening", url=f"http://{self._host}:{self._port}/metrics")

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        problem = self._problem()
        if problem is not None:
            return web.json_response({"status": "redis_unusable", "detail": problem}, status=503)
        return web.json_response({"status": "ok"})

    async def _refresh_forever(self, refresh: Refresh) -> None:
        while True:
            await refresh()
            await asyncio.sleep(REFRESH_SECONDS)


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
