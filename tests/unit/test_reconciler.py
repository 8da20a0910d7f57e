"""The reconciler on fakeredis (Lua through lupa): nothing acknowledged stays pending forever."""

from __future__ import annotations

import time

import orjson
import pytest
from fakeredis import FakeAsyncRedis

from loops_webhooks.workers import keys
from loops_webhooks.workers.intake import EventIntake, ReceivedEvent
from loops_webhooks.workers.reconciler import TRIM_BATCH_SIZE, Reconciler

QUEUE = "loops:queue"
AN_HOUR_AGO_MS = int(time.time() * 1000) - 3_600_000
TTL_SECONDS = 3600
PAST_THE_TTL_MS = AN_HOUR_AGO_MS - 60_000


def reconciler(redis: FakeAsyncRedis, grace_seconds: float = 60) -> Reconciler:
    return Reconciler(
        redis,
        queue_name=QUEUE,
        interval_seconds=1,
        grace_seconds=grace_seconds,
        dedupe_ttl_seconds=TTL_SECONDS,
        dead_letter_retention_days=None,
    )


async def record(redis: FakeAsyncRedis, event_id: str, received_at_ms: int = AN_HOUR_AGO_MS) -> str:
    raw = orjson.dumps({"id": event_id, "type": "checkout.session.completed"})
    event = ReceivedEvent(event_id, "checkout.session.completed", raw, {}, received_at_ms)
    await EventIntake(redis, queue_name=QUEUE).submit(event)
    return keys.job_id_for_event(event_id)


async def lose_job(redis: FakeAsyncRedis, job_id: str) -> None:
    await redis.delete(keys.arq_job_key(job_id))
    await redis.zrem(QUEUE, job_id)


async def test_a_pending_event_without_a_job_is_enqueued_again(redis: FakeAsyncRedis) -> None:
    job_id = await record(redis, "evt_orphan")
    await lose_job(redis, job_id)

    repaired = await reconciler(redis).reconcile_once()

    assert repaired == 1
    assert await redis.zscore(QUEUE, job_id) is not None
    payload = orjson.loads(await redis.get(keys.arq_job_key(job_id)))
    assert payload["a"] == ["evt_orphan", "checkout.session.completed"]


async def test_a_job_missing_only_from_the_queue_is_put_back(redis: FakeAsyncRedis) -> None:
    job_id = await record(redis, "evt_dropped")
    await redis.zrem(QUEUE, job_id)

    assert await reconciler(redis).reconcile_once() == 1
    assert await redis.zscore(QUEUE, job_id) is not None


async def test_an_event_with_a_live_job_is_left_alone(redis: FakeAsyncRedis) -> None:
    job_id = await record(redis, "evt_queued")
    before = await redis.zscore(QUEUE, job_id)

    assert await reconciler(redis).reconcile_once() == 0
    assert await redis.zscore(QUEUE, job_id) == before


async def test_events_younger_than_the_grace_period_are_not_touched(redis: FakeAsyncRedis) -> None:
    job_id = await record(redis, "evt_fresh", received_at_ms=int(time.time() * 1000))
    await lose_job(redis, job_id)

    assert await reconciler(redis, grace_seconds=60).reconcile_once() == 0
    assert await redis.zscore(QUEUE, job_id) is None


async def test_a_finished_event_left_in_the_pending_set_is_removed_from_it(
    redis: FakeAsyncRedis,
) -> None:
    job_id = await record(redis, "evt_finished")
    await lose_job(redis, job_id)
    await redis.hset(keys.event_key("evt_finished"), "status", "done")

    assert await reconciler(redis).reconcile_once() == 0
    assert await redis.zscore(keys.PENDING_EVENTS, "evt_finished") is None
    assert await redis.zscore(QUEUE, job_id) is None


async def test_many_orphans_are_repaired_in_one_pass(redis: FakeAsyncRedis) -> None:
    for number in range(1200):
        await lose_job(redis, await record(redis, f"evt_{number}"))

    assert await reconciler(redis).reconcile_once() == 1200
    assert await redis.zcard(QUEUE) == 1200


