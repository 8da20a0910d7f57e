"""The receiver's application factory: synchronous, no I/O; Redis is opened in a cleanup context."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from loops_webhooks.ingest import views
from loops_webhooks.ingest.answers import View, accounted, method_not_allowed, not_found
from loops_webhooks.ingest.app_keys import (
    BODY_SLOTS,
    INTAKE,
    REDIS,
    REDIS_URL,
    SETTINGS,
    VERIFIER,
)
from loops_webhooks.ingest.signature import SignatureVerifier
from loops_webhooks.redis_url import redacted_url
from loops_webhooks.settings import Settings
from loops_webhooks.workers.connection import open_redis
from loops_webhooks.workers.intake import EventIntake
from loops_webhooks.workers.metrics_server import MetricsServer

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["create_app"]

log = structlog.get_logger(logger_name="loops_webhooks.ingest")


def create_app(settings: Settings, redis_url: str, tracer: Tracer | None = None) -> web.Application:
    """Build the receiver. Raises ConfigurationError when no signing secret is configured.

    With a ``tracer`` (traces on, ``loops_webhooks.tracing``), each webhook request is a span
    (``ingest/traces.py``); without one, nothing of OpenTelemetry is imported and the webhook
    path is the same as before.

    Its port serves the webhook path, ``/healthz`` and ``/readyz``, nothing else: ``/metrics``
    is served on ``LOOPS_METRICS_HOST``:``settings.receiver_metrics_port`` (unless that port
    is 0), out of reach of whoever can reach the webhook.
    """
    verifier = SignatureVerifier(settings.require_webhook_secrets())
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        # The signature covers the bytes as sent: never decompress them before verifying.
        handler_args={"auto_decompress": False, "read_bufsize": 16 * 1024},
    )
    app[SETTINGS] = settings
    app[REDIS_URL] = redis_url
    app[VERIFIER] = verifier
    app[BODY_SLOTS] = asyncio.Semaphore(settings.max_concurrent_bodies)
    app.cleanup_ctx.append(_redis_context)
    if settings.receiver_metrics_port:
        app.cleanup_ctx.append(_metrics_server_context)
    webhook: View = views.receive_webhook
    if tracer is not None:
        from loops_webhooks.ingest.traces import traced

        webhook = traced(views.receive_webhook, tracer, settings.webhook_path)
    app.router.add_post(settings.webhook_path, webhook, expect_handler=views.expect_continue)
    app.router.add_route("*", settings.webhook_path, method_not_allowed("POST"))
    for path, view in (("/healthz", views.healthz), ("/readyz", views.readyz)):
        app.router.add_get(path, accounted(view))
        app.router.add_route("*", path, method_not_allowed("GET,HEAD"))
    # Any character, newlines (a decoded %0A) included: every path gets the JSON 404.
    app.router.add_route("*", r"/{path:[\s\S]*}", not_found)
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
    server = MetricsServer(host=settings.metrics_host, port=settings.receiver_metrics_port)
    await server.start()
    yield
    await server.stop()
