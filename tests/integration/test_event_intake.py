"""EventIntake against a real Redis: what fakeredis cannot show in ``tests/unit/test_intake.py``.

Script calls are counted by the Redis server itself (``INFO commandstats``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
import redis as redis_sync
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from loops_webhooks.workers import keys
from loops_webhooks.workers.intake import (
    MAX_EVENTS_PER_CALL,
    EventIntake,
    NotReplicated,
    ReceivedEvent,
)
from tests.support.redis_server import RedisServer

QUEUE = "loops:queue"
RECEIVED_AT_MS = 1_736_937_300_000


@pytest.fixture
async def intake(redis_url: str, redis: Redis) -> AsyncIterator[EventIntake]:
    """An intake whose scripts the server has cached, with its statistics reset."""
    client = Redis.from_url(redis_url)
    try:
        intake = EventIntake(client, queue_name=QUEUE)
        await intake.submit(received("evt_warm_up"))
        await redis.config_resetstat()
        yield intake
    finally:
        await client.aclose()


def received(event_id: str) -> ReceivedEvent:
    raw = orjson.dumps({"id": event_id, "type": "checkout.session.completed"})
    return ReceivedEvent(event_id, "checkout.session.completed", raw, {}, RECEIVED_AT_MS)


async def script_calls(redis: Redis) -> int:
    """How many EVALSHA/EVAL commands the server ran since the last ``CONFIG RESETSTAT``."""
    stats = await redis.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))


async def test_submits_in_one_event_loop_tick_reach_the_server_as_one_script_call(intake, redis):
    created = await asyncio.gather(*(intake.submit(received(f"evt_{n}")) for n in range(50)))

    assert created == [True] * 50
    assert await script_calls(redis) == 1
    assert await redis.zcard(keys.PENDING_EVENTS) == 51


async def test_a_batch_larger_than_one_script_call_takes_is_split(intake, redis):
    count = MAX_EVENTS_PER_CALL + 10

    created = await asyncio.gather(*(intake.submit(received(f"evt_{n}")) for n in range(count)))

    assert created == [True] * count
    assert await script_calls(redis) == 2


async def test_every_waiting_submit_raises_when_redis_is_unreachable(free_port):
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    unreachable = EventIntake(client, queue_name=QUEUE)
    try:
        outcomes = await asyncio.gather(
            *(unreachable.submit(received(f"evt_{n}")) for n in range(3)), return_exceptions=True
        )
    finally:
        await client.aclose()

    assert all(isinstance(outcome, RedisConnectionError) for outcome in outcomes)


@pytest.fixture
def replica(stoppable_redis: RedisServer, tmp_path: Path) -> Iterator[RedisServer]:
    """A replica of ``stoppable_redis``, in sync."""
    server = RedisServer(tmp_path / "replica")
    server.start()
    try:
        with redis_sync.Redis.from_url(server.url) as client:
            client.replicaof("127.0.0.1", stoppable_redis.port)
            deadline = time.monotonic() + 10
            while client.info("replication").get("master_link_status") != "up":
                assert time.monotonic() < deadline, "the replica did not sync"
                time.sleep(0.05)
        yield server
    finally:
        server.close()


@pytest.fixture
async def confirming_intake(stoppable_redis: RedisServer) -> AsyncIterator[EventIntake]:
    client = Redis.from_url(stoppable_redis.url)
    try:
        yield EventIntake(client, queue_name=QUEUE, min_replicas=1, replica_timeout_ms=200)
    finally:
        await client.aclose()


async def test_with_min_replicas_an_event_a_replica_holds_is_acknowledged(
    confirming_intake, replica
):
    assert await confirming_intake.submit(received("evt_replicated")) is True

    async with Redis.from_url(replica.url) as on_replica:
        assert await on_replica.exists(keys.event_key("evt_replicated")) == 1


async def test_with_min_replicas_and_no_replica_the_write_is_not_acknowledged(confirming_intake):
    with pytest.raises(NotReplicated, match="0 of the 1 replica"):
        await confirming_intake.submit(received("evt_alone"))


async def test_a_duplicate_is_acknowledged_only_once_a_replica_confirms_it_too(
    confirming_intake, replica
):
    assert await confirming_intake.submit(received("evt_first")) is True
    replica.pause()
    try:
        # the redelivery finds the event stored; answering it without a fresh WAIT would
        # promise an event that a lagging replica may still lack
        with pytest.raises(NotReplicated):
            await confirming_intake.submit(received("evt_first"))
    finally:
        replica.resume()
    assert await confirming_intake.submit(received("evt_first")) is False
