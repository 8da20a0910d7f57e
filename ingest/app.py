"""The receiver's application factory: synchronous, no I/O; Redis is opened in a cleanup context."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from loops_webhooks.ingest import views
from loops_webhooks.ingest.app_keys import (
    BODY_SLOTS,
    EVENT_IDENTITY,
    INTAKE,
    OUTCOME,
    REDIS,
    REDIS_URL,
    SETTINGS,
    VERIFIER,
)
from loops_webhooks.ingest.errors import error_response, response_for
from loops_webhooks.ingest.metrics import RECEIVER_METRICS
from loops_webhooks.ingest.signature import SignatureVerifier
from loops_webhooks.logs import CanonicalLine
from loops_webhooks.redis_url import redacted_url
from loops_webhooks.settings import Settings
from loops_webhooks.workers.connection import open_redis
from loops_webhooks.workers.intake import EventIntake
from loops_webhooks.workers.metrics_server import MetricsServer

__all__ = ["create_app"]

log = structlog.get_logger(logger_name="loops_webhooks.ingest")
request_line = CanonicalLine("loops_webhooks.ingest")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(settings: Settings, redis_url: str) -> web.Application:
    """Build the receiver. Raises ConfigurationError when no signing secret is configured.

    Its port serves the webhook path, ``/healthz`` and ``/readyz``, nothing else: ``/metrics``
    is served on ``LOOPS_METRICS_HOST``:``LOOPS_METRICS_PORT`` (unless that port is 0), out of
    reach of whoever can reach the webhook.
    """
    verifier = SignatureVerifier(settings.require_webhook_secrets())
    app = web.Application(
        middlewares=[_answer_and_log],
        client_max_size=settings.max_body_bytes,
        # The signature covers the bytes as sent: never decompress them before verifying.
        handler_args={"auto_decompress": False, "read_bufsize": 16 * 1024},
    )
    app[SETTINGS] = settings
    app[REDIS_URL] = redis_url
    app[VERIFIER] = verifier
    app[BODY_SLOTS] = asyncio.Semaphore(settings.max_concurrent_bodies)
    app.cleanup_ctx.append(_redis_context)
    if settings.metrics_port:
        app.cleanup_ctx.append(_metrics_server_context)
    app.router.add_post(
        settings.webhook_path, views.receive_webhook, expect_handler=views.expect_continue
    )
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
    return app


async def _redis_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    timeout = settings.redis_timeout_seconds
    redis = open_redis(
        app[REDIS_URL],
        sentinel_password=settings.sentinel_password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )
    app[REDIS] = redis
    app[INTAKE] = EventIntake(
        redis,
        queue_name=settings.queue_name,
        deadline_seconds=timeout,
        min_replicas=settings.redis_min_replicas,
        # WAIT gets half of the deadline, so its answer arrives before the socket times out
        replica_timeout_ms=max(1, int(timeout * 1000 / 2)),
    )
    try:
        await redis.ping()
    except (RedisError, OSError) as error:
        log.warning(
            "Redis is unreachable: every webhook is answered 503 until it is back",
            redis_url=redacted_url(app[REDIS_URL]),
            error=str(error) or type(error).__name__,
        )
    yield
    await redis.aclose()


async def _metrics_server_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    server = MetricsServer(host=settings.metrics_host, port=settings.metrics_port)
    await server.start()
    yield
    await server.stop()


@web.middleware
async def _answer_and_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as ``{"error", "detail"}`` JSON with its one status code; every
    request leaves one log line with its outcome and duration; webhook requests are counted."""
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as http_error:
        if http_error.status < 400:
            raise
        response = _http_error_response(request, http_error)
    except Exception as error:
        response = _error_response(request, error)
    duration = time.perf_counter() - started
    outcome = request.get(OUTCOME)
    if outcome is not None:
        RECEIVER_METRICS.request_answered(outcome, duration)
    event_id, event_type = request.get(EVENT_IDENTITY, (None, None))
    request_line.info(
        "request",
        {
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "outcome": outcome,
            "duration_ms": round(duration * 1000, 2),
            "event_id": event_id,
            "event_type": event_type,
        },
    )
    return response


def _http_error_response(request: web.Request, http_error: web.HTTPException) -> web.Response:
    code = http_error.reason.lower().replace(" ", "_")
    response = error_response(http_error.status, code, http_error.reason)
    if http_error.status == 405:
        response.headers["Allow"] = http_error.headers.get("Allow", "POST")
        request[OUTCOME] = "method_not_allowed"
    return response


def _error_response(request: web.Request, error: Exception) -> web.Response:
    known = response_for(error)
    if known is not None:
        response, request[OUTCOME] = known
        return response
    log.exception("unexpected error")
    request[OUTCOME] = "error"
    return error_response(500, "internal_error", "unexpected error; see the receiver's log")
