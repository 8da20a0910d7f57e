"""The event store's two Lua steps, ``begin`` and ``finish``, run by fakeredis through lupa."""

import time
from collections.abc import AsyncIterator
from dataclasses import replace

import fakeredis
import orjson
import pytest

from loops_webhooks.workers import keys
from loops_webhooks.workers.dead_letters import (
    DeadLetter,
    DeadLetterReason,
    get_dead_letter,
)
from loops_webhooks.workers.event_store import (
    Action,
    EventStatus,
    EventStore,
    HandlerState,
    HandlerStatus,
    StoredEvent,
)
from loops_webhooks.workers.intake import EventIntake, ReceivedEvent
from loops_webhooks.workers.keys import dead_letter_id

QUEUE = "loops:queue"
DEDUPE_TTL_SECONDS = 3600
HEADERS = {"loops-signature": "abc", "content-type": "application/json"}


@pytest.fixture
async def redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


@pytest.fixture
def store(redis: fakeredis.FakeAsyncRedis) -> EventStore:
    return EventStore(redis, dedupe_ttl_seconds=DEDUPE_TTL_SECONDS)


def now_ms() -> int:
    return int(time.time() * 1000)


async def record(redis: fakeredis.FakeAsyncRedis, event_id: str = "evt_1") -> ReceivedEvent:
    event = ReceivedEvent(
        event_id=event_id,
        event_type="checkout.session.completed",
        raw=orjson.dumps({"id": event_id, "type": "checkout.session.completed"}),
        headers=HEADERS,
        received_at_ms=now_ms(),
    )
    assert await EventIntake(redis, queue_name=QUEUE).submit(event)
    return event


async def begun_event(store: EventStore, event_id: str = "evt_1") -> StoredEvent:
    begun = await store.begin(event_id, [], now_ms())
    assert begun is not None
    return begun.event


async def test_begin_finds_nothing_for_an_event_that_is_not_stored(store: EventStore) -> None:
    assert await store.begin("evt_missing", [("a", 3, b"")], now_ms()) is None


async def test_begin_returns_the_event_as_it_was_recorded(redis, store: EventStore) -> None:
    received = await record(redis)

    begun = await store.begin("evt_1", [], now_ms())

    assert begun is not None
    assert begun.event.raw == received.raw
    assert begun.event.event_type == received.event_type
    assert begun.event.headers == HEADERS
    assert begun.event.received_at_ms == received.received_at_ms
    assert begun.event.status is EventStatus.PENDING


async def test_begin_counts_an_attempt_and_marks_the_handler_running(
    redis, store: EventStore
) -> None:
    await record(redis)
    started = now_ms()

    begun = await store.begin("evt_1", [("a", 3, b"")], started)

    assert begun is not None
    action, state = begun.actions["a"]
    assert action is Action.RUN
    assert state.status is HandlerStatus.RUNNING
    assert state.attempts == 1
    assert state.first_attempt_at == state.last_attempt_at == started
    stored = await store.get("evt_1")
    assert stored is not None
    assert stored.handlers["a"] == state


async def test_begin_counts_attempts_separately_for_each_handler(redis, store: EventStore) -> None:
    await record(redis)
    await store.begin("evt_1", [("a", 5, b"")], now_ms())

    begun = await store.begin("evt_1", [("a", 5, b""), ("b", 5, b"")], now_ms())

    assert begun is not None
    assert begun.actions["a"][1].attempts == 2
    assert begun.actions["b"][1].attempts == 1


async def test_begin_keeps_the_first_attempt_time_across_attempts(redis, store: EventStore) -> None:
    await record(redis)
    await store.begin("evt_1", [("a", 5, b"")], 1_000)

    begun = await store.begin("evt_1", [("a", 5, b"")], 2_000)

    assert begun is not None
    state = begun.actions["a"][1]
    assert (state.first_attempt_at, state.last_attempt_at) == (1_000, 2_000)


async def test_begin_waits_for_a_retry_that_is_not_due_yet_without_counting_an_attempt(
    redis, store: EventStore
) -> None:
    await record(redis)
    event = await begun_event(store)
    due = now_ms() + 60_000
    retry = HandlerState(status=HandlerStatus.RETRY, attempts=1, next_attempt_at=due)
    await store.finish(event, {"a": retry}, ["a"], now_ms=now_ms())

    begun = await store.begin("evt_1", [("a", 5, b"")], now_ms())

    assert begun is not None
    assert begun.actions["a"] == (Action.WAIT, retry)


