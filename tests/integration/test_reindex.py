"""``loops-webhooks reindex`` on a real Redis: events stored before search existed become
findable; an interrupted run is simply run again."""

from __future__ import annotations

import orjson
from redis.asyncio import Redis

from loops_webhooks.workers import keys
from loops_webhooks.workers.intake import EventIntake, ReceivedEvent
from loops_webhooks.workers.search import unpack_terms
from tests.integration.test_cli import run_cli
from tests.integration.worker_harness import QUEUE

COUNT = 1200


async def store_as_before_search(redis: Redis, count: int) -> list[str]:
    """Events as this version's receiver stores them, minus what search added: no terms kept,
    no search entries."""
    intake = EventIntake(redis, queue_name=QUEUE)
    event_ids = []
    for n in range(count):
        event_id = f"evt_old_{n:05d}"
        raw = orjson.dumps(
            {
                "id": event_id,
                "type": "checkout.session.completed",
                "data": {
                    "id": f"cs_{n}",
                    "externalCustomerId": f"cus_{n % 3}",
                    "metadata": {"orderId": f"ord_{n}"},
                },
            }
        )
        await intake.submit(
            ReceivedEvent(event_id, "checkout.session.completed", raw, {}, 1000 + n)
        )
        await redis.hdel(keys.SEARCH_TERMS, event_id)
        event_ids.append(event_id)
    return event_ids


def listed(redis_url: str, *args: str) -> list[str]:
    result = run_cli(
        "events", "list", *args, "--limit", "500", "--json", env={"REDIS_URL": redis_url}
    )
    assert result.returncode == 0, result.stderr
    return [row["id"] for row in orjson.loads(result.stdout)]


async def test_reindex_makes_events_stored_before_search_findable_with_progress(
    redis: Redis, redis_url: str
) -> None:
    event_ids = await store_as_before_search(redis, COUNT)
    assert listed(redis_url, "--metadata", "orderId=ord_7") == []

    result = run_cli("reindex", env={"REDIS_URL": redis_url})

    assert result.returncode == 0, result.stderr
    assert f"/{COUNT} events looked at" in result.stderr
    assert f"looked at {COUNT} event(s): indexed {COUNT}, already indexed 0" in result.stdout
    assert listed(redis_url, "--metadata", "orderId=ord_7") == [event_ids[7]]
    assert listed(redis_url, "--session", "cs_1199") == [event_ids[1199]]
    assert len(listed(redis_url, "--customer", "cus_1")) == COUNT // 3


async def test_reindex_run_again_after_an_interruption_indexes_only_what_was_left(
    redis: Redis, redis_url: str
) -> None:
    event_ids = await store_as_before_search(redis, 20)
    assert run_cli("reindex", env={"REDIS_URL": redis_url}).returncode == 0
    for event_id in event_ids[:5]:  # as if the first run had stopped before these
        stored = await redis.hget(keys.SEARCH_TERMS, event_id)
        assert stored
        for term in unpack_terms(stored):
            await redis.zrem(keys.search_key(term), event_id)
        await redis.hdel(keys.SEARCH_TERMS, event_id)

    again = run_cli("reindex", env={"REDIS_URL": redis_url})

    assert "looked at 20 event(s): indexed 5, already indexed 15" in again.stdout
    assert listed(redis_url, "--session", "cs_0") == [event_ids[0]]
