"""The operator's Python API on fakeredis (Lua through lupa): pages, filters, replay, purge."""

from __future__ import annotations

import time

import orjson
import pytest
from fakeredis import FakeAsyncRedis

from loops_webhooks.workers import keys
from loops_webhooks.workers.dead_letters import DeadLetter, DeadLetterReason
from loops_webhooks.workers.event_store import EventStatus, EventStore, HandlerState, HandlerStatus
from loops_webhooks.workers.intake import EventIntake, ReceivedEvent, received_event
from loops_webhooks.workers.operator_api import (
    DeadLetterFilter,
    EventFilter,
    InvalidCursor,
    NotFound,
    OperatorApi,
)

QUEUE = "loops:queue"
TYPE = "checkout.session.completed"
DAY = 86_400


def operator_api(redis: FakeAsyncRedis) -> OperatorApi:
    """The API as the CLI builds it from the default settings (the unit tests' one)."""
    return OperatorApi(
        redis,
        queue_name=QUEUE,
        dedupe_ttl_seconds=DAY,
        replay_history_limit=10,
        search_metadata_keys=("orderId",),
    )


@pytest.fixture
def api(redis: FakeAsyncRedis) -> OperatorApi:
    return operator_api(redis)


async def receive(redis: FakeAsyncRedis, event_id: str, received_at: int) -> None:
    raw = orjson.dumps({"id": event_id, "type": TYPE})
    event = ReceivedEvent(event_id, TYPE, raw, {}, received_at)
    assert await EventIntake(redis, queue_name=QUEUE).submit(event)


async def dead_letter(
    redis: FakeAsyncRedis,
    event_id: str,
    handlers: list[str],
    *,
    now: int,
    done: tuple[str, ...] = (),
) -> None:
    """Record ``handlers`` of a stored event as dead-lettered at ``now`` (one score for all),
    and ``done`` as succeeded."""
    store = EventStore(redis, dedupe_ttl_seconds=DAY)
    stored = await store.get(event_id)
    assert stored is not None
    states = {name: HandlerState(status=HandlerStatus.DONE, attempts=1) for name in done}
    letters = []
    for name in handlers:
        states[name] = HandlerState(status=HandlerStatus.DEAD, attempts=3, last_error="boom")
        letters.append(
            DeadLetter(
                id=keys.dead_letter_id(event_id, name),
                reason=DeadLetterReason.MAX_ATTEMPTS,
                event_id=event_id,
                handler=name,
                attempts=3,
                dead_lettered_at=now,
            )
        )
    await store.finish(stored, states, [*done, *handlers], letters, now_ms=now)


async def every_page(api: OperatorApi, where: DeadLetterFilter, limit: int) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = await api.list_dead_letters(where, limit=limit, cursor=cursor)
        ids += [letter.id for letter in page.items]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


async def test_pages_of_dead_letters_cover_each_once_newest_first_even_when_times_tie(
    redis: FakeAsyncRedis, api: OperatorApi
) -> None:
    await receive(redis, "evt_tied", 1_000)
    await dead_letter(redis, "evt_tied", [f"h{n:02}" for n in range(10)], now=5_000)
    for n in range(5):
        await receive(redis, f"evt_{n}", 2_000 + n)
        await dead_letter(redis, f"evt_{n}", ["solo"], now=6_000 + n)

    ids = await every_page(api, DeadLetterFilter(), limit=4)

    everything = await redis.zrevrange(keys.DEAD_LETTER_INDEX, 0, -1)
    assert ids == [member.decode() for member in everything]
    assert len(ids) == len(set(ids)) == 15


async def test_a_filter_applies_across_pages(redis: FakeAsyncRedis, api: OperatorApi) -> None:
    for n in range(7):
        await receive(redis, f"evt_{n}", 1_000 + n)
        await dead_letter(redis, f"evt_{n}", ["fulfil", "audit"], now=2_000 + n)

    ids = await every_page(api, DeadLetterFilter(handler="audit"), limit=3)

    assert ids == [keys.dead_letter_id(f"evt_{n}", "audit") for n in reversed(range(7))]


async def test_since_keeps_only_letters_dead_lettered_from_then(
    redis: FakeAsyncRedis, api: OperatorApi
) -> None:
    for n in range(4):
        await receive(redis, f"evt_{n}", 1_000 + n)
        await dead_letter(redis, f"evt_{n}", ["fulfil"], now=2_000 + n)

    page = await api.list_dead_letters(DeadLetterFilter(since_ms=2_002))

    assert [letter.event_id for letter in page.items] == ["evt_3", "evt_2"]
    assert page.next_cursor is None


