import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from loops_webhooks.handlers.events import (
    CHECKOUT_SESSION_EVENT_TYPES,
    CheckoutSession,
    CheckoutSessionEvent,
    Event,
    model_for,
    parse_event,
)

# The "Webhook Event Structure" sample from the Loops API doc.
SAMPLE_EVENT = b"""{
  "id": "evt_abc123",
  "type": "checkout.session.completed",
  "created": "2025-01-15T10:35:00Z",
  "data": {
    "id": "cs_abc123",
    "url": "https://checkout.loops.fi/cs_abc123",
    "status": "completed",
    "paymentLinkId": "pl_1234567890",
    "externalCustomerId": "customer_123",
    "metadata": {
      "orderId": "order_456",
      "source": "website"
    },
    "createdAt": "2025-01-15T10:30:00Z",
    "completedAt": "2025-01-15T10:35:00Z"
  }
}"""


def sample(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(SAMPLE_EVENT)
    event.update(changes)
    return event


def test_the_documented_sample_parses_into_snake_case_attributes() -> None:
    event = parse_event(SAMPLE_EVENT, CheckoutSessionEvent)

    session = event.data
    assert (event.id, event.type) == ("evt_abc123", "checkout.session.completed")
    assert event.created == datetime(2025, 1, 15, 10, 35, tzinfo=UTC)
    assert session.id == "cs_abc123"
    assert session.url == "https://checkout.loops.fi/cs_abc123"
    assert session.status == "completed"
    assert session.payment_link_id == "pl_1234567890"
    assert session.external_customer_id == "customer_123"
    assert session.metadata == {"orderId": "order_456", "source": "website"}
    assert session.created_at == datetime(2025, 1, 15, 10, 30, tzinfo=UTC)
    assert session.completed_at == datetime(2025, 1, 15, 10, 35, tzinfo=UTC)


def test_unknown_envelope_fields_are_kept() -> None:
    raw = json.dumps(sample(livemode=True, apiVersion="2025-01-01")).encode()

    event = parse_event(raw, CheckoutSessionEvent)

    assert event.model_extra == {"livemode": True, "apiVersion": "2025-01-01"}


def test_unknown_checkout_session_fields_are_kept() -> None:
    event = sample()
    event["data"]["amountTotal"] = 4200

    session = parse_event(json.dumps(event).encode(), CheckoutSessionEvent).data

    assert session.model_extra == {"amountTotal": 4200}


def test_a_checkout_session_needs_only_an_id_and_a_status() -> None:
    raw = json.dumps(sample(data={"id": "cs_1", "status": "expired"})).encode()

    session = parse_event(raw, CheckoutSessionEvent).data

    assert session.payment_link_id is None
    assert session.completed_at is None
    assert session.metadata == {}


@pytest.mark.parametrize("missing", ["id", "status"])
def test_a_checkout_session_without_a_required_field_is_invalid(missing: str) -> None:
    event = sample()
    del event["data"][missing]

    with pytest.raises(ValidationError, match=f"data.{missing}"):
        parse_event(json.dumps(event).encode(), CheckoutSessionEvent)


def test_malformed_json_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        parse_event(b"{not json", Event)


def test_an_event_of_an_unknown_type_parses_into_the_generic_envelope() -> None:
    raw = json.dumps(sample(type="refund.created", data={"refundId": "re_1"})).encode()

    event = parse_event(raw, model_for("refund.created"))

    assert type(event) is Event
    assert event.data == {"refundId": "re_1"}


@pytest.mark.parametrize("event_type", sorted(CHECKOUT_SESSION_EVENT_TYPES))
def test_checkout_session_events_map_to_the_checkout_session_model(event_type: str) -> None:
    assert model_for(event_type) is CheckoutSessionEvent


@pytest.mark.parametrize("event_type", ["checkout.session.created", "refund.created", ""])
def test_other_event_types_map_to_the_generic_envelope(event_type: str) -> None:
    assert model_for(event_type) is Event


def test_the_checkout_session_event_types_are_the_three_documented_ones() -> None:
    assert {
        "checkout.session.completed",
        "checkout.session.expired",
        "checkout.session.failed",
    } == CHECKOUT_SESSION_EVENT_TYPES


def test_a_checkout_session_can_be_built_by_field_name_and_dumps_in_camel_case() -> None:
    session = CheckoutSession(id="cs_1", status="open", payment_link_id="pl_1")

    assert session.model_dump(by_alias=True, exclude_none=True) == {
        "id": "cs_1",
        "status": "open",
        "paymentLinkId": "pl_1",
        "metadata": {},
    }
