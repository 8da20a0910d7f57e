"""The testing kit: events, contexts and signed requests as the worker and Loops make them, and
``run`` deciding each handler's outcome with the worker's own rules."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable

import orjson
import pydantic
import pytest
from structlog.testing import capture_logs

from loops_webhooks import HandlerContext, Reject, RetryLater, Router
from loops_webhooks.events import CheckoutSessionEvent, Event
from loops_webhooks.handlers.context import idempotency_key
from loops_webhooks.handlers.examples import router as example_router
from loops_webhooks.ingest.signature import SignatureVerifier
from loops_webhooks.settings import Settings
from loops_webhooks.testing import make_context, make_event, run, sign, signed_request

COMPLETED = "checkout.session.completed"


def test_a_checkout_event_is_a_checkout_session_event_with_a_fresh_id() -> None:
    first, second = make_event(COMPLETED), make_event(COMPLETED)

    assert isinstance(first, CheckoutSessionEvent)
    assert first.id.startswith("evt_") and first.id != second.id
    assert first.data.status == "completed"
    assert first.data.metadata["orderId"].startswith("order_")


@pytest.mark.parametrize("event_type", ["checkout.session.expired", "checkout.session.failed"])
def test_every_checkout_type_gets_the_checkout_model(event_type: str) -> None:
    assert isinstance(make_event(event_type), CheckoutSessionEvent)


def test_another_type_gets_the_generic_envelope() -> None:
    event = make_event("refund.created")

    assert type(event) is Event
    assert event.type == "refund.created"


def test_the_id_given_is_kept() -> None:
    assert make_event(COMPLETED, id="evt_mine").id == "evt_mine"


def test_a_data_key_replaces_the_default_whole() -> None:
    event = make_event(COMPLETED, data={"metadata": {}})

    assert isinstance(event, CheckoutSessionEvent)
    assert event.data.metadata == {}
    assert event.data.status == "completed"


def test_data_keys_are_wire_format_and_merged_shallowly() -> None:
    event = make_event(COMPLETED, data={"externalCustomerId": "cust_9", "metadata": {"a": 1}})

    assert isinstance(event, CheckoutSessionEvent)
    assert event.data.external_customer_id == "cust_9"
    assert event.data.metadata == {"a": 1}
    assert event.data.payment_link_id == "pl_1234567890"


def test_the_context_carries_the_idempotency_key_the_worker_would_give() -> None:
    event = make_event(COMPLETED)

    context = make_context(event, handler="shop:fulfil", attempt=3)

    assert context.idempotency_key == idempotency_key(event.id, "shop:fulfil")
    assert (context.event_id, context.event_type, context.attempt) == (event.id, COMPLETED, 3)
    assert make_context(event).handler == "tests:handler"


def test_a_context_is_superseded_only_when_the_test_says_by_which_event() -> None:
    event = make_event("checkout.session.expired")

    assert make_context(event).superseded_by is None
    assert make_context(event, superseded_by="evt_completed").superseded_by == "evt_completed"


async def test_run_passes_superseded_by_to_every_handler() -> None:
    seen: list[str | None] = []
    late = Router()

    @late.on("checkout.session.expired")
    async def cancel_order(event: Event, ctx: HandlerContext) -> None:
        seen.append(ctx.superseded_by)

    event = make_event("checkout.session.expired")
    await run(late, event)
    await run(late, event, superseded_by="evt_completed")

    assert seen == [None, "evt_completed"]


def test_sign_matches_the_rfc_4231_hmac_sha256_test_vector() -> None:
    expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"

    assert sign(b"what do ya want for nothing?", "Jefe") == expected


def test_sign_is_the_lowercase_hex_hmac_sha256_of_the_body() -> None:
    body = orjson.dumps({"id": "evt_1"})

    assert sign(body, "whsec_x") == hmac.new(b"whsec_x", body, hashlib.sha256).hexdigest()


def test_a_signed_request_is_accepted_by_the_receivers_verifier() -> None:
    event = make_event(COMPLETED)

    body, headers = signed_request(event, "whsec_x")

    SignatureVerifier([b"whsec_x"]).verify(body, [headers["loops-signature"]])
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body)["data"]["paymentLinkId"] == "pl_1234567890"
    assert CheckoutSessionEvent.model_validate_json(body) == event


def test_the_plugin_fixtures_build_events_and_contexts(
    loops_event: Callable[..., Event], loops_context: Callable[..., HandlerContext]
) -> None:
    event = loops_event(COMPLETED, data={"metadata": {}})

    assert loops_context(event, attempt=2).attempt == 2
    assert event.data.metadata == {}


router = Router()
calls: list[str] = []


@router.on(COMPLETED, name="ok")
async def ok(event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
    calls.append(f"ok {event.data.status} {ctx.attempt}")


@router.on(COMPLETED, name="flaky", max_attempts=2)
async def flaky(event: Event, ctx: HandlerContext) -> None:
    raise RuntimeError("warehouse down")


@router.on(COMPLETED, name="later")
def later(event: Event, ctx: HandlerContext) -> None:
    raise RetryLater(after=60, reason="rate limited")


@router.on(COMPLETED, name="reject")
async def reject(event: Event, ctx: HandlerContext) -> None:
    raise Reject("no such order")


@router.on("checkout.session.expired", name="not_for_completed")
async def not_for_completed(event: Event, ctx: HandlerContext) -> None:
    calls.append("expired")


@pytest.fixture(autouse=True)
def no_calls_yet() -> None:
    calls.clear()


async def test_run_reports_every_matching_handler_in_registration_order() -> None:
    results = await run(router, make_event(COMPLETED))

    assert [(r.handler, r.outcome) for r in results] == [
        ("ok", "done"),
        ("flaky", "retry"),
        ("later", "retry"),
        ("reject", "dead_letter"),
    ]
    assert calls == ["ok completed 1"]


async def test_a_done_handler_has_no_error_and_no_retry() -> None:
    [done, *_] = await run(router, make_event(COMPLETED))

    assert (done.error, done.retry_after) == (None, None)


async def test_an_exception_is_retried_within_the_default_backoff() -> None:
    flaky_result = (await run(router, make_event(COMPLETED)))[1]

    ceiling = Settings.model_fields["retry_base_seconds"].default
    assert isinstance(flaky_result.error, RuntimeError)
    assert flaky_result.retry_after is not None and 0 <= flaky_result.retry_after <= ceiling


async def test_an_exception_on_the_handlers_last_attempt_is_dead_lettered() -> None:
    flaky_result = (await run(router, make_event(COMPLETED), attempt=2))[1]

    assert (flaky_result.outcome, flaky_result.retry_after) == ("dead_letter", None)
    assert str(flaky_result.error) == "warehouse down"


async def test_retry_later_is_retried_after_its_delay_until_the_default_max_attempts() -> None:
    last = Settings.model_fields["max_attempts"].default

    early = (await run(router, make_event(COMPLETED), attempt=last - 1))[2]
    spent = (await run(router, make_event(COMPLETED), attempt=last))[2]

    assert (early.outcome, early.retry_after) == ("retry", 60)
    assert isinstance(early.error, RetryLater)
    assert (spent.outcome, spent.retry_after) == ("dead_letter", None)


async def test_reject_is_dead_lettered_with_its_reason() -> None:
    rejected = (await run(router, make_event(COMPLETED)))[3]

    assert isinstance(rejected.error, Reject)
    assert rejected.error.reason == "no such order"


async def test_a_handler_past_its_timeout_is_retried_with_a_timeout_error() -> None:
    slow = Router()

    @slow.on("*", name="slow", timeout=0.05)
    async def sleep(event: Event, ctx: HandlerContext) -> None:
        await asyncio.sleep(5)

    started = time.monotonic()
    [result] = await run(slow, make_event(COMPLETED))

    assert time.monotonic() - started < 2
    assert result.outcome == "retry"
    assert isinstance(result.error, TimeoutError)
    assert str(result.error) == "handler did not finish within 0.05s"


async def test_an_event_that_does_not_fit_the_handlers_model_is_dead_lettered() -> None:
    strict = Router()

    @strict.on("*", name="strict")
    async def handle(event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
        calls.append("ran")

    [result] = await run(strict, make_event("refund.created"))

    assert result.outcome == "dead_letter"
    assert isinstance(result.error, pydantic.ValidationError)
    assert calls == []


async def test_each_handler_gets_the_model_it_is_annotated_with() -> None:
    seen: list[type[Event]] = []
    models = Router()

    @models.on("*", name="generic")
    def generic(event: Event, ctx: HandlerContext) -> None:
        seen.append(type(event))

    @models.on("*", name="unannotated")
    async def unannotated(event, ctx):  # no annotation: the event type picks the model
        seen.append(type(event))

    await run(models, make_event(COMPLETED))

    assert sorted(model.__name__ for model in seen) == ["CheckoutSessionEvent", "Event"]


async def test_an_event_no_handler_matches_runs_nothing() -> None:
    assert await run(router, make_event("refund.created")) == []
    assert calls == []


@pytest.mark.parametrize(
    "event_type",
    ["checkout.session.completed", "checkout.session.expired", "checkout.session.failed"],
)
async def test_the_example_handlers_log_no_customer_id_nor_idempotency_key(
    event_type: str,
) -> None:
    event = make_event(event_type, data={"externalCustomerId": "cus_jane_doe"})
    keys = {idempotency_key(event.id, handler.name) for handler in example_router.handlers}

    with capture_logs() as logged:
        results = await run(example_router, event)

    assert [result.error for result in results] == [None]
    assert logged, "the example handler logs its outcome"
    values = {str(value) for entry in logged for value in entry.values()}
    assert "cus_jane_doe" not in values
    assert not values & keys
