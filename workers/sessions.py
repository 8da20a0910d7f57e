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

__all__ = ["MAX_SESSION_ID_LENGTH", "created_ms", "session_id"]

MAX_SESSION_ID_LENGTH = 200
"""A longer ``data.id`` is not taken as a session id: it becomes part of Redis key names."""


def session_id(document: Mapping[str, Any]) -> str | None:
    """``data.id`` of a parsed event: a non-empty string of at most `MAX_SESSION_ID_LENGTH`
    characters, or a number (as text); None where the event has none."""
    data = document.get("data")
    if not isinstance(data, dict):
        return None
    value = data.get("id")
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and 0 < len(value) <= MAX_SESSION_ID_LENGTH:
        return value
    return None


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