async def test_since_holds_too_when_letters_are_found_by_customer(
    redis: FakeAsyncRedis, api: OperatorApi
) -> None:
    for n in range(4):
        document = {"id": f"evt_{n}", "type": TYPE, "data": {"externalCustomerId": "c_1"}}
        event = received_event(
            f"evt_{n}", TYPE, orjson.dumps(document), {}, 1_000 + n, document, metadata_keys=()
        )
        assert await EventIntake(redis, queue_name=QUEUE).submit(event)
        await dead_letter(redis, f"evt_{n}", ["fulfil", "audit"], now=2_000 + n)

    where = DeadLetterFilter(customer_id="c_1", since_ms=2_002)
    ids = await every_page(api, where, limit=3)

    assert sorted(ids) == sorted(
        keys.dead_letter_id(f"evt_{n}", handler) for n in (2, 3) for handler in ("fulfil", "audit")
    )


async def test_events_are_listed_newest_first_by_status_and_expired_ones_are_skipped(
    redis: FakeAsyncRedis, api: OperatorApi
) -> None:
    now = int(time.time() * 1000)
    for n in range(4):
        await receive(redis, f"evt_{n}", now + n)
    await dead_letter(redis, "evt_1", ["fulfil"], now=now + 10)
    await redis.delete(keys.event_key("evt_2"))

    everything = await api.list_events()
    pending = await api.list_events(EventFilter(status=EventStatus.PENDING))

    assert [event.id for event in everything.items] == ["evt_3", "evt_1", "evt_0"]
    assert [event.id for event in pending.items] == ["evt_3", "evt_0"]
    assert everything.items[1].status is EventStatus.DEAD


async def test_a_cursor_not_made_by_the_api_is_refused(api: OperatorApi) -> None:
    with pytest.raises(InvalidCursor):
        await api.list_events(cursor="not a cursor")


async def test_an_unknown_event_or_letter_is_not_found(api: OperatorApi) -> None:
    with pytest.raises(NotFound):
        await api.get_event("evt_missing")
    with pytest.raises(NotFound):
        await api.select_dead_letters(["evt_missing:fulfil"])


async def test_an_event_id_selects_every_letter_of_that_event_once(
    redis: FakeAsyncRedis, api: OperatorApi
) -> None:
    await receive(redis, "evt_1", 1_000)
    await dead_letter(redis, "evt_1", ["fulfil", "audit"], now=2_000)
    await receive(redis, "evt_2", 1_000)
    await dead_letter(redis, "evt_2", ["fulfil"], now=2_000)
    fulfil_1 = keys.dead_letter_id("evt_1", "fulfil")

    selected = await api.select_dead_letters(["evt_1", fulfil_1])

    assert sorted(letter.id for letter in selected) == sorted(
        [keys.dead_letter_id("evt_1", "audit"), fulfil_1]
    )
    with pytest.raises(NotFound, match="no event 'evt_3' with dead letters"):
        await api.select_dead_letters(["evt_2", "evt_3"])


async def test_a_letter_replayed_by_a_concurrent_run_is_reported_gone_not_failed(
    redis: FakeAsyncRedis, api: OperatorApi
) -> None:
    await receive(redis, "evt_1", 1_000)
    await dead_letter(redis, "evt_1", ["fulfil"], now=2_000)
    letters = await api.select_dead_letters(where=DeadLetterFilter())

    first = await api.replay_dead_letters(letters)
    second = await api.replay_dead_letters(letters)

    assert first.replayed == [keys.dead_letter_id("evt_1", "fulfil")] and first.gone == []
    assert second.replayed == [] and second.gone == first.replayed


async def test_a_letter_dead_lettered_again_since_it_was_read_is_not_replayed_twice(
    redis: FakeAsyncRedis, api: OperatorApi
) -> None:
    await receive(redis, "evt_1", 1_000)
    await dead_letter(redis, "evt_1", ["fulfil"], now=2_000)
    read_before = await api.select_dead_letters(where=DeadLetterFilter())
    await api.replay_dead_letters(read_before)
    await dead_letter(redis, "evt_1", ["fulfil"], now=3_000)

    stale = await api.replay_dead_letters(read_before)

    assert stale.gone == [read_before[0].id]
    assert [letter.dead_lettered_at for letter in await api.dead_letters_of_event("evt_1")] == [
        3_000
    ]


async def test_a_replay_keeps_the_replaced_attempts_in_the_events_history(
    redis: FakeAsyncRedis, api: OperatorApi
) -> None:
    await receive(redis, "evt_1", 1_000)
    await dead_letter(redis, "evt_1", ["fulfil"], done=("audit",), now=2_000)

    await api.replay_dead_letters(await api.dead_letters_of_event("evt_1"))

    event = await api.get_event("evt_1")
    assert event.status is EventStatus.PENDING
    assert event.handlers["fulfil"] == HandlerState(), "a fresh pending state, owed a run"
    assert event.handlers["audit"].status is HandlerStatus.DONE
    assert [(s.status, s.attempts, s.last_error) for s in event.history["fulfil"]] == [
        (HandlerStatus.DEAD, 3, "boom")
    ]


