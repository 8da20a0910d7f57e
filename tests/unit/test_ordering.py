"""Ordering per checkout session, admission's ``ordering`` gate: one run of a handler at a
time per session, the earliest-created due event first; run by fakeredis through lupa."""

import time

import orjson
import pytest
from fakeredis import FakeAsyncRedis

from loops_webhooks.handlers import Router
from loops_webhooks.handlers.router import Handler
from loops_webhooks.workers import keys
from loops_webhooks.workers.admission import Admission, limits_of
from loops_webhooks.workers.event_store import (
    Action,
    Begun,
    EventStore,
    HandlerState,
    HandlerStatus,
)
from loops_webhooks.workers.intake import EventIntake, ReceivedEvent
from loops_webhooks.workers.sessions import created_ms, session_id

QUEUE = "loops:queue"
SESSION = "cs_1"
T0 = 1_736_937_000_000


async def noop(event: object, ctx: object) -> None:
    pass


def handler(name: str = "fulfil") -> Handler:
    router = Router()
    router.on("checkout.session.*", name=name)(noop)
    return router.handlers[0]


FULFIL = handler()


def now_ms() -> int:
    return int(time.time() * 1000)


def job(event_id: str) -> str:
    return keys.job_id_for_event(event_id)


def store_of(redis: FakeAsyncRedis, *, ordering: bool = True) -> EventStore:
    return EventStore(
        redis, dedupe_ttl_seconds=3600, queue_name=QUEUE, slot_ttl_seconds=30, ordering=ordering
    )


@pytest.fixture
def store(redis: FakeAsyncRedis) -> EventStore:
    return store_of(redis)


async def record(
    redis: FakeAsyncRedis, event_id: str, created: int, session: str | None = SESSION
) -> None:
    event = ReceivedEvent(
        event_id,
        "checkout.session.completed",
        b"{}",
        {},
        now_ms(),
        session_id=session,
        created_ms=created,
    )
    assert await EventIntake(redis, queue_name=QUEUE).submit(event)


async def begin(
    store: EventStore, event_id: str, handlers: tuple[Handler, ...] = (FULFIL,)
) -> Begun:
    """``begin`` as a worker that claimed the event's job calls it (marker set)."""
    await store._redis.set(keys.arq_in_progress_key(job(event_id)), b"1", px=30_000)
    limits = [(h.name, 5, limits_of(h, ask_paused=False)) for h in handlers]
    begun = await store.begin(event_id, limits, now_ms(), job_id=job(event_id))
    assert begun is not None
    return begun


async def action(store: EventStore, event_id: str) -> Action:
    """What ``begin`` decides for ``fulfil`` on the event."""
    return (await begin(store, event_id)).actions["fulfil"][0]


async def finish(
    store: EventStore, begun: Begun, state: HandlerState | None = None, h: Handler = FULFIL
) -> int | None:
    """``finish`` as the dispatcher calls it: ``state`` for a run, nothing for a held one."""
    ran = begun.actions[h.name][0] is Action.RUN
    if ran and state is None:
        state = HandlerState(HandlerStatus.DONE, begun.actions[h.name][1].attempts)
    return await store.finish(
        begun.event,
        {h.name: state} if ran and state else {},
        [h.name],
        now_ms=now_ms(),
        settle_job=job(begun.event.event_id),
        admitted=Admission.settled([] if ran else [h], [h] if ran else []),
    )


async def due_now(redis: FakeAsyncRedis, event_id: str) -> bool:
    """Whether the event's job is due within a second or two (woken, or never held)."""
    score = await redis.zscore(QUEUE, job(event_id))
    return score is not None and score <= now_ms() + 2000


async def waits(redis: FakeAsyncRedis, event_id: str) -> bool:
    """Whether the event's job is due only at its recheck, 20 s or more from now."""
    score = await redis.zscore(QUEUE, job(event_id))
    return score is not None and score > now_ms() + 20_000


async def test_the_earliest_created_due_event_starts_first_whatever_arrived_first(
    store: EventStore, redis: FakeAsyncRedis
) -> None:
    await record(redis, "evt_completed", T0 + 2000)
    await record(redis, "evt_failed", T0 + 1000)

    later = await begin(store, "evt_completed")
    earlier = await begin(store, "evt_failed")

    assert later.actions["fulfil"][0] is Action.HELD
    assert later.actions["fulfil"][1].attempts == 0
    assert earlier.actions["fulfil"][0] is Action.RUN


async def test_a_running_event_holds_its_session_for_the_handler_until_it_finishes(
    store: EventStore, redis: FakeAsyncRedis
) -> None:
    await record(redis, "evt_completed", T0 + 2000)
    running = await begin(store, "evt_completed")
    await record(redis, "evt_failed", T0 + 1000)  # created first, arrived while the other ran
    held = await begin(store, "evt_failed")
    assert held.actions["fulfil"][0] is Action.HELD
    await finish(store, held)
    assert await waits(redis, "evt_failed")

    await finish(store, running)

    assert await due_now(redis, "evt_failed")
    assert await action(store, "evt_failed") is Action.RUN


