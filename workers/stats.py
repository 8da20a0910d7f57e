"""What ``loops-webhooks stats`` shows: the queue, the retries, the dead letters, the last hour."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from redis.asyncio import Redis

from loops_webhooks.workers import keys
from loops_webhooks.workers.scripts import register_script

__all__ = ["QueueFigures", "Stats", "collect_stats", "queue_figures"]

WINDOW_MINUTES = 60


@dataclass(frozen=True, slots=True)
class Stats:
    """``queued`` is ready and waiting, ``running`` taken by a worker, ``scheduled_retries``
    due later; ``last_hour`` counts handler outcomes (done, retry, dead_letter, unhandled),
    ``per_minute`` the same per minute, oldest first, the current minute last (a chart's
    series: sixty entries, an empty one for a quiet minute)."""

    queued: int
    running: int
    scheduled_retries: int
    pending_events: int
    dead_letters: int
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)
    last_hour: dict[str, int] = field(default_factory=dict)
    oldest_pending_age_seconds: float | None = None
    per_minute: list[dict[str, int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class QueueFigures:
    """The cheap figures (one round trip), for ``stats`` and the worker's gauges alike.

    ``due`` counts jobs whose time has come, waiting or running; ``scheduled`` those due later.
    """

    due: int
    scheduled: int
    pending_events: int
    dead_letters: int
    oldest_pending_age_seconds: float | None


async def queue_figures(redis: Redis, *, queue_name: str) -> QueueFigures:
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcount(queue_name, "-inf", now_ms)
        pipe.zcount(queue_name, f"({now_ms}", "+inf")
        pipe.zcard(keys.PENDING_EVENTS)
        pipe.zrange(keys.PENDING_EVENTS, 0, 0, withscores=True)
        pipe.zcard(keys.DEAD_LETTER_INDEX)
        due, scheduled, pending, oldest, dead = await pipe.execute()
    return QueueFigures(
        due=due,
        scheduled=scheduled,
        pending_events=pending,
        dead_letters=dead,
        oldest_pending_age_seconds=(now_ms - oldest[0][1]) / 1000 if oldest else None,
    )


async def collect_stats(redis: Redis, *, queue_name: str) -> Stats:
    figures = await queue_figures(redis, queue_name=queue_name)
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.DEAD_LETTER_REASON_COUNTS)
        for minute in range(WINDOW_MINUTES):
            pipe.hgetall(keys.outcome_counts_key(now_ms - minute * 60_000))
        stored_counts, *minutes = await pipe.execute()
    running = 0
    async for _ in redis.scan_iter(match=keys.ARQ_EVENT_JOBS_IN_PROGRESS, count=1000):
        running += 1
    by_reason = {
        name.decode(): int(count) for name, count in stored_counts.items() if int(count) > 0
    }
    if sum(by_reason.values()) != figures.dead_letters:
        by_reason = await _count_reasons_letter_by_letter(redis)
    per_minute = [
        {name.decode(): int(value) for name, value in counts.items()} for counts in minutes
    ]
    per_minute.reverse()
    last_hour: Counter[str] = Counter()
    for counts in per_minute:
        last_hour.update(counts)
    return Stats(
        queued=max(0, figures.due - running),
        running=running,
        scheduled_retries=figures.scheduled,
        pending_events=figures.pending_events,
        dead_letters=figures.dead_letters,
        dead_letters_by_reason=by_reason,
        last_hour=dict(last_hour),
        oldest_pending_age_seconds=figures.oldest_pending_age_seconds,
        per_minute=per_minute,
    )


async def _count_reasons_letter_by_letter(redis: Redis) -> dict[str, int]:
    """The slow way, when the kept counts disagree with the index (letters stored before the
    counts were kept): reads every letter's reason, in one script that also stores the result,
    so the next call is the fast one again."""
    reply = await register_script(redis, "recount_dead_letter_reasons")(
        keys=[keys.DEAD_LETTER_INDEX, keys.DEAD_LETTER_REASON_COUNTS],
        args=[keys.DEAD_LETTER_PREFIX],
    )
    return {reply[i].decode(): int(reply[i + 1]) for i in range(0, len(reply), 2)}
