"""The testing kit: unit-test your handlers with pytest, without Redis, a worker or a receiver.

``make_event`` and ``make_context`` build what the worker would pass a handler; ``run`` runs
every handler of a router that matches an event and reports the outcome the worker would
record, decided by the worker's own code (``loops_webhooks.handlers.outcomes``); ``sign`` and
``signed_request`` build what Loops sends, for tests of code that verifies or forwards
webhooks. It imports no aiohttp, arq or redis. Also importable as ``loops_webhooks.testing``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pydantic
import structlog

from loops_webhooks.handlers.context import HandlerContext, idempotency_key
from loops_webhooks.handlers.events import Event, model_for, parse_event
from loops_webhooks.handlers.outcomes import Verdict, classify
from loops_webhooks.handlers.retry_policy import RetryPolicy
from loops_webhooks.handlers.router import Handler, Router
from loops_webhooks.handlers.sample_events import sample_event
from loops_webhooks.settings import Settings

__all__ = [
    "SIGNATURE_HEADER",
    "HandlerResult",
    "make_context",
    "make_event",
    "run",
    "sign",
    "signed_request",
]

SIGNATURE_HEADER = "loops-signature"


def _worker_default(setting: str) -> Any:
    """The worker's default for one setting, read from the Settings model, never retyped."""
    return Settings.model_fields[setting].default


@dataclass(frozen=True, slots=True)
class HandlerResult:
    """How one handler's attempt ended, as the worker would record it.

    ``outcome`` is "done", "retry" or "dead_letter"; ``error`` is what the handler raised (a
    ``TimeoutError`` for a timeout, a ``pydantic.ValidationError`` for an event that does not
    fit the handler's model), or None; ``retry_after`` is the delay in seconds before the
    retry ("retry" only): ``RetryLater.after``, or a jittered backoff drawn as the worker draws.
    """

    handler: str
    outcome: Verdict
    error: BaseException | None
    retry_after: float | None


def make_event(
    event_type: str, *, id: str | None = None, data: dict[str, Any] | None = None
) -> Event:
    """A realistic event of the seed's shape with a fresh ``evt_...`` id (or ``id``), parsed
    into the model the worker chooses by type (`CheckoutSessionEvent` for the checkout types).

    ``data`` holds wire-format (camelCase) fields; each of its top-level keys replaces the
    default's, so ``data={"metadata": {}}`` gives an empty metadata.
    """
    envelope = sample_event(event_type, event_id=id, data=data)
    return model_for(event_type).model_validate(envelope)


def make_context(
    event: Event,
    *,
    handler: str = "tests:handler",
    attempt: int = 1,
    superseded_by: str | None = None,
) -> HandlerContext:
    """The context the worker would pass ``handler`` for ``event`` on attempt ``attempt``,
    with the same idempotency key; ``superseded_by`` as the worker would set it after the
    handler finished a later event of the same session (that event's id)."""
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt!r}")
    return HandlerContext(
        event_id=event.id,
        event_type=event.type,
        handler=handler,
        attempt=attempt,
        idempotency_key=idempotency_key(event.id, handler),
        received_at=datetime.now(UTC),
        log=structlog.get_logger().bind(
            event_id=event.id, event_type=event.type, handler=handler, attempt=attempt
        ),
        superseded_by=superseded_by,
    )


def sign(body: bytes, secret: str) -> str:
    """The ``loops-signature`` Loops sends with ``body``: lowercase hex HMAC-SHA256."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed_request(event: Event, secret: str) -> tuple[bytes, dict[str, str]]:
    """The raw JSON body (wire format) and the headers Loops sends for ``event``."""
    body = event.model_dump_json(by_alias=True, exclude_unset=True).encode()
    return body, {"content-type": "application/json", SIGNATURE_HEADER: sign(body, secret)}


async def run(
    router: Router, event: Event, *, attempt: int = 1, superseded_by: str | None = None
) -> list[HandlerResult]:
    """Run every handler of ``router`` that matches ``event`` once, as attempt ``attempt``,
    under the worker's rules; one result per handler, in registration order. Each gets
    ``superseded_by`` in its context (see `make_context`).

    As in the worker: each handler gets the event parsed into its own model (its annotation,
    else the type's), runs within its timeout (else the worker's default), concurrently with
    the others, a plain ``def`` in a thread; the outcome is decided by the worker's code, with
    the handler's ``max_attempts`` (else the worker's default) and the default backoff.
    """
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt!r}")
    raw = event.model_dump_json(by_alias=True, exclude_unset=True).encode()
    handlers = router.handlers_for(event.type)
    return list(
        await asyncio.gather(
            *(_run_one(h, event.type, raw, attempt, superseded_by) for h in handlers)
        )
    )


async def _run_one(
    handler: Handler, event_type: str, raw: bytes, attempt: int, superseded_by: str | None
) -> HandlerResult:
    policy = RetryPolicy(
        max_attempts=handler.max_attempts or int(_worker_default("max_attempts")),
        base_seconds=float(_worker_default("retry_base_seconds")),
        max_delay_seconds=float(_worker_default("retry_max_delay_seconds")),
    )
    try:
        parsed = parse_event(raw, handler.model_for(event_type))
    except pydantic.ValidationError as invalid:
        return _result(handler, attempt, invalid, policy)
    context = make_context(
        parsed, handler=handler.name, attempt=attempt, superseded_by=superseded_by
    )
    timeout = handler.timeout or float(_worker_default("handler_timeout_seconds"))
    error: BaseException | None = None
    try:
        async with asyncio.timeout(timeout) as deadline:
            if handler.is_async:
                await handler.func(parsed, context)
            else:
                await asyncio.to_thread(handler.func, parsed, context)
    except TimeoutError as timed_out:
        error = timed_out
        if deadline.expired():
            error = TimeoutError(f"handler did not finish within {timeout:g}s")
    except asyncio.CancelledError:
        raise
    except BaseException as raised:  # as in the worker: SystemExit too is a failed attempt
        error = raised
    return _result(handler, attempt, error, policy)


def _result(
    handler: Handler, attempt: int, error: BaseException | None, policy: RetryPolicy
) -> HandlerResult:
    outcome = classify(attempt, error, policy)
    return HandlerResult(handler.name, outcome.verdict, error, outcome.retry_after)
