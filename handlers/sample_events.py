"""Realistic Loops events, shaped as the Loops API documents them: the one builder behind
``loops-webhooks send`` and the testing kit's ``make_event``."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["sample_event"]

_SESSION_STATUS = {
    "checkout.session.completed": "completed",
    "checkout.session.expired": "expired",
    "checkout.session.failed": "failed",
}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def sample_event(
    event_type: str,
    *,
    event_id: str | None = None,
    data: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """An event envelope ``{id, type, created, data}`` with fresh ids and current times.

    Checkout event types get a checkout session as ``data``; ``data`` overrides its fields.
    """
    now = now or datetime.now(UTC)
    session_id = "cs_" + secrets.token_hex(12)
    body: dict[str, Any]
    if event_type.startswith("checkout.session."):
        body = {
            "id": session_id,
            "url": f"https://checkout.loops.fi/{session_id}",
            "status": _SESSION_STATUS.get(event_type, "open"),
            "paymentLinkId": "pl_1234567890",
            "externalCustomerId": "customer_123",
            "metadata": {"orderId": "order_" + secrets.token_hex(6), "source": "loops-webhooks"},
            "createdAt": _iso(now - timedelta(minutes=5)),
        }
        if event_type == "checkout.session.completed":
            body["completedAt"] = _iso(now)
    else:
        body = {"id": "obj_" + secrets.token_hex(12)}
    body.update(data or {})
    return {
        "id": event_id or "evt_" + secrets.token_hex(12),
        "type": event_type,
        "created": _iso(now),
        "data": body,
    }
