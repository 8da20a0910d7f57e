"""Redis's memory is bounded: real workers on a real Redis drop the index entries of expired
events and the dead letters past their retention, and keep what is still needed."""

from __future__ import annotations

from redis.asyncio import Redis

from loops_webhooks.workers import keys
from tests.integration.search_harness import HANDLERS
from tests.integration.worker_harness import Workbench
from tests.support.waiting import eventually


async def test_finished_events_leave_the_index_with_their_records_while_a_dead_one_stays(
    tmp_path, redis: Redis, redis_url: str, start_loops_webhooks, loops
) -> None:
    bench = Workbench(tmp_path, redis, redis_url, start_loops_webhooks, loops)
    bench.write_handlers(HANDLERS)
    done = [await bench.submit() for _ in range(300)]
    dead = await bench.submit("checkout.session.expired")
    bench.start_worker(dedupe_ttl_seconds=2, reconcile_interval_seconds=0.3)
    await bench.wait_for_status(dead, "dead")

    async def only_the_dead_one_left() -> bool:
        records = await redis.exists(*(keys.event_key(event_id) for event_id in done))
        return records == 0 and await redis.zrange(keys.EVENT_INDEX, 0, -1) == [dead.encode()]

    await eventually(
        only_the_dead_one_left,
        within=20,
        what="the finished events expired and the index holds only the dead one",
        details=bench.worker_output,
    )


async def test_dead_letters_past_their_retention_are_purged_and_their_event_then_expires(
    tmp_path, redis: Redis, redis_url: str, start_loops_webhooks, loops
) -> None:
    bench = Workbench(tmp_path, redis, redis_url, start_loops_webhooks, loops)
    bench.write_handlers(HANDLERS)
    dead = await bench.submit("checkout.session.expired")
    bench.start_worker(
        dedupe_ttl_seconds=3,
        reconcile_interval_seconds=0.3,
        dead_letter_retention_days=2 / 86_400,  # two seconds
    )
    await bench.wait_for_status(dead, "dead")
    assert await redis.zcard(keys.DEAD_LETTER_INDEX) == 1

    async def letter_and_event_gone() -> bool:
        letters = await redis.zcard(keys.DEAD_LETTER_INDEX)
        return letters == 0 and not await redis.zrange(keys.EVENT_INDEX, 0, -1)

    await eventually(
        letter_and_event_gone,
        within=20,
        what="the letter purged and its event unlisted",
        details=bench.worker_output,
    )
    assert await redis.exists(keys.dead_letter_key(keys.dead_letter_id(dead, "refuse"))) == 0
