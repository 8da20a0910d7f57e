"""What a page's query string or an API body asks for, as the operator API's typed filters.

Every value is checked here, so a bad one is a 400 that names the parameter, and the pages
and the API read their filters the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loops_webhooks.dashboard.errors import BadRequest
from loops_webhooks.workers.event_store import EventStatus
from loops_webhooks.workers.operator_api import (
    MAX_PAGE_SIZE,
    DeadLetterFilter,
    EventFilter,
    parse_since,
)

__all__ = [
    "DEAD_LETTER_FILTER_FIELDS",
    "DEFAULT_LIMIT",
    "dead_letter_filter",
    "event_filter",
    "limit_of",
]

DEFAULT_LIMIT = 50
DEAD_LETTER_FILTER_FIELDS = (
    "type",
    "handler",
    "reason",
    "since",
    "session",
    "customer",
    "metadata",
)


def _since_ms(text: str) -> int:
    try:
        return parse_since(text)
    except ValueError as error:
        raise BadRequest(f"since: {error}") from None


def _text(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name}: must be a string")
    return value.strip() or None


def _since(params: Mapping[str, Any]) -> int | None:
    text = _text(params, "since")
    return _since_ms(text) if text is not None else None


def _metadata(params: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """``metadata=KEY:VALUE``, repeatable (a query string), or in a body one such string or a
    list of them."""
    getall = getattr(params, "getall", None)
    values = getall("metadata", []) if getall is not None else params.get("metadata")
    if not isinstance(values, list):
        values = [values]
    pairs = []
    for value in values:
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise BadRequest("metadata: must be a string KEY:VALUE")
        name, colon, wanted = value.partition(":")
        if not colon or not name or not wanted:
            raise BadRequest(f"metadata: {value!r} is not KEY:VALUE")
        pairs.append((name, wanted))
    return tuple(pairs)


def limit_of(params: Mapping[str, str]) -> int:
    text = params.get("limit") or str(DEFAULT_LIMIT)
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE_SIZE:
        raise BadRequest(f"limit: must be a whole number from 1 to {MAX_PAGE_SIZE}, not {text!r}")
    return int(text)


def event_filter(params: Mapping[str, str]) -> EventFilter:
    status = _text(params, "status")
    if status is not None and status not in set(EventStatus):
        choices = ", ".join(EventStatus)
        raise BadRequest(f"status: {status!r} is not one of {choices}")
    return EventFilter(
        event_type=_text(params, "type"),
        status=EventStatus(status) if status is not None else None,
        since_ms=_since(params),
        session_id=_text(params, "session"),
        customer_id=_text(params, "customer"),
        metadata=_metadata(params),
        text=_text(params, "q"),
    )


def dead_letter_filter(params: Mapping[str, Any]) -> DeadLetterFilter:
    """From a query string, or from the ``filter`` object of a replay or purge body (where
    an unknown field is an error rather than a filter silently not applied)."""
    return DeadLetterFilter(
        event_type=_text(params, "type"),
        handler=_text(params, "handler"),
        reason=_text(params, "reason"),
        since_ms=_since(params),
        session_id=_text(params, "session"),
        customer_id=_text(params, "customer"),
        metadata=_metadata(params),
    )