async def test_begin_runs_a_retry_once_it_is_due(redis, store: EventStore) -> None:
    await record(redis)
    event = await begun_event(store)
    retry = HandlerState(status=HandlerStatus.RETRY, attempts=1, next_attempt_at=now_ms() - 1)
    await store.finish(event, {"a": retry}, ["a"], now_ms=now_ms())

    begun = await store.begin("evt_1", [("a", 5, b"")], now_ms())

    assert begun is not None
    action, state = begun.actions["a"]
    assert (action, state.attempts, state.next_attempt_at) == (Action.RUN, 2, None)


@pytest.mark.parametrize("final", [HandlerStatus.DONE, HandlerStatus.DEAD])
async def test_begin_skips_a_handler_whose_outcome_is_final(
    redis, store: EventStore, final: HandlerStatus
) -> None:
    await record(redis)
    event = await begun_event(store)
    await store.finish(
        event,
        {"a": HandlerState(status=final, attempts=1)},
        ["a", "b"],
        now_ms=now_ms(),
    )

    begun = await store.begin("evt_1", [("a", 5, b""), ("b", 5, b"")], now_ms())

    assert begun is not None
    assert begun.actions["a"][0] is Action.SKIP
    assert begun.actions["a"][1].attempts == 1
    assert begun.actions["b"][0] is Action.RUN


async def test_begin_reports_spent_attempts_without_counting_another(
    redis, store: EventStore
) -> None:
    await record(redis)
    await store.begin("evt_1", [("a", 2, b"")], now_ms())
    await store.begin("evt_1", [("a", 2, b"")], now_ms())

    begun = await store.begin("evt_1", [("a", 2, b"")], now_ms())

    assert begun is not None
    action, state = begun.actions["a"]
    assert (action, state.attempts, state.status) == (
        Action.EXHAUSTED,
        2,
        HandlerStatus.RUNNING,
    )


async def test_begin_counts_nothing_on_an_event_that_is_already_finished(
    redis, store: EventStore
) -> None:
    await record(redis)
    event = await begun_event(store)
    await store.finish(event, {}, [], now_ms=now_ms())

    begun = await store.begin("evt_1", [("a", 5, b"")], now_ms())

    assert begun is not None
    assert begun.event.status is EventStatus.DONE
    assert begun.actions == {}
    stored = await store.get("evt_1")
    assert stored is not None
    assert stored.handlers == {}


async def test_finish_returns_the_earliest_retry_and_leaves_the_event_pending(
    redis, store: EventStore
) -> None:
    await record(redis)
    event = await begun_event(store)
    soon, later = now_ms() + 5_000, now_ms() + 50_000
    states = {
        "a": HandlerState(status=HandlerStatus.RETRY, attempts=1, next_attempt_at=later),
        "b": HandlerState(status=HandlerStatus.RETRY, attempts=1, next_attempt_at=soon),
        "c": HandlerState(status=HandlerStatus.DONE, attempts=1),
    }

    next_due = await store.finish(event, states, ["a", "b", "c"], now_ms=now_ms())

    assert next_due == soon
    stored = await store.get("evt_1")
    assert stored is not None
    assert stored.status is EventStatus.PENDING
    assert await redis.zscore(keys.PENDING_EVENTS, "evt_1") is not None


async def test_finish_marks_a_handler_with_no_recorded_state_as_due_now(
    redis, store: EventStore
) -> None:
    await record(redis)
    event = await begun_event(store)
    done = HandlerState(status=HandlerStatus.DONE, attempts=1)

    next_due = await store.finish(event, {"a": done}, ["a", "never-begun"], now_ms=now_ms())

    assert next_due == 0


