"""The receiver's application factory: synchronous, no I/O; Redis is opened in a cleanup context."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web
from redis.asyncio import Redis

from loops_webhooks.ingest import metrics, views
from loops_webhooks.ingest.app_keys import (
    BODY_SLOTS,
    INTAKE,
    OUTCOME,
    REDIS,
    REDIS_URL,
    SETTINGS,
    VERIFIER,
)
from loops_webhooks.ingest.errors import error_response, response_for
from loops_webhooks.ingest.signature import SignatureVerifier
from loops_webhooks.settings import Settings
from loops_webhooks.workers.intake import EventIntake

__all__ = ["create_app"]

log = structlog.get_logger(logger_name="loops_webhooks.ingest")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(settings: Settings, redis_url: str) -> web.Application:
    """Build the receiver. Raises ConfigurationError when no signing secret is configured."""
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
    app.router.add_post(
        settings.webhook_path, views.receive_webhook, expect_handler=views.expect_continue
    )
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
    app.router.add_get("/metrics", views.metrics)
    return app


async def _redis_context(app: web.Application) -> AsyncIterator[None]:
    timeout = app[SETTINGS].redis_timeout_seconds
    redis = Redis.from_url(
        app[REDIS_URL],
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )
    app[REDIS] = redis
    app[INTAKE] = EventIntake(redis, queue_name=app[SETTINGS].queue_name)
    yield
    await redis.aclose()


@web.middleware
async def _answer_and_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as ``{"error", "detail"}`` JSON with its one status code; every
    request leaves one log line with its outcome and duration; webhook requests are counted."""
    started = time.perf_counter()
    structlog.contextvars.clear_contextvars()
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
        metrics.REQUESTS_BY_OUTCOME[outcome].inc()
        metrics.REQUEST_DURATION.observe(duration)
    log.info(
        "request",
        method=request.method,
        path=request.path,
        status=response.status,
        outcome=outcome,
        duration_ms=round(duration * 1000, 2),
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