async def test_the_end_of_a_run_wakes_only_the_earliest_waiter_of_the_handler(
    store: EventStore, redis: FakeAsyncRedis
) -> None:
    await record(redis, "evt_completed", T0 + 2000)
    running = await begin(store, "evt_completed")
    for event_id, created in (("evt_expired", T0 + 3000), ("evt_failed", T0 + 1000)):
        await record(redis, event_id, created)
        await finish(store, await begin(store, event_id))  # held, waiting

    await finish(store, running)

    assert await due_now(redis, "evt_failed")
    assert await waits(redis, "evt_expired")


async def test_an_earlier_event_no_handler_matches_wakes_the_later_one_when_it_finishes(
    store: EventStore, redis: FakeAsyncRedis
) -> None:
    await record(redis, "evt_failed", T0 + 1000)
    await record(redis, "evt_completed", T0 + 2000)
    held = await begin(store, "evt_completed")
    await finish(store, held)
    assert await waits(redis, "evt_completed")

    unhandled = await begin(store, "evt_failed", ())
    await store.finish(unhandled.event, {}, [], now_ms=now_ms(), settle_job=job("evt_failed"))

    assert await due_now(redis, "evt_completed")
    assert await action(store, "evt_completed") is Action.RUN


async def test_a_killed_workers_hold_on_a_session_lapses_with_its_in_progress_marker(
    store: EventStore, redis: FakeAsyncRedis
) -> None:
    await record(redis, "evt_completed", T0 + 2000)
    await begin(store, "evt_completed")
    await record(redis, "evt_expired", T0 + 3000)
    assert await action(store, "evt_expired") is Action.HELD

    await redis.delete(keys.arq_in_progress_key(job("evt_completed")))  # the marker lapsed
    # the killed run is due again and earliest: it goes first, in its own job's name
    assert await action(store, "evt_expired") is Action.HELD
    rerun = await begin(store, "evt_completed")
    assert rerun.actions["fulfil"][0] is Action.RUN
    await finish(store, rerun)
    assert await action(store, "evt_expired") is Action.RUN


async def test_a_killed_workers_hold_by_a_later_created_event_lapses_with_its_marker(
    store: EventStore, redis: FakeAsyncRedis
) -> None:
    await record(redis, "evt_completed", T0 + 2000)
    await begin(store, "evt_completed")
    await record(redis, "evt_failed", T0 + 1000)  # created first, arrived while the other ran
    assert await action(store, "evt_failed") is Action.HELD

    await redis.delete(keys.arq_in_progress_key(job("evt_completed")))  # the marker lapsed

    assert await action(store, "evt_failed") is Action.RUN


async def test_the_run_of_a_lone_event_of_a_session_writes_nothing_for_its_order(
    store: EventStore, redis: FakeAsyncRedis
) -> None:
    await record(redis, "evt_completed", T0 + 2000)
    await redis.set(keys.arq_in_progress_key(job("evt_completed")), b"1", px=30_000)
    before = set(await redis.keys())

    begun = await begin(store, "evt_completed")
    assert begun.actions["fulfil"][0] is Action.RUN
    assert set(await redis.keys()) == before
    await finish(store, begun)

    # finish removed the job's own keys; the session's list outlives the event with its record
    assert set(await redis.keys()) <= before
    assert await redis.pttl(keys.SESSION_EVENTS_PREFIX + SESSION) > 0


async def test_a_waiter_that_started_on_its_own_recheck_does_not_take_the_next_wake(
    store: EventStore, redis: FakeAsyncRedis
) -> None:
    await record(redis, "evt_completed", T0 + 2000)
    await begin(store, "evt_completed")
    await record(redis, "evt_failed", T0 + 1000)
    await finish(store, await begin(store, "evt_failed"))  # waits for the running one
    await redis.delete(keys.arq_in_progress_key(job("evt_completed")))  # its worker died
    rechecked = await begin(store, "evt_failed")  # at its recheck: the session is free
    assert rechecked.actions["fulfil"][0] is Action.RUN
    assert await action(store, "evt_completed") is Action.HELD  # taken over, waits now
    await finish(store, await begin(store, "evt_completed"))

    await finish(store, rechecked)

    assert await due_now(redis, "evt_completed")


async def test_an_event_waiting_for_a_scheduled_retry_does_not_hold_back_later_ones(
    store: EventStore, redis: FakeAsyncRedis
) -> None:
    await record(redis, "evt_failed", T0 + 1000)
    await record(redis, "evt_completed", T0 + 2000)
    flaky = await begin(store, "evt_failed")
    retry = HandlerState(HandlerStatus.RETRY, 1, next_attempt_at=now_ms() + 3_600_000)
    await finish(store, flaky, retry)

    assert await action(store, "evt_completed") is Action.RUN


