"""Admission, the gates ``begin`` asks before an attempt and ``finish`` settles: pause,
concurrency and rate, run by fakeredis through lupa."""

import asyncio
import time

import orjson
import pytest
from fakeredis import FakeAsyncRedis

from loops_webhooks.handlers import Router
from loops_webhooks.handlers.router import Handler
from loops_webhooks.workers import admission, keys
from loops_webhooks.workers.admission import (
    PAUSED_RECHECK_SECONDS,
    PAUSED_REFRESH_SECONDS,
    Admission,
    HandlerNotLive,
    PausedHandlers,
    handler_flows,
    limits_of,
    pause_handler,
    register_live_handlers,
    resume_handler,
)
from loops_webhooks.workers.event_store import (
    Action,
    Begun,
    EventStore,
    HandlerState,
    HandlerStatus,
)
from loops_webhooks.workers.intake import EventIntake, ReceivedEvent

QUEUE = "loops:queue"


async def noop(event: object, ctx: object) -> None:
    pass


def handler(name: str = "erp", **limits: object) -> Handler:
    router = Router()
    router.on("checkout.session.completed", name=name, **limits)(noop)  # type: ignore[arg-type]
    return router.handlers[0]


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def store(redis: FakeAsyncRedis) -> EventStore:
    return EventStore(redis, dedupe_ttl_seconds=3600, queue_name=QUEUE, slot_ttl_seconds=30)


async def record(redis: FakeAsyncRedis, event_id: str, received_at_ms: int | None = None) -> None:
    event = ReceivedEvent(
        event_id,
        "checkout.session.completed",
        orjson.dumps({"id": event_id}),
        {},
        received_at_ms or now_ms(),
    )
    assert await EventIntake(redis, queue_name=QUEUE).submit(event)


async def begin(store: EventStore, event_id: str, h: Handler) -> Begun:
    begun = await store.begin(
        event_id,
        [(h.name, 5, limits_of(h, ask_paused=True))],
        now_ms(),
        job_id=keys.job_id_for_event(event_id),
    )
    assert begun is not None
    return begun


async def finish(
    store: EventStore,
    begun: Begun,
    h: Handler,
    *,
    ran: bool,
) -> int | None:
    _, state = begun.actions[h.name]
    done = HandlerState(status=HandlerStatus.DONE, attempts=state.attempts)
    states = {h.name: done} if ran else {}
    return await store.finish(
        begun.event,
        states,
        [h.name],
        now_ms=now_ms(),
        settle_job=keys.job_id_for_event(begun.event.event_id),
        admitted=Admission.settled([] if ran else [h], [h] if ran else []),
    )


async def begun_while_paused(redis: FakeAsyncRedis, store: EventStore) -> tuple[Handler, Begun]:
    """``evt_1`` begun while its handler ``erp`` is paused."""
    erp = handler()
    await record(redis, "evt_1")
    await pause_handler(redis, "erp", reason="ERP down", by="cli", force=True)
    return erp, await begin(store, "evt_1", erp)


async def test_a_paused_handler_is_held_without_counting_an_attempt(
    redis: FakeAsyncRedis, store: EventStore
) -> None:
    _, begun = await begun_while_paused(redis, store)

    action, state = begun.actions["erp"]
    assert action is Action.HELD
    assert state.attempts == 0


async def test_a_held_run_waits_on_the_handlers_list_and_its_job_is_due_much_later(
    redis: FakeAsyncRedis, store: EventStore
) -> None:
    erp, begun = await begun_while_paused(redis, store)

    next_due = await finish(store, begun, erp, ran=False)

    assert next_due is not None
    assert next_due >= now_ms() + (PAUSED_RECHECK_SECONDS - 5) * 1000
    flows = await handler_flows(redis, ["erp"])
    assert flows["erp"].waiting == 1
    assert flows["erp"].paused is not None


async def test_resume_puts_the_waiting_jobs_back_due_at_their_receipt_oldest_first(
    redis: FakeAsyncRedis, store: EventStore
) -> None:
    erp = handler()
    await pause_handler(redis, "erp", reason=None, by="cli", force=True)
    for index, event_id in enumerate(["evt_old", "evt_new"]):
        await record(redis, event_id, received_at_ms=1_000_000 + index)
        await finish(store, await begin(store, event_id, erp), erp, ran=False)

    resumed = await resume_handler(redis, "erp", queue_name=QUEUE)

    assert (resumed.was_paused, resumed.moved) == (True, 2)
    queued = await redis.zrange(QUEUE, 0, -1, withscores=True)
    assert queued == [(b"event:evt_old", 1_000_000.0), (b"event:evt_new", 1_000_001.0)]
    assert (await handler_flows(redis, ["erp"]))["erp"].waiting == 0
    begun = await begin(store, "evt_old", erp)
    assert begun.actions["erp"][0] is Action.RUN


async def test_a_resume_between_begin_and_finish_leaves_the_held_run_due_now(
    redis: FakeAsyncRedis, store: EventStore
) -> None:
    erp, begun = await begun_while_paused(redis, store)
    await resume_handler(redis, "erp", queue_name=QUEUE)

    next_due = await finish(store, begun, erp, ran=False)

    assert next_due is not None and next_due <= now_ms()
    assert (await handler_flows(redis, ["erp"]))["erp"].waiting == 0


