"""The typed Loops events a handler receives (pydantic v2 models of the wire format)."""

from loops_webhooks.handlers.events import CheckoutSession, CheckoutSessionEvent, Event

__all__ = ["CheckoutSession", "CheckoutSessionEvent", "Event"]