async def test_finish_closes_the_event_when_every_handler_is_done(redis, store: EventStore) -> None:
    received = await record(redis)
    event = await begun_event(store)
    finished_at = now_ms()
    done = HandlerState(status=HandlerStatus.DONE, attempts=1)

    next_due = await store.finish(event, {"a": done, "b": done}, ["a", "b"], now_ms=finished_at)

    assert next_due is None
    stored = await store.get("evt_1")
    assert stored is not None
    assert (stored.status, stored.finished_at_ms) == (EventStatus.DONE, finished_at)
    assert await redis.zscore(keys.PENDING_EVENTS, "evt_1") is None
    expires_at = await redis.pexpiretime(keys.event_key("evt_1"))
    assert expires_at == received.received_at_ms + DEDUPE_TTL_SECONDS * 1000


async def test_finish_records_an_outcome_for_the_event_when_given_one(
    redis, store: EventStore
) -> None:
    await record(redis)
    event = await begun_event(store)

    await store.finish(event, {}, [], now_ms=now_ms(), outcome="unhandled")

    stored = await store.get("evt_1")
    assert stored is not None
    assert (stored.status, stored.outcome) == (EventStatus.DONE, "unhandled")


async def test_a_dead_handler_closes_the_event_as_dead_and_it_never_expires(
    redis, store: EventStore
) -> None:
    await record(redis)
    event = await begun_event(store)
    states = {
        "a": HandlerState(status=HandlerStatus.DONE, attempts=1),
        "b": HandlerState(status=HandlerStatus.DEAD, attempts=3, last_error="ValueError: no"),
    }

    await store.finish(event, states, ["a", "b"], now_ms=now_ms())

    stored = await store.get("evt_1")
    assert stored is not None
    assert stored.status is EventStatus.DEAD
    assert stored.handlers["b"] == states["b"]
    assert await redis.pttl(keys.event_key("evt_1")) == -1
    assert await redis.zscore(keys.PENDING_EVENTS, "evt_1") is None


async def test_a_dead_letter_keeps_the_raw_event_its_headers_and_receipt_time(
    redis, store: EventStore
) -> None:
    received = await record(redis)
    event = await begun_event(store)
    letter = DeadLetter(
        id=dead_letter_id("evt_1", "b"),
        reason=DeadLetterReason.REJECTED,
        event_id="evt_1",
        handler="b",
        error_type="Reject",
        error_message="no order",
        traceback="Traceback ...",
        attempts=1,
        first_attempt_at=10,
        last_attempt_at=10,
        dead_lettered_at=20,
    )
    dead = HandlerState(status=HandlerStatus.DEAD, attempts=1)

    await store.finish(event, {"b": dead}, ["b"], [letter], now_ms=now_ms())

    stored = await get_dead_letter(redis, letter.id)
    assert stored == replace(
        letter,
        raw=received.raw,
        headers=orjson.dumps(HEADERS).decode(),
        received_at=received.received_at_ms,
        event_type=received.event_type,
    )
    assert await redis.zscore(keys.DEAD_LETTER_INDEX, letter.id) is not None
    assert await redis.ttl(keys.dead_letter_key(letter.id)) == -1


async def test_finishing_an_event_that_was_purged_writes_nothing(redis, store: EventStore) -> None:
    await record(redis)
    event = await begun_event(store)
    await redis.delete(keys.event_key("evt_1"))
    before = sorted(await redis.keys("*"))

    next_due = await store.finish(
        event, {"a": HandlerState(status=HandlerStatus.DONE)}, ["a"], now_ms=now_ms()
    )

    assert next_due is None
    assert sorted(await redis.keys("*")) == before


async def test_a_handler_state_with_awkward_text_survives_the_round_trip_through_lua(
    redis, store: EventStore
) -> None:
    await record(redis)
    event = await begun_event(store)
    error = 'KeyError: "orderId" \\ ünïcödé \n line two'
    retry = HandlerState(
        status=HandlerStatus.RETRY,
        attempts=1,
        first_attempt_at=now_ms(),
        last_attempt_at=now_ms(),
        next_attempt_at=now_ms() - 1,
        last_error=error,
        duration_ms=12.345,
    )
    await store.finish(event, {"a": retry}, ["a"], now_ms=now_ms())

    begun = await store.begin("evt_1", [("a", 5, b"")], now_ms())

    assert begun is not None
    state = begun.actions["a"][1]
    assert (state.last_error, state.duration_ms) == (error, 12.345)