async def test_a_concurrency_limit_holds_the_run_over_it_and_a_finished_run_promotes_it(
    redis: FakeAsyncRedis, store: EventStore
) -> None:
    erp = handler(concurrency=1)
    await record(redis, "evt_1")
    await record(redis, "evt_2")
    first = await begin(store, "evt_1", erp)
    second = await begin(store, "evt_2", erp)
    assert first.actions["erp"][0] is Action.RUN
    assert second.actions["erp"][0] is Action.HELD
    assert second.actions["erp"][1].attempts == 0
    held_until = await finish(store, second, erp, ran=False)
    assert held_until is not None and held_until > now_ms() + 20_000

    await finish(store, first, erp, ran=True)

    score = await redis.zscore(QUEUE, "event:evt_2")
    assert score is not None and score <= now_ms()
    assert await redis.zcard(keys.handler_slots_key("erp")) == 0
    assert (await begin(store, "evt_2", erp)).actions["erp"][0] is Action.RUN


async def test_a_slot_whose_worker_stopped_renewing_it_lapses(
    redis: FakeAsyncRedis, store: EventStore
) -> None:
    erp = handler(concurrency=1)
    await record(redis, "evt_1")
    await record(redis, "evt_2")
    await begin(store, "evt_1", erp)
    await redis.zadd(keys.handler_slots_key("erp"), {"event:evt_1": now_ms() - 1})

    assert (await begin(store, "evt_2", erp)).actions["erp"][0] is Action.RUN


async def test_a_rate_lets_n_starts_through_per_window_and_holds_the_next_until_it_frees(
    redis: FakeAsyncRedis, store: EventStore
) -> None:
    erp = handler(rate="2/m")
    for event_id in ("evt_1", "evt_2", "evt_3"):
        await record(redis, event_id)
    started = now_ms()
    actions = [(await begin(store, e, erp)).actions["erp"][0] for e in ("evt_1", "evt_2")]
    third = await begin(store, "evt_3", erp)

    assert actions == [Action.RUN, Action.RUN]
    assert third.actions["erp"][0] is Action.HELD
    due = await finish(store, third, erp, ran=False)
    assert due is not None and started + 59_000 <= due <= now_ms() + 60_000


async def test_a_handler_without_limits_that_is_not_paused_travels_as_an_empty_argument() -> None:
    assert limits_of(handler(), ask_paused=False) == b""
    assert Admission.settled([], [handler()]) == b""


async def test_a_handler_the_worker_does_not_take_to_be_paused_is_not_asked_about(
    redis: FakeAsyncRedis, store: EventStore
) -> None:
    erp = handler()
    await record(redis, "evt_1")
    await pause_handler(redis, "erp", reason=None, by="cli", force=True)

    begun = await store.begin(
        "evt_1", [("erp", 5, limits_of(erp, ask_paused=False))], now_ms(), job_id="event:evt_1"
    )

    assert begun is not None and begun.actions["erp"][0] is Action.RUN


async def read_done(view: PausedHandlers, expected: frozenset[str]) -> None:
    """Let the view's background read finish (fakeredis answers within a few loop turns)."""
    for _ in range(1000):
        if view.names() == expected:
            return
        await asyncio.sleep(0)


async def test_the_workers_view_of_paused_handlers_asks_about_all_until_read_then_reads_again(
    redis: FakeAsyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(admission.time, "monotonic", lambda: clock[0])
    view = PausedHandlers(redis)
    await pause_handler(redis, "erp", reason=None, by="cli", force=True)

    assert view.names() is None  # not read yet: every pause is asked about
    await read_done(view, frozenset({"erp"}))
    assert view.names() == {"erp"}
    await resume_handler(redis, "erp", queue_name=QUEUE)
    clock[0] += PAUSED_REFRESH_SECONDS / 2
    await read_done(view, frozenset())
    assert view.names() == {"erp"}  # fresh enough: not read again
    clock[0] += PAUSED_REFRESH_SECONDS
    await read_done(view, frozenset())
    assert view.names() == frozenset()


async def test_pausing_a_name_no_running_worker_registered_is_refused_unless_forced(
    redis: FakeAsyncRedis,
) -> None:
    await register_live_handlers(redis, [handler("erp")])

    with pytest.raises(HandlerNotLive):
        await pause_handler(redis, "epr", reason=None, by="cli")
    pause, made = await pause_handler(redis, "erp", reason="down", by="token")
    assert made and pause.reason == "down" and pause.by == "token"
    _, made_again = await pause_handler(redis, "epr", reason=None, by="cli", force=True)
    assert made_again


async def test_pausing_a_paused_handler_keeps_the_first_pause(redis: FakeAsyncRedis) -> None:
    first, _ = await pause_handler(redis, "erp", reason="first", by="cli", force=True)

    kept, made = await pause_handler(redis, "erp", reason="second", by="cli", force=True)

    assert not made
    assert (kept.reason, kept.since_ms) == ("first", first.since_ms)
