"""EventIntake on fakeredis (which runs its Lua scripts through ``lupa``): record and enqueue.

What only a real server shows (its own count of script calls, an unreachable Redis) is in
``tests/integration/test_event_intake.py``.
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from arq.jobs import deserialize_job_raw
from fakeredis import FakeAsyncRedis
from redis.exceptions import RedisError

from loops_webhooks.workers import keys
from loops_webhooks.workers.intake import PROCESS_EVENT_JOB, EventIntake, ReceivedEvent, job_payload
from loops_webhooks.workers.search import unpack_terms

QUEUE = "loops:queue"
RECEIVED_AT_MS = 1_736_937_300_000
HEADERS = {"content-type": "application/json", "loops-signature": "ab" * 32}


class CountingRedis(FakeAsyncRedis):
    """fakeredis that counts the EVALSHA commands sent to it: one per script round trip."""

    script_calls = 0

    async def evalsha(self, *args: Any, **kwargs: Any) -> Any:
        self.script_calls += 1
        return await super().evalsha(*args, **kwargs)


@pytest.fixture
async def redis() -> AsyncIterator[CountingRedis]:
    client = CountingRedis()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def intake(redis: CountingRedis) -> EventIntake:
    intake = EventIntake(redis, queue_name=QUEUE)
    await intake.submit(received("evt_warm_up"))
    await redis.flushall()
    redis.script_calls = 0
    return intake


def received(event_id: str, raw: bytes | None = None) -> ReceivedEvent:
    raw = raw if raw is not None else orjson.dumps({"id": event_id, "type": "checkout.x"})
    return ReceivedEvent(event_id, "checkout.session.completed", raw, HEADERS, RECEIVED_AT_MS)


async def contents(redis: FakeAsyncRedis) -> dict[bytes, bytes]:
    return {key: await redis.dump(key) async for key in redis.scan_iter()}


def test_the_job_payload_is_json_that_arq_decodes_as_a_process_event_call():
    payload = job_payload("evt_1", "checkout.session.completed", RECEIVED_AT_MS)

    function, args, kwargs, _job_try, enqueued_at_ms = deserialize_job_raw(
        payload, deserializer=orjson.loads
    )

    assert (function, args[0], kwargs, enqueued_at_ms) == (
        PROCESS_EVENT_JOB,
        "evt_1",
        {},
        RECEIVED_AT_MS,
    )


def test_the_job_payload_is_not_a_pickle():
    payload = job_payload("evt_1", "checkout.session.completed", RECEIVED_AT_MS)

    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(payload)


async def test_a_new_event_is_recorded_with_its_raw_bytes_headers_receipt_time_and_status(
    intake, redis
):
    raw = b'{"id":"evt_1", "type":"checkout.session.completed"}\r\n\x00\xff'

    created = await intake.submit(received("evt_1", raw))

    assert created is True
    assert await redis.hgetall(keys.event_key("evt_1")) == {
        b"id": b"evt_1",
        b"type": b"checkout.session.completed",
        b"raw": raw,
        b"headers": orjson.dumps(HEADERS),
        b"received_at": str(RECEIVED_AT_MS).encode(),
        b"status": b"pending",
    }


async def test_a_new_event_is_entered_in_the_search_index_of_each_of_its_terms_by_receipt_time(
    intake, redis
):
    terms = ("session:cs_1", "customer:c:1", "metadata:orderId=o 1")
    event = received("evt_1")._replace(search_terms=terms)

    await intake.submit(event)

    for term in terms:
        assert await redis.zrange(keys.search_key(term), 0, -1, withscores=True) == [
            (b"evt_1", RECEIVED_AT_MS)
        ]
    stored = await redis.hget(keys.SEARCH_TERMS, "evt_1")
    assert unpack_terms(stored) == terms


async def test_a_redelivered_event_adds_no_search_entry(intake, redis):
    await intake.submit(received("evt_1")._replace(search_terms=("customer:c1",)))

    await intake.submit(received("evt_1")._replace(search_terms=("customer:c2",)))

    assert not await redis.exists(keys.search_key("customer:c2"))


async def test_a_new_event_is_listed_as_pending_for_the_reconciler(intake, redis):
    await intake.submit(received("evt_1"))

    assert await redis.zrange(keys.PENDING_EVENTS, 0, -1, withscores=True) == [
        (b"evt_1", RECEIVED_AT_MS)
    ]


async def test_a_new_event_is_enqueued_as_one_json_arq_job_carrying_its_id(intake, redis):
    await intake.submit(received("evt_1"))

    job_id = keys.job_id_for_event("evt_1")
    assert await redis.zrange(QUEUE, 0, -1) == [job_id.encode()]
    payload = await redis.get(keys.arq_job_key(job_id))
    assert orjson.loads(payload)["a"][0] == "evt_1"


async def test_a_recorded_event_id_is_a_duplicate_and_writes_nothing(intake, redis):
    await intake.submit(received("evt_1"))
    before = await contents(redis)

    created = await intake.submit(received("evt_1", b'{"id": "evt_1", "other": "body"}'))

    assert created is False
    assert await contents(redis) == before


async def test_duplicates_within_one_batch_are_recorded_once(intake, redis):
    created = await asyncio.gather(*(intake.submit(received("evt_same")) for _ in range(5)))

    assert sorted(created) == [False, False, False, False, True]
    assert await redis.zcard(QUEUE) == 1


async def test_submits_in_one_event_loop_tick_share_one_script_call(intake, redis):
    created = await asyncio.gather(*(intake.submit(received(f"evt_{n}")) for n in range(50)))

    assert created == [True] * 50
    assert redis.script_calls == 1
    assert await redis.zcard(QUEUE) == 50


async def test_an_unparseable_body_is_kept_as_a_dead_letter(intake, redis):
    dead_letter_id = await intake.dead_letter_unparseable(
        b"not json", HEADERS, RECEIVED_AT_MS, "body is not JSON"
    )

    assert await redis.zrange(keys.DEAD_LETTER_INDEX, 0, -1) == [dead_letter_id.encode()]
    dead_letter = await redis.hgetall(keys.dead_letter_key(dead_letter_id))
    assert dead_letter[b"raw"] == b"not json"
    assert dead_letter[b"reason"] == b"invalid_payload"
    assert dead_letter[b"error_message"] == b"body is not JSON"
    assert orjson.loads(dead_letter[b"headers"]) == HEADERS


async def test_an_unparseable_body_is_not_enqueued(intake, redis):
    await intake.dead_letter_unparseable(b"not json", HEADERS, RECEIVED_AT_MS, "bad")

    assert await redis.exists(QUEUE, keys.PENDING_EVENTS) == 0


async def test_the_same_unparseable_body_is_dead_lettered_once(intake, redis):
    first = await intake.dead_letter_unparseable(b"not json", HEADERS, RECEIVED_AT_MS, "first")
    second = await intake.dead_letter_unparseable(b"not json", {}, RECEIVED_AT_MS + 1, "second")

    assert second == first
    assert await redis.zcard(keys.DEAD_LETTER_INDEX) == 1
    assert await redis.hget(keys.dead_letter_key(first), "error_message") == b"first"


async def test_different_unparseable_bodies_are_separate_dead_letters(intake, redis):
    await intake.dead_letter_unparseable(b"not json", HEADERS, RECEIVED_AT_MS, "bad")
    await intake.dead_letter_unparseable(b"[1, 2]", HEADERS, RECEIVED_AT_MS, "bad")

    assert await redis.zcard(keys.DEAD_LETTER_INDEX) == 2


class StalledRedis(CountingRedis):
    """fakeredis whose scripts never answer, as a stalled (SIGSTOPped) server's would not."""

    async def evalsha(self, *args: Any, **kwargs: Any) -> Any:
        self.script_calls += 1
        await asyncio.Event().wait()


