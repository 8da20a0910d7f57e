"""Events as Loops sends them: the envelope and its ``loops-signature``, signed with ``hmac``
directly rather than with the code under test."""

from __future__ import annotations

import hashlib
import hmac
import uuid

import orjson

WEBHOOK_SECRET = "whsec_test_5b8f0c2e9a1d4e7f"


class LoopsSender:
    """Builds what Loops sends: an event envelope (see the seed doc) and its signature."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def event(
        self, event_id: str | None = None, event_type: str = "checkout.session.completed"
    ) -> bytes:
        """A JSON event body; a fresh ``evt_...`` id unless one is given, and a checkout
        session of its own (so admission runs events of different ids side by side)."""
        event_id = event_id or f"evt_{uuid.uuid4().hex}"
        session_id = "cs_" + event_id.removeprefix("evt_")
        return orjson.dumps(
            {
                "id": event_id,
                "type": event_type,
                "created": "2025-01-15T10:35:00Z",
                "data": {
                    "id": session_id,
                    "url": f"https://checkout.loops.fi/{session_id}",
                    "status": "completed",
                    "paymentLinkId": "pl_1234567890",
                    "externalCustomerId": "customer_123",
                    "metadata": {"orderId": "order_456", "source": "website"},
                    "createdAt": "2025-01-15T10:30:00Z",
                    "completedAt": "2025-01-15T10:35:00Z",
                },
            }
        )

    def signature(self, body: bytes) -> str:
        return hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()

    def headers(self, body: bytes) -> dict[str, str]:
        return {"content-type": "application/json", "loops-signature": self.signature(body)}