async def test_purge_lets_a_dead_event_expire_only_once_its_last_letter_is_gone(
    redis: FakeAsyncRedis, api: OperatorApi
) -> None:
    await receive(redis, "evt_1", 1_000)
    await dead_letter(redis, "evt_1", ["fulfil", "audit"], now=2_000)
    fulfil, audit = sorted(await api.dead_letters_of_event("evt_1"), key=lambda x: x.handler)

    assert await api.purge_dead_letters([audit]) == 1
    assert await redis.ttl(keys.event_key("evt_1")) == -1
    assert await api.purge_dead_letters([fulfil, fulfil]) == 1
    assert 0 < await redis.ttl(keys.event_key("evt_1")) <= DAY
    assert await api.dead_letters_of_event("evt_1") == []


async def test_dead_letters_by_reason_are_counted_as_letters_come_and_go(
    redis: FakeAsyncRedis, api: OperatorApi
) -> None:
    for n in range(3):
        await receive(redis, f"evt_{n}", 1_000 + n)
        await dead_letter(redis, f"evt_{n}", ["fulfil", "audit"], now=2_000 + n)
    await dead_letter(redis, "evt_0", ["fulfil"], now=3_000)  # replaces its letter
    await EventIntake(redis, queue_name=QUEUE).dead_letter_unparseable(b"[]", {}, 4_000, "no")

    letters = await api.select_dead_letters(where=DeadLetterFilter(handler="audit"))
    await api.replay_dead_letters(letters[:2])
    await api.purge_dead_letters(letters[2:])
    stats = await api.stats()

    assert stats.dead_letters_by_reason == {"max_attempts": 3, "invalid_payload": 1}
    assert await redis.hget(keys.DEAD_LETTER_REASON_COUNTS, "max_attempts") == b"3"


async def test_letters_stored_before_the_counts_were_kept_are_still_counted(
    redis: FakeAsyncRedis, api: OperatorApi
) -> None:
    await receive(redis, "evt_1", 1_000)
    await dead_letter(redis, "evt_1", ["fulfil", "audit"], now=2_000)
    await redis.delete(keys.DEAD_LETTER_REASON_COUNTS)

    stats = await api.stats()

    assert stats.dead_letters_by_reason == {"max_attempts": 2}
    assert await redis.hget(keys.DEAD_LETTER_REASON_COUNTS, "max_attempts") == b"2"


async def test_counts_left_short_by_letters_from_before_are_rebuilt_and_stay_right(
    redis: FakeAsyncRedis, api: OperatorApi
) -> None:
    await receive(redis, "evt_1", 1_000)
    await dead_letter(redis, "evt_1", ["fulfil", "audit", "notify"], now=2_000)
    await redis.delete(keys.DEAD_LETTER_REASON_COUNTS)
    [first, *_] = await api.select_dead_letters(where=DeadLetterFilter())
    await api.purge_dead_letters([first])  # leaves the counts at -1

    assert (await api.stats()).dead_letters_by_reason == {"max_attempts": 2}
    await api.purge_dead_letters(await api.select_dead_letters(where=DeadLetterFilter()))
    assert (await api.stats()).dead_letters_by_reason == {}
    assert await redis.hget(keys.DEAD_LETTER_REASON_COUNTS, "max_attempts") == b"0"


def test_dead_letter_ids_stay_distinct_whatever_colons_the_event_id_holds() -> None:
    pairs = [("a:b", "c"), ("a", "b:c"), ("a%3Ab", "c"), ("a", ""), ("a:", "")]

    ids = {keys.dead_letter_id(event_id, handler) for event_id, handler in pairs}

    assert len(ids) == len(pairs)
    assert keys.dead_letter_id("evt_1", "myshop.webhooks:fulfil") == "evt_1:myshop.webhooks:fulfil"
    assert keys.unparseable_dead_letter_id("ab12").startswith(":")  # event ids are never empty


async def test_listed_events_say_where_each_of_their_handlers_stands(
    redis: FakeAsyncRedis, api: OperatorApi
) -> None:
    now = int(time.time() * 1000)
    await receive(redis, "evt_mixed", now)
    await dead_letter(
        redis, "evt_mixed", ["myshop.webhooks:send_email"], now=now + 1, done=("award_points",)
    )
    await receive(redis, "evt_new", now + 2)

    fresh, mixed = (await api.list_events()).items

    assert mixed.handlers == {
        "award_points": HandlerStatus.DONE,
        "myshop.webhooks:send_email": HandlerStatus.DEAD,
    }
    assert fresh.handlers == {}
