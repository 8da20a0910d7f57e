"""The checkout session an event belongs to, and when Loops created the event, read at intake.

An event's session id is ``data.id``: the checkout session of every ``checkout.session.*``
event. Admission runs one handler for one session's events one at a time, earliest
``created`` first (``lua/admission.lua``, the ``ordering`` gate), so both are taken from the
body the receiver has already parsed and stored beside the event, where ``begin`` reads them
without parsing anything. This is the one definition of "the session id of an event".
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["MAX_BUSINESS_VALUE_LENGTH", "business_value", "created_ms", "session_id"]

MAX_BUSINESS_VALUE_LENGTH = 200
"""A longer value is not taken as a session id or a search term: it becomes part of Redis key
names."""


def business_value(value: Any) -> str | None:
    """A value of an event's body fit to be a key (a session id, a customer, a metadata value):
    a non-empty string of at most `MAX_BUSINESS_VALUE_LENGTH` characters, or a number (as
    text); None for anything else, booleans included."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        value = str(value)
    if isinstance(value, str) and 0 < len(value) <= MAX_BUSINESS_VALUE_LENGTH:
        return value
    return None


def session_id(document: Mapping[str, Any]) -> str | None:
    """``data.id`` of a parsed event, where it is a `business_value`; None where the event has
    none."""
    data = document.get("data")
    if not isinstance(data, dict):
        return None
    return business_value(data.get("id"))


def created_ms(document: Mapping[str, Any], received_at_ms: int) -> int:
    """The event's ``created`` (an ISO 8601 time; UTC where it names no zone) in ms since the
    epoch; ``received_at_ms`` where it is missing or unreadable."""
    created = document.get("created")
    if not isinstance(created, str):
        return received_at_ms
    try:
        moment = datetime.fromisoformat(created)
    except ValueError:
        return received_at_ms
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
