import dataclasses
import hashlib
from datetime import UTC, datetime

import pytest
import structlog

from loops_webhooks.handlers import HandlerContext
from loops_webhooks.handlers.context import idempotency_key


def test_the_idempotency_key_is_the_truncated_sha256_of_event_id_and_handler_name() -> None:
    expected = hashlib.sha256(b"evt_abc123\x00shop:fulfil").hexdigest()[:32]

    assert idempotency_key("evt_abc123", "shop:fulfil") == expected


def test_the_idempotency_key_differs_between_handlers_of_one_event() -> None:
    assert idempotency_key("evt_1", "a") != idempotency_key("evt_1", "b")


def test_the_idempotency_key_cannot_collide_by_shifting_characters_between_its_parts() -> None:
    assert idempotency_key("evt_1a", "b") != idempotency_key("evt_1", "ab")


def test_a_handler_context_cannot_be_changed() -> None:
    ctx = HandlerContext(
        event_id="evt_1",
        event_type="checkout.session.completed",
        handler="shop:fulfil",
        attempt=1,
        idempotency_key=idempotency_key("evt_1", "shop:fulfil"),
        received_at=datetime(2025, 1, 15, tzinfo=UTC),
        log=structlog.get_logger(),
    )

    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.attempt = 2  # type: ignore[misc]
