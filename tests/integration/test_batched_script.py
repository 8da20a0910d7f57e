"""BatchedScript against a real Redis: calls of one event-loop tick in one round trip, each
with its own answer. Round trips are counted by the server (``INFO stats``)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from loops_webhooks.workers import keys
from loops_webhooks.workers.admission import Admission
from loops_webhooks.workers.scripts import BatchedScript

CALLS = 20
SETTINGS = Admission(slot_ttl_seconds=30, ordering=True).settings


async def store_event(redis: Redis, event_id: str) -> None:
    await redis.hset(  # type: ignore[misc]
        keys.event_key(event_id),
        mapping={
            "status": "done",
            "raw": b"{}",
            "type": "checkout.session.completed",
            "received_at": 1,
            "headers": b"{}",
        },
    )


def begin_call(begin: BatchedScript, event_id: str) -> asyncio.Future[object]:
    return asyncio.ensure_future(
        begin(
            keys=[keys.event_key(event_id)],
            args=[0, keys.TRACE_CONTEXT_FIELD, "", event_id],
        )
    )


async def reads_processed(redis: Redis) -> int:
    return int((await redis.info("stats"))["total_reads_processed"])


async def test_calls_of_one_tick_share_one_round_trip_and_each_gets_its_own_reply(
    redis_url: str, redis: Redis
) -> None:
    for n in range(0, CALLS, 2):
        await store_event(redis, f"evt_batch_{n}")
    async with Redis.from_url(redis_url) as client:
        begin = BatchedScript(client, "begin", SETTINGS)
        await begin_call(begin, "evt_warm_up")  # connection opened, script cached
        before = await reads_processed(redis)

        replies = await asyncio.gather(*(begin_call(begin, f"evt_batch_{n}") for n in range(CALLS)))

        after = await reads_processed(redis)
    assert [bool(reply) for reply in replies] == [n % 2 == 0 for n in range(CALLS)]
    assert all(reply[0] == b"done" for reply in replies if reply)
    assert after - before <= 3  # the batch's read(s) and the INFO call, not one per call


async def test_a_call_that_fails_fails_alone(redis_url: str, redis: Redis) -> None:
    await store_event(redis, "evt_fine")
    await redis.set(keys.event_key("evt_not_a_hash"), b"x")
    async with Redis.from_url(redis_url) as client:
        begin = BatchedScript(client, "begin", SETTINGS)
        fine, broken = begin_call(begin, "evt_fine"), begin_call(begin, "evt_not_a_hash")

        assert (await fine)[0] == b"done"
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await broken


async def test_a_batch_loads_the_script_again_after_redis_forgot_it(
    redis_url: str, redis: Redis
) -> None:
    await store_event(redis, "evt_after_flush")
    async with Redis.from_url(redis_url) as client:
        begin = BatchedScript(client, "begin", SETTINGS)
        await begin_call(begin, "evt_warm_up")
        await redis.script_flush()

        replies = await asyncio.gather(
            begin_call(begin, "evt_after_flush"), begin_call(begin, "evt_missing")
        )

    assert replies[0][0] == b"done"
    assert not replies[1]
