"""What a handler knows about the delivery it is running in."""

import hashlib
from dataclasses import dataclass
from datetime import datetime

from structlog.typing import FilteringBoundLogger

__all__ = ["HandlerContext", "idempotency_key"]


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """Per-attempt facts the worker passes to a handler beside the event.

    `attempt` is 1-based. `idempotency_key` is the same on every retry, redelivery and replay
    of this event to this handler, so a handler can pass it to a payment or email API, or
    store it with its side effect, to make running twice harmless. `log` is already bound
    with `event_id`, `event_type`, `handler` and `attempt`.

    `superseded_by` is the id of an event of the same checkout session, created after this
    one, that this handler has already finished (succeeded on); None if there is none (or
    ordering is off). A late `checkout.session.expired` after a handled `.completed`:
    ``if ctx.superseded_by: return``.
    """

    event_id: str
    event_type: str
    handler: str
    attempt: int
    idempotency_key: str
    received_at: datetime
    log: FilteringBoundLogger
    superseded_by: str | None = None


def idempotency_key(event_id: str, handler_name: str) -> str:
    """Return the idempotency key for running `handler_name` on `event_id`.

    Stable: it depends only on these two strings, never on time, attempt or process, and its
    recipe (hex sha256 of ``f"{event_id}\\x00{handler_name}"``, first 32 characters) will not
    change, since keys already handed to other systems must keep matching.
    """
    digest = hashlib.sha256(f"{event_id}\x00{handler_name}".encode())
    return digest.hexdigest()[:32]
