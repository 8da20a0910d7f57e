"""Replay and purge of dead letters on fakeredis (Lua through lupa)."""

from __future__ import annotations

import asyncio
import time

import orjson
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


async def event_with_dead_handlers(
    redis: FakeAsyncRedis, *dead: str, reason: DeadLetterReason = DeadLetterReason.REJECTED
) -> list[DeadLetter]:
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
                reason=reason,
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

    result = await replay_dead_letter(redis, letter, queue_name=QUEUE, history_limit=10)

    stored = await EventStore(redis, dedupe_ttl_seconds=DAY).get("evt_1")
    assert result is ReplayResult.REPLAYED
    assert stored is not None
    assert stored.status == "pending"
    assert stored.handlers["ok"].status is HandlerStatus.DONE
    assert stored.handlers["a"] == HandlerState(), "a fresh pending state, owed a run"
    assert await redis.zscore(QUEUE, keys.job_id_for_event("evt_1")) is not None
    assert await get_dead_letter(redis, letter.id) is None


async def test_a_forced_replay_resets_every_handler_state_to_a_fresh_pending_one(
    redis: FakeAsyncRedis,
) -> None:
    [letter] = await event_with_dead_handlers(redis, "a")

    await replay_dead_letter(redis, letter, queue_name=QUEUE, history_limit=10, force=True)

    stored = await EventStore(redis, dedupe_ttl_seconds=DAY).get("evt_1")
    assert stored is not None
    assert stored.handlers == {"ok": HandlerState(), "a": HandlerState()}


async def test_a_letter_replayed_and_dead_lettered_anew_since_it_was_read_is_not_replayed_again(
    redis: FakeAsyncRedis,
) -> None:
    [read_by_a_second_replay] = await event_with_dead_handlers(redis, "a")
    assert (
        await replay_dead_letter(redis, read_by_a_second_replay, queue_name=QUEUE, history_limit=10)
        == "replayed"
    )
    await asyncio.sleep(0.002)
    [dead_again] = await event_with_dead_handlers(redis, "a")
    assert dead_again.dead_lettered_at != read_by_a_second_replay.dead_lettered_at

    result = await replay_dead_letter(
        redis, read_by_a_second_replay, queue_name=QUEUE, history_limit=10
    )

    assert result is ReplayResult.GONE
    assert await get_dead_letter(redis, dead_again.id) == dead_again


async def test_an_invalid_payload_letter_with_its_event_stored_is_replayed_only_with_force(
    redis: FakeAsyncRedis,
) -> None:
    [letter] = await event_with_dead_handlers(redis, "a", reason=DeadLetterReason.INVALID_PAYLOAD)

    unforced = await replay_dead_letter(redis, letter, queue_name=QUEUE, history_limit=10)
    forced = await replay_dead_letter(redis, letter, queue_name=QUEUE, history_limit=10, force=True)

    assert (unforced, forced) == (ReplayResult.NEEDS_FORCE, ReplayResult.REPLAYED)
    stored = await EventStore(redis, dedupe_ttl_seconds=DAY).get("evt_1")
    assert stored is not None and stored.status == "pending"


async def test_a_body_the_receiver_could_not_parse_is_skipped_even_with_force(
    redis: FakeAsyncRedis,
) -> None:
    letter_id = await EventIntake(redis, queue_name=QUEUE).dead_letter_unparseable(
        b"not json", {}, int(time.time() * 1000), "body is not JSON"
    )
    letter = await get_dead_letter(redis, letter_id)
    assert letter is not None

    result = await replay_dead_letter(redis, letter, queue_name=QUEUE, history_limit=10, force=True)
    assert result is ReplayResult.NO_EVENT


async def test_replays_keep_only_the_newest_handler_states_up_to_the_history_limit(
    redis: FakeAsyncRedis,
) -> None:
    for attempt in range(4):
        [letter] = await event_with_dead_handlers(redis, "a")
        await redis.hset(
            keys.event_key("evt_1"),
            keys.HANDLER_FIELD_PREFIX + "a",
            HandlerState(status=HandlerStatus.DEAD, attempts=attempt + 1).to_json(),
        )
        assert await replay_dead_letter(redis, letter, queue_name=QUEUE, history_limit=2)
        await asyncio.sleep(0.002)

    stored = await EventStore(redis, dedupe_ttl_seconds=DAY).get("evt_1")

    assert stored is not None
    assert [state.attempts for state in stored.history["a"]] == [3, 4]