async def test_a_pass_goes_on_where_the_previous_one_stopped(
    redis: FakeAsyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("loops_webhooks.workers.reconciler.MAX_EVENTS_PER_PASS", 3)
    for number in range(3):
        await record(redis, f"evt_waiting_{number}", received_at_ms=AN_HOUR_AGO_MS - 1000)
    orphan = await record(redis, "evt_orphan_behind")
    await lose_job(redis, orphan)
    reconcile = reconciler(redis)

    first, second = await reconcile.reconcile_once(), await reconcile.reconcile_once()

    assert (first, second) == (0, 1)
    assert await redis.zscore(QUEUE, orphan) is not None


async def test_one_pass_removes_every_expired_entry_of_the_event_index_however_many(
    redis: FakeAsyncRedis,
) -> None:
    expired = [f"evt_{n}" for n in range(TRIM_BATCH_SIZE * 2 + 500)]
    for event_id in expired:
        await record(redis, event_id, received_at_ms=PAST_THE_TTL_MS)
        await redis.delete(keys.event_key(event_id))  # as its expiry would
    await record(redis, "evt_recent", received_at_ms=int(time.time() * 1000))

    await reconciler(redis).reconcile_once()

    assert await redis.zrange(keys.EVENT_INDEX, 0, -1) == [b"evt_recent"]


async def test_records_kept_without_an_expiry_stay_listed_among_expired_ones(
    redis: FakeAsyncRedis,
) -> None:
    for n in range(TRIM_BATCH_SIZE + 10):
        await record(redis, f"evt_{n}", received_at_ms=PAST_THE_TTL_MS)
        if n % 7:
            await redis.delete(keys.event_key(f"evt_{n}"))
        else:  # a dead event keeps its record until its letters go
            await redis.hset(keys.event_key(f"evt_{n}"), "status", "dead")

    await reconciler(redis).reconcile_once()

    kept = await redis.zrange(keys.EVENT_INDEX, 0, -1)
    assert sorted(kept) == sorted(f"evt_{n}".encode() for n in range(0, TRIM_BATCH_SIZE + 10, 7))


async def test_an_entry_goes_once_its_record_is_due_to_expire_before_the_record_does(
    redis: FakeAsyncRedis,
) -> None:
    await record(redis, "evt_done", received_at_ms=PAST_THE_TTL_MS)
    await redis.pexpire(keys.event_key("evt_done"), 60_000)

    await reconciler(redis).reconcile_once()

    assert await redis.zcard(keys.EVENT_INDEX) == 0


async def test_an_event_leaving_the_index_leaves_its_search_indexes_too(
    redis: FakeAsyncRedis,
) -> None:
    raw = orjson.dumps({"id": "evt_done", "type": "checkout.session.completed"})
    terms = ("session:cs_1", "customer:c_1")
    await EventIntake(redis, queue_name=QUEUE).submit(
        ReceivedEvent(
            "evt_done", "checkout.session.completed", raw, {}, PAST_THE_TTL_MS, search_terms=terms
        )
    )
    await EventIntake(redis, queue_name=QUEUE).submit(
        ReceivedEvent(
            "evt_new",
            "checkout.session.completed",
            raw,
            {},
            int(time.time() * 1000),
            search_terms=terms,
        )
    )
    await redis.pexpire(keys.event_key("evt_done"), 60_000)

    await reconciler(redis).reconcile_once()

    for term in terms:
        assert await redis.zrange(keys.search_key(term), 0, -1) == [b"evt_new"]


async def test_the_search_entries_of_an_event_whose_record_already_expired_are_removed_too(
    redis: FakeAsyncRedis,
) -> None:
    raw = orjson.dumps({"id": "evt_gone", "type": "checkout.session.completed"})
    await EventIntake(redis, queue_name=QUEUE).submit(
        ReceivedEvent(
            "evt_gone",
            "checkout.session.completed",
            raw,
            {},
            PAST_THE_TTL_MS,
            search_terms=("customer:c",),
        )
    )
    await redis.delete(keys.event_key("evt_gone"))  # expired while no worker ran

    await reconciler(redis).reconcile_once()

    assert not await redis.exists(keys.search_key("customer:c"))
    assert not await redis.hexists(keys.SEARCH_TERMS, "evt_gone")


async def test_only_one_reconciler_trims_in_an_interval(redis: FakeAsyncRedis) -> None:
    await reconciler(redis).reconcile_once()
    await record(redis, "evt_gone", received_at_ms=PAST_THE_TTL_MS)
    await redis.delete(keys.event_key("evt_gone"))

    await reconciler(redis).reconcile_once()
    assert await redis.zcard(keys.EVENT_INDEX) == 1
    await redis.delete(keys.TRIM_LOCK)
    await reconciler(redis).reconcile_once()
    assert await redis.zcard(keys.EVENT_INDEX) == 0
