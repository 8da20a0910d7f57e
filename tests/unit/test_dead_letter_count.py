"""The dry-run count of a bulk replay or purge, and the per-minute outcome series, on fakeredis."""

from __future__ import annotations

import time

from fakeredis import FakeAsyncRedis

from loops_webhooks.workers import keys
from loops_webhooks.workers.operator_api import DeadLetterFilter
from tests.unit.test_operator_api import operator_api
from tests.unit.test_replay import event_with_dead_handlers


async def test_the_count_of_a_filter_is_what_a_replay_of_it_would_select(
    redis: FakeAsyncRedis,
) -> None:
    await event_with_dead_handlers(redis, "a", "b", "c")
    api = operator_api(redis)

    for where in (
        DeadLetterFilter(),
        DeadLetterFilter(handler="b"),
        DeadLetterFilter(reason="rejected", handler="c"),
        DeadLetterFilter(reason="max_attempts"),
        DeadLetterFilter(since_ms=int(time.time() * 1000) + 60_000),
    ):
        assert await api.count_dead_letters(where) == len(await api.select_dead_letters((), where))
    assert await api.count_dead_letters() == 3
    assert await api.count_dead_letters(DeadLetterFilter(handler="b")) == 1


async def test_stats_give_the_last_hour_per_minute_oldest_first(redis: FakeAsyncRedis) -> None:
    now_ms = int(time.time() * 1000)
    await redis.hset(keys.outcome_counts_key(now_ms), mapping={"done": 3, "retry": 1})
    await redis.hset(keys.outcome_counts_key(now_ms - 5 * 60_000), mapping={"done": 2})

    stats = await operator_api(redis).stats()

    assert len(stats.per_minute) == 60
    assert stats.per_minute[-1] == {"done": 3, "retry": 1}
    assert stats.per_minute[-6] == {"done": 2}
    assert stats.last_hour == {"done": 5, "retry": 1}