async def test_every_caller_of_a_batch_gets_timeout_error_at_the_deadline() -> None:
    redis = StalledRedis()
    intake = EventIntake(redis, queue_name=QUEUE, deadline_seconds=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()

    results = await asyncio.gather(
        *(intake.submit(received(f"evt_{n}")) for n in range(3)), return_exceptions=True
    )

    waited = loop.time() - started
    assert [type(result) for result in results] == [TimeoutError] * 3
    assert "0.2s" in str(results[0])
    assert 0.2 <= waited < 1.0
    assert redis.script_calls == 1


def live_timers(loop: asyncio.AbstractEventLoop) -> int:
    return sum(not timer.cancelled() for timer in loop._scheduled)  # type: ignore[attr-defined]


async def test_a_batch_answered_in_time_cancels_its_deadline(redis: CountingRedis) -> None:
    intake = EventIntake(redis, queue_name=QUEUE, deadline_seconds=30)
    loop = asyncio.get_running_loop()
    timers_before = live_timers(loop)

    assert await intake.submit(received("evt_in_time")) is True

    assert live_timers(loop) == timers_before


class ShortReplyRedis(CountingRedis):
    """fakeredis whose record script answers one flag, whatever the batch."""

    async def evalsha(self, *args: Any, **kwargs: Any) -> Any:
        self.script_calls += 1
        return [1]


async def test_a_reply_of_the_wrong_shape_fails_every_caller_instead_of_leaving_one_waiting():
    intake = EventIntake(ShortReplyRedis(), queue_name=QUEUE, deadline_seconds=30)

    results = await asyncio.wait_for(
        asyncio.gather(
            *(intake.submit(received(f"evt_{n}")) for n in range(3)), return_exceptions=True
        ),
        timeout=5,
    )

    assert all(isinstance(result, RedisError) for result in results)
    assert "for 3" in str(results[0])
