"""The receiver's request handlers: verify, store and enqueue, and only then answer 2xx."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

import orjson
import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from redis.exceptions import RedisError

from loops_webhooks.ingest.app_keys import (
    EVENT_IDENTITY,
    INTAKE,
    OUTCOME,
    REDIS,
    SETTINGS,
    VERIFIER,
)
from loops_webhooks.ingest.errors import (
    InvalidBody,
    InvalidPayload,
    PayloadTooLarge,
    ReceiverUnavailable,
    json_response,
)
from loops_webhooks.ingest.metrics import REDIS_WRITE_DURATION
from loops_webhooks.ingest.signature import SIGNATURE_HEADER
from loops_webhooks.workers.intake import ReceivedEvent

__all__ = ["healthz", "readyz", "receive_webhook"]

log = structlog.get_logger(logger_name="loops_webhooks.ingest")

MAX_EVENT_ID_LENGTH = 255
_REDIS_FAILURES = (RedisError, OSError, asyncio.TimeoutError)
T = TypeVar("T")


async def receive_webhook(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    received_at_ms = int(time.time() * 1000)
    body = await _read_body(request, settings.max_body_bytes)
    request.app[VERIFIER].verify(body, request.headers.getall(SIGNATURE_HEADER, []))
    headers = _headers_worth_keeping(request)
    try:
        event_id, event_type = _event_identity(body)
    except InvalidPayload as problem:
        intake = request.app[INTAKE]
        keep = intake.dead_letter_unparseable(body, headers, received_at_ms, str(problem))
        await _acknowledged(keep)
        raise
    event = ReceivedEvent(event_id, event_type, body, headers, received_at_ms)
    write_started = time.perf_counter()
    created = await _acknowledged(request.app[INTAKE].submit(event))
    REDIS_WRITE_DURATION.observe(time.perf_counter() - write_started)
    request[EVENT_IDENTITY] = (event_id, event_type)
    request[OUTCOME] = "accepted" if created else "duplicate"
    return json_response({"received": True, "id": event_id, "duplicate": not created})


async def healthz(request: web.Request) -> web.Response:
    """The process is up; no I/O, so a slow Redis never restarts healthy receivers."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready to accept events: Redis answers within the write deadline."""
    try:
        await _acknowledged(request.app[REDIS].ping())
    except ReceiverUnavailable as problem:
        return json_response({"status": "unavailable", "detail": str(problem)}, status=503)
    return json_response({"status": "ready"})


async def _read_body(request: web.Request, limit: int) -> bytes:
    too_large = PayloadTooLarge(f"body is over the limit of {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    except RequestPayloadError as error:
        raise InvalidBody(f"the body could not be read: {error}") from None


def _event_identity(body: bytes) -> tuple[str, str]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidPayload(f"body is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise InvalidPayload("body is not a JSON object")
    event_id, event_type = document.get("id"), document.get("type")
    if not isinstance(event_id, str) or not event_id:
        raise InvalidPayload("body has no string 'id'")
    if len(event_id) > MAX_EVENT_ID_LENGTH:
        raise InvalidPayload(f"'id' is longer than {MAX_EVENT_ID_LENGTH} characters")
    if not isinstance(event_type, str) or not event_type:
        raise InvalidPayload("body has no string 'type'")
    return event_id, event_type


def _headers_worth_keeping(request: web.Request) -> dict[str, str]:
    """What a faithful replay needs: the signature, content type, user agent, Loops' own."""
    kept = {}
    for name, value in request.headers.items():
        lowered = name.lower()
        if lowered in ("content-type", "user-agent") or lowered.startswith("loops-"):
            kept[lowered] = _as_text(value)
    return kept


def _as_text(value: str) -> str:
    """A header value as valid UTF-8: aiohttp hands bytes that are not UTF-8 over as lone
    surrogates, which no JSON encoder accepts; they are kept as U+FFFD instead."""
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


async def _acknowledged(write: Awaitable[T]) -> T:
    """Await a Redis write, or say the store is down (or too slow).

    The time limit, ``LOOPS_REDIS_TIMEOUT_SECONDS``, is the Redis client's own connect and
    socket timeout (see ``app._redis_context``): no timer per request on the hot path.
    """
    try:
        return await write
    except _REDIS_FAILURES as error:
        log.warning("event store unavailable", error=type(error).__name__, detail=str(error))
        raise ReceiverUnavailable(
            "the event store did not acknowledge the event in time; retry later"
        ) from error
