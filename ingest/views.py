"""The receiver's request handlers: verify, store and enqueue, and only then answer 2xx."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from aiohttp.web_urldispatcher import _default_expect_handler

from loops_webhooks.ingest.answers import answer_for_error, answered
from loops_webhooks.ingest.app_keys import BODY_SLOTS, INTAKE, REDIS, SETTINGS, VERIFIER
from loops_webhooks.ingest.errors import (
    BodyTimeout,
    InvalidBody,
    InvalidPayload,
    PayloadTooLarge,
    ReceiverBusy,
    ReceiverUnavailable,
    json_response,
)
from loops_webhooks.ingest.metrics import RECEIVER_METRICS
from loops_webhooks.ingest.signature import SIGNATURE_HEADER
from loops_webhooks.settings import Settings
from loops_webhooks.workers.connection import REDIS_FAILURES
from loops_webhooks.workers.intake import ReceivedEvent, received_event

__all__ = ["expect_continue", "healthz", "readyz", "receive_webhook"]

log = structlog.get_logger(logger_name="loops_webhooks.ingest")

MAX_EVENT_ID_LENGTH = 255
_KEPT_HEADERS = frozenset((b"content-type", b"user-agent"))
T = TypeVar("T")


async def receive_webhook(request: web.Request, trace_context: str = "") -> web.Response:
    """Verify, store and enqueue, and only then answer 2xx; every error in JSON.

    ``trace_context``: the request span's ``traceparent``, stored with the event, when traces
    are on (``ingest/traces.py`` calls the view then); aiohttp calls it without one.
    """
    started = time.perf_counter()
    try:
        event, created = await _store(request, trace_context)
    except Exception as error:
        response, outcome = answer_for_error(error)
        answered(request, response, started, outcome)
        return response
    response = json_response({"received": True, "id": event.event_id, "duplicate": not created})
    outcome = "accepted" if created else "duplicate"
    answered(request, response, started, outcome, (event.event_id, event.event_type))
    return response


async def _store(request: web.Request, trace_context: str) -> tuple[ReceivedEvent, bool]:
    """The verified event, once Redis acknowledged it, and whether it was new."""
    received_at_ms = int(time.time() * 1000)
    body = await _read_body(request)
    request.app[VERIFIER].verify(body, request.headers.getall(SIGNATURE_HEADER, []))
    headers = _headers_worth_keeping(request)
    settings = request.app[SETTINGS]
    try:
        event_id, event_type, document = _event_identity(body)
    except InvalidPayload as problem:
        intake = request.app[INTAKE]
        keep = intake.dead_letter_unparseable(body, headers, received_at_ms, str(problem))
        await _acknowledged(asyncio.wait_for(keep, settings.redis_timeout_seconds))
        raise
    event = received_event(
        event_id,
        event_type,
        body,
        headers,
        received_at_ms,
        document,
        metadata_keys=settings.search_metadata_keys,
        trace_context=trace_context,
    )
    write_started = time.perf_counter()
    # The intake holds its batch to LOOPS_REDIS_TIMEOUT_SECONDS: one timer per batch, none here.
    created = await _acknowledged(request.app[INTAKE].submit(event))
    RECEIVER_METRICS.redis_write_durations.observe(time.perf_counter() - write_started)
    return event, created


async def healthz(request: web.Request) -> web.Response:
    """The process is up; no I/O, so a slow Redis never restarts healthy receivers."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready to accept events: Redis answers within the write deadline."""
    ping = request.app[REDIS].ping()
    try:
        await _acknowledged(asyncio.wait_for(ping, request.app[SETTINGS].redis_timeout_seconds))
    except ReceiverUnavailable as problem:
        return json_response({"status": "unavailable", "detail": str(problem)}, status=503)
    return json_response({"status": "ready"})


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue``: refuse an oversized body before inviting the client to send
    it; otherwise aiohttp's own answer (``100 Continue``, or 417 for another expectation)."""
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        started = time.perf_counter()
        response, outcome = answer_for_error(
            PayloadTooLarge(f"body is over the limit of {limit} bytes")
        )
        answered(request, response, started, outcome)
        return response
    await _default_expect_handler(request)
    return None


async def _read_body(request: web.Request) -> bytes:
    """The whole body, within the read timeout; one still arriving is read in a body slot.

    Bodies not yet read wait in aiohttp's per-connection buffer (``read_bufsize``, then TCP
    flow control), so the slots bound what hostile clients holding bodies open can cost. A
    body that arrived whole with its headers (the usual webhook) is already in that buffer:
    it takes no slot and no timer, which are per request costs.
    """
    settings = request.app[SETTINGS]
    limit = settings.max_body_bytes
    too_large = f"body is over the limit of {limit} bytes"
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(too_large)
    try:
        if request.content.is_eof():
            body = request.content.read_nowait()
            if len(body) > limit:  # a chunked body has no Content-Length to check first
                raise PayloadTooLarge(too_large)
            return body
        return await _read_in_slot(request, settings)
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(too_large) from None
    except (RequestPayloadError, ConnectionError) as error:
        # aiohttp keeps this exception on the request's payload; its traceback would hold
        # the frames that hold the request: a cycle keeping the partial body alive until the
        # cyclic garbage collector happens to run (hundreds of MiB under held bodies).
        error.__traceback__ = None
        raise InvalidBody(f"the body could not be read: {error}") from None


async def _read_in_slot(request: web.Request, settings: Settings) -> bytes:
    timeout = settings.read_timeout_seconds
    slots = request.app[BODY_SLOTS]
    try:
        async with asyncio.timeout(timeout):
            await slots.acquire()
    except TimeoutError:
        raise ReceiverBusy(
            f"{settings.max_concurrent_bodies} request bodies are being read; retry later"
        ) from None
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise BodyTimeout(f"the body did not arrive whole within {timeout:g}s") from None
    finally:
        slots.release()


def _event_identity(body: bytes) -> tuple[str, str, dict[str, Any]]:
    """The event's id and type, and the parsed body (its session and search terms are read
    from it)."""
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
    return event_id, event_type, document


def _headers_worth_keeping(request: web.Request) -> dict[str, str]:
    """What a faithful replay needs: the signature, content type, user agent, Loops' own.

    Read from the raw header bytes, names lower-cased; a value that is not UTF-8 is kept with
    U+FFFD in place of its bad bytes (no JSON encoder accepts the lone surrogates that
    aiohttp's decoded headers would hold).
    """
    kept = {}
    for raw_name, raw_value in request.raw_headers:
        name = raw_name.lower()
        if name in _KEPT_HEADERS or name.startswith(b"loops-"):
            kept[name.decode("latin-1")] = raw_value.decode("utf-8", "replace")
    return kept


async def _acknowledged(write: Awaitable[T]) -> T:
    """Await a Redis write held to ``LOOPS_REDIS_TIMEOUT_SECONDS``, or say the store is down
    (or too slow).

    The client's socket timeouts alone are no deadline: each of connecting, sending and
    reading may take the whole socket timeout with a stalled server. A write cut off by the
    deadline may still be committed by Redis later; that event was not acknowledged, so Loops
    redelivers it and the redelivery is answered as a duplicate.
    """
    try:
        return await write
    except REDIS_FAILURES as error:
        log.warning("event store unavailable", error=type(error).__name__, detail=str(error))
        raise ReceiverUnavailable(
            "the event store did not acknowledge the event in time; retry later"
        ) from error
