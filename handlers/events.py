"""Pydantic models of the events Loops sends, as handlers receive them.

Fields are snake_case in Python and camelCase on the wire. Every model keeps fields it does not
know (in `model_extra`) instead of rejecting them, so Loops can add fields without breaking
delivery; only what a handler cannot do without is required.
"""

from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = [
    "CHECKOUT_SESSION_EVENT_TYPES",
    "LOOPS_EVENT_TYPES",
    "CheckoutSession",
    "CheckoutSessionEvent",
    "Event",
    "model_for",
    "parse_event",
]

CHECKOUT_SESSION_EVENT_TYPES = frozenset(
    {"checkout.session.completed", "checkout.session.expired", "checkout.session.failed"}
)

LOOPS_EVENT_TYPES = tuple(sorted(CHECKOUT_SESSION_EVENT_TYPES))
"""Every event type Loops documents today; a pattern matching none of them is likely a typo."""

_LOOPS_WIRE_FORMAT = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")


class Event(BaseModel):
    """The envelope every Loops webhook shares; `data` is left as parsed JSON."""

    model_config = _LOOPS_WIRE_FORMAT

    id: str
    type: str
    created: datetime
    data: dict[str, Any]


class CheckoutSession(BaseModel):
    """A checkout session as Loops reports it.

    `status` is a plain string ("open", "completed", ...) so a status Loops adds later still
    parses. `metadata` is whatever was attached when the session was created.
    """

    model_config = _LOOPS_WIRE_FORMAT

    id: str
    status: str
    url: str | None = None
    payment_link_id: str | None = None
    external_customer_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None
    completed_at: datetime | None = None


class CheckoutSessionEvent(Event):
    """A `checkout.session.completed`, `.expired` or `.failed` event."""

    data: CheckoutSession  # type: ignore[assignment]  # narrows the envelope's generic data


EventT = TypeVar("EventT", bound=Event)


def model_for(event_type: str) -> type[Event]:
    """Return the model that events of `event_type` are parsed into by default."""
    if event_type in CHECKOUT_SESSION_EVENT_TYPES:
        return CheckoutSessionEvent
    return Event


def parse_event(raw: bytes, model: type[EventT]) -> EventT:
    """Parse a stored webhook body into `model`; raises `pydantic.ValidationError` if invalid."""
    return model.model_validate_json(raw)
