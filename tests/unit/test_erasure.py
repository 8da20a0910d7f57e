"""Erasure on fakeredis (Lua through lupa): what an erasure leaves alone."""

from __future__ import annotations

import time

import orjson
from fakeredis import FakeAsyncRedis

from loops_webhooks.workers import keys
from loops_webhooks.workers.dead_letters import DeadLetter, get_dead_letter
from loops_webhooks.workers.event_store import EventStore, HandlerState, HandlerStatus
from loops_webhooks.workers.intake import EventIntake, ReceivedEvent
from loops_webhooks.workers.replay import ReplayResult, replay_dead_letter
from tests.unit.test_operator_api import operator_api

QUEUE = "loops:queue"
TYPE = "checkout.session.completed"
TERMS = ("session:cs_1", "customer:cus_1")


async def receive(redis: FakeAsyncRedis, event_id: str) -> None:
    raw = orjson.dumps({"id": event_id, "type": TYPE})
    now = int(time.time() * 1000)
    await EventIntake(redis, queue_name=QUEUE).submit(
        ReceivedEvent(event_id, TYPE, raw, {"user-agent": "Loops"}, now, search_terms=TERMS)
    )


async def test_an_event_still_being_processed_is_left_whole_and_reported(
    redis: FakeAsyncRedis,
) -> None:
    await receive(redis, "evt_pending")

    report = await operator_api(redis).erase_customer("cus_1")

    assert (report.events, report.pending) == (0, ["evt_pending"])
    assert (await redis.hget(keys.event_key("evt_pending"), "raw")).startswith(b"{")
    assert await redis.zcard(keys.search_key("customer:cus_1")) == 1


async def test_a_letter_erased_after_a_replay_read_it_is_not_replayed(
    redis: FakeAsyncRedis,
) -> None:
    await receive(redis, "evt_1")
    store = EventStore(redis, dedupe_ttl_seconds=3600)
    stored = await store.get("evt_1")
    assert stored is not None
    now = int(time.time() * 1000)
    letter = DeadLetter(
        id=keys.dead_letter_id("evt_1", "a"), reason="rejected", event_id="evt_1", handler="a",
        attempts=1, dead_lettered_at=now,
    )  # fmt: skip
    dead = {"a": HandlerState(status=HandlerStatus.DEAD, attempts=1)}
    await store.finish(stored, dead, ["a"], [letter], now_ms=now)
    read_before_the_erasure = await get_dead_letter(redis, letter.id)
    assert read_before_the_erasure is not None

    await operator_api(redis).erase_customer("cus_1")
    result = await replay_dead_letter(
        redis, read_before_the_erasure, queue_name=QUEUE, history_limit=10
    )

    assert result is ReplayResult.ERASED
    assert await redis.hget(keys.event_key("evt_1"), "status") == b"dead"