async def test_a_run_that_ends_in_a_retry_wakes_the_later_event_that_waited_for_it(
    store: EventStore, redis: FakeAsyncRedis
) -> None:
    await record(redis, "evt_failed", T0 + 1000)
    flaky = await begin(store, "evt_failed")
    await record(redis, "evt_completed", T0 + 2000)
    await finish(store, await begin(store, "evt_completed"))  # held while the other runs

    retry = HandlerState(HandlerStatus.RETRY, 1, next_attempt_at=now_ms() + 3_600_000)
    await finish(store, flaky, retry)

    assert await due_now(redis, "evt_completed")
    assert await action(store, "evt_completed") is Action.RUN


async def test_superseded_by_names_the_later_event_the_handler_already_finished(
    store: EventStore, redis: FakeAsyncRedis
) -> None:
    await record(redis, "evt_completed", T0 + 2000)
    await finish(store, await begin(store, "evt_completed"))
    await record(redis, "evt_failed", T0 + 1000)
    await record(redis, "evt_expired", T0 + 3000)

    late_failed = await begin(store, "evt_failed")
    await finish(store, late_failed)
    late_expired = await begin(store, "evt_expired")

    assert late_failed.superseded_by == {"fulfil": "evt_completed"}
    assert late_expired.superseded_by == {}


async def test_superseded_by_counts_only_a_finished_run_of_the_same_handler(
    store: EventStore, redis: FakeAsyncRedis
) -> None:
    ship = handler("ship")
    await record(redis, "evt_completed", T0 + 2000)
    await finish(store, await begin(store, "evt_completed", (ship,)), h=ship)
    await record(redis, "evt_failed", T0 + 1000)

    assert (await begin(store, "evt_failed")).superseded_by == {}


async def test_an_earlier_event_the_handler_does_not_have_holds_nothing_back(
    store: EventStore, redis: FakeAsyncRedis
) -> None:
    ship = handler("ship")
    await record(redis, "evt_failed", T0 + 1000)
    await record(redis, "evt_completed", T0 + 2000)
    await begin(store, "evt_failed", (ship,))  # running 'ship' only

    assert await action(store, "evt_completed") is Action.RUN


async def test_events_of_other_sessions_or_of_none_are_not_held_back(
    store: EventStore, redis: FakeAsyncRedis
) -> None:
    await record(redis, "evt_a", T0 + 1000)
    await record(redis, "evt_b", T0 + 2000, session="cs_2")
    await record(redis, "evt_c", T0 + 500, session=None)
    await begin(store, "evt_a")

    assert await action(store, "evt_b") is Action.RUN
    no_session = await begin(store, "evt_c")
    assert no_session.actions["fulfil"][0] is Action.RUN


async def test_with_ordering_off_a_sessions_events_run_at_once_in_any_order(
    redis: FakeAsyncRedis,
) -> None:
    store = store_of(redis, ordering=False)
    await record(redis, "evt_completed", T0 + 2000)
    await record(redis, "evt_failed", T0 + 1000)

    later = await begin(store, "evt_completed")
    earlier = await begin(store, "evt_failed")

    assert [later.actions["fulfil"][0], earlier.actions["fulfil"][0]] == [Action.RUN] * 2


def test_the_session_id_is_data_id_when_it_is_a_usable_value() -> None:
    assert session_id({"data": {"id": "cs_1"}}) == "cs_1"
    assert session_id({"data": {"id": 42}}) == "42"
    assert session_id({"data": {"id": ""}}) is None
    assert session_id({"data": {"id": True}}) is None
    assert session_id({"data": {"id": "x" * 201}}) is None
    assert session_id({"data": "cs_1"}) is None
    assert session_id({}) is None


def test_created_is_read_as_iso_8601_else_the_receipt_time_stands_in() -> None:
    assert created_ms({"created": "2025-01-15T10:30:00Z"}, 7) == T0
    assert created_ms({"created": "2025-01-15T10:30:00"}, 7) == T0
    assert created_ms({"created": "2025-01-15T12:30:00+02:00"}, 7) == T0
    assert created_ms({"created": "yesterday"}, 7) == 7
    assert created_ms({"created": 1736937000}, 7) == 7
    assert created_ms({}, 7) == 7


async def test_intake_keeps_the_session_with_the_event_and_created_in_its_session_list(
    redis: FakeAsyncRedis,
) -> None:
    await record(redis, "evt_1", T0)
    await record(redis, "evt_2", T0, session=None)

    assert await redis.hmget(keys.event_key("evt_1"), ["session"]) == [SESSION.encode()]
    assert await redis.zscore(keys.session_events_key(SESSION), "evt_1") == T0
    assert await redis.zrange(keys.session_events_key(SESSION), 0, -1) == [b"evt_1"]
    assert await redis.hmget(keys.event_key("evt_2"), ["session"]) == [None]
    assert orjson.loads(await redis.hget(keys.event_key("evt_1"), "headers")) == {}
