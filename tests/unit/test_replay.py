"""Replay and purge of dead letters on fakeredis (Lua through lupa)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import orjson
import pytest
from fakeredis import FakeAsyncRedis

from loops_webhooks.workers import keys
from loops_webhooks.workers.dead_letters import (
    DeadLetter,
    DeadLetterReason,
    get_dead_letter,
)
from loops_webhooks.workers.event_store import EventStore, HandlerState, HandlerStatus
from loops_webhooks.workers.intake import EventIntake, ReceivedEvent
from loops_webhooks.workers.keys import dead_letter_id
from loops_webhooks.workers.replay import ReplayResult, purge_dead_letter, replay_dead_letter

QUEUE = "loops:queue"
TYPE = "checkout.session.completed"
DAY = 86_400


@pytest.fixture
async def redis() -> AsyncIterator[FakeAsyncRedis]:
    client = FakeAsyncRedis()
    try:
        yield client
    finally:
        await client.aclose()


async def event_with_dead_handlers(redis: FakeAsyncRedis, *dead: str) -> list[DeadLetter]:
    """An event whose handler 'ok' succeeded and whose handlers ``dead`` were dead-lettered."""
    raw = orjson.dumps({"id": "evt_1", "type": TYPE})
    now = int(time.time() * 1000)
    await EventIntake(redis, queue_name=QUEUE).submit(ReceivedEvent("evt_1", TYPE, raw, {}, now))
    store = EventStore(redis, dedupe_ttl_seconds=DAY)
    stored = await store.get("evt_1")
    assert stored is not None
    states = {"ok": HandlerState(status=HandlerStatus.DONE, attempts=1)}
    letters = []
    for name in dead:
        states[name] = HandlerState(status=HandlerStatus.DEAD, attempts=1)
        letters.append(
            DeadLetter(
                id=dead_letter_id("evt_1", name),
                reason=DeadLetterReason.REJECTED,
                event_id="evt_1",
                handler=name,
                attempts=1,
                dead_lettered_at=now,
            )
        )
    await store.finish(stored, states, ["ok", *dead], letters, now_ms=now)
    return [letter for letter in [await get_dead_letter(redis, x.id) for x in letters] if letter]


async def test_purging_one_of_two_dead_letters_keeps_the_event_record_from_expiring(
    redis: FakeAsyncRedis,
) -> None:
    first, second = await event_with_dead_handlers(redis, "a", "b")

    assert await purge_dead_letter(redis, first, dedupe_ttl_seconds=DAY)

    assert await redis.ttl(keys.event_key("evt_1")) == -1
    assert await get_dead_letter(redis, second.id) is not None


async def test_purging_the_last_dead_letter_lets_the_event_record_expire(
    redis: FakeAsyncRedis,
) -> None:
    first, second = await event_with_dead_handlers(redis, "a", "b")

    await purge_dead_letter(redis, first, dedupe_ttl_seconds=DAY)
    await purge_dead_letter(redis, second, dedupe_ttl_seconds=DAY)

    assert 0 < await redis.ttl(keys.event_key("evt_1")) <= DAY
    assert await redis.zcard(keys.DEAD_LETTER_INDEX) == 0


async def test_replay_makes_the_event_pending_again_for_the_dead_handler_only(
    redis: FakeAsyncRedis,
) -> None:
    [letter] = await event_with_dead_handlers(redis, "a")

    result = await replay_dead_letter(redis, letter, queue_name=QUEUE)

    stored = await EventStore(redis, dedupe_ttl_seconds=DAY).get("evt_1")
    assert result is ReplayResult.REPLAYED
    assert stored is not None
    assert stored.status == "pending"
    assert set(stored.handlers) == {"ok"}
    assert await redis.zscore(QUEUE, keys.job_id_for_event("evt_1")) is not None
    assert await get_dead_letter(redis, letter.id) is None


async def test_a_forced_replay_clears_every_handler_state(redis: FakeAsyncRedis) -> None:
    [letter] = await event_with_dead_handlers(redis, "a")

    await replay_dead_letter(redis, letter, queue_name=QUEUE, force=True)

    stored = await EventStore(redis, dedupe_ttl_seconds=DAY).get("evt_1")
    assert stored is not None
    assert stored.handlers == {}
