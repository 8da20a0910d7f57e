"""Retention: Redis's memory at a sustained intake, and what one event, search entry and dead
letter cost.

Starts its own ``redis-server`` (loopback, no persistence: ``used_memory`` is the figure, and
persistence does not change it) and ``--workers`` real ``loops-webhooks worker`` processes
(on cores 0, 1, 0, ...) with ``LOOPS_DEDUPE_TTL_SECONDS=--ttl`` and
``LOOPS_RECONCILE_INTERVAL_SECONDS=--interval``,
whose handlers do nothing for ``checkout.session.completed`` and reject
``checkout.session.expired`` (a dead letter), then two phases:

1. **Cost per item.** ``--sample`` events are stored through ``EventIntake.submit`` (the
   receiver's producer API) and handled, three times: without search terms, with them
   (session, customer, order: what the receiver indexes by default), and of the rejected
   type. ``used_memory`` before and after each, once every job is done, gives the bytes of
   one finished event, of one search entry and of one dead letter (with the dead event's
   record, which is kept while it has a letter).
2. **Trimming capacity.** With no worker running, ``--trim-events`` events received longer
   ago than the TTL, each with its search terms, their records deleted as their expiry
   would; one ``Reconciler.trim_indexes`` pass is timed: the index and search entries it
   removes a second, against the intake rate it must keep up with.
3. **Sustained intake.** ``--rate`` events a second for ``--minutes``, sent open loop (each
   tick's batch is due by the clock, not by the previous answer), each with its search terms;
   every ``--every`` seconds a line: events sent, pending, ``used_memory``, the event index's
   size, the number of keys (each search index is one key). With the trimming keeping up,
   memory and index level off after ``--ttl`` seconds instead of growing.

Everything listens on 127.0.0.1. Prints the lines and a summary; JSON to
``benchmarks/results/retention-<UTC time>.json``. See ``benchmarks/README.md``.

    python benchmarks/retention.py [--rate 1000] [--minutes 5] [--ttl 60] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, run as a script
from worker import event_body, start_redis

from loops_webhooks.settings import Settings
from loops_webhooks.workers import keys
from loops_webhooks.workers.intake import EventIntake, ReceivedEvent, received_event
from loops_webhooks.workers.reconciler import Reconciler
from tests.support.processes import pinned_process

RESULTS_DIR = Path(__file__).resolve().parent / "results"
HANDLERS = """
from loops_webhooks.handlers import Reject, Router

router = Router()


@router.on("checkout.session.completed", name="noop")
async def noop(event, ctx):
    pass


@router.on("checkout.session.expired", name="reject")
async def reject(event, ctx):
    raise Reject("expired")
"""
COMPLETED = "checkout.session.completed"
EXPIRED = "checkout.session.expired"
TICK_SECONDS = 0.01
SETTLE_TIMEOUT_SECONDS = 300.0
COST_PHASE_TTL_SECONDS = 86_400
"""While the costs are measured nothing may expire."""


class Load:
    """Makes events and submits them as the receiver would."""

    def __init__(self, intake: EventIntake, metadata_keys: tuple[str, ...]) -> None:
        self._intake = intake
        self._metadata_keys = metadata_keys
        self.sent = 0

    def event(self, n: int, event_type: str, *, searchable: bool) -> ReceivedEvent:
        raw = event_body(n)
        if event_type != COMPLETED:
            raw = raw.replace(COMPLETED.encode(), event_type.encode())
        headers = {"content-type": "application/json", "loops-signature": "0" * 64}
        metadata_keys = self._metadata_keys if searchable else ()
        event = received_event(
            f"evt_bench_{n:09d}",
            event_type,
            raw,
            headers,
            int(time.time() * 1000),
            orjson.loads(raw),
            metadata_keys=metadata_keys,
        )
        return event if searchable else event._replace(search_terms=())

    async def submit(self, events: list[ReceivedEvent]) -> None:
        created = await asyncio.gather(*(self._intake.submit(event) for event in events))
        assert all(created), "an event id was sent twice"
        self.sent += len(events)


async def settled(redis: Any) -> None:
    """Wait until every stored event is finished (none pending, no job queued)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_SECONDS
    while await redis.zcard(keys.PENDING_EVENTS):
        if time.monotonic() > deadline:
            raise SystemExit("the workers did not finish the sample in time")
        await asyncio.sleep(0.2)


async def used_memory(redis: Any) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def cost_per_item(redis: Any, load: Load, sample: int) -> dict[str, float]:
    """Bytes of one finished event, one search entry and one dead letter."""
    terms_per_event = len(load.event(0, COMPLETED, searchable=True).search_terms)
    figures: dict[str, float] = {}
    first = 10_000_000
    for name, event_type, searchable in (
        ("event", COMPLETED, False),
        ("searchable_event", COMPLETED, True),
        ("dead_letter", EXPIRED, False),
    ):
        await settled(redis)
        before = await used_memory(redis)
        for start in range(first, first + sample, 500):
            count = min(500, first + sample - start)
            await load.submit(
                [
                    load.event(n, event_type, searchable=searchable)
                    for n in range(start, start + count)
                ]
            )
        await settled(redis)
        figures[name] = (await used_memory(redis) - before) / sample
        first += sample
    return {
        "bytes_per_finished_event": round(figures["event"]),
        "bytes_per_search_entry": round(
            (figures["searchable_event"] - figures["event"]) / terms_per_event
        ),
        "bytes_per_dead_letter": round(figures["dead_letter"] - figures["event"]),
        "bytes_per_dead_event_and_letter": round(figures["dead_letter"]),
        "search_terms_per_event": terms_per_event,
        "body_bytes": len(event_body(0)),
    }


async def sustained(
    redis: Any, load: Load, rate: int, seconds: float, every: float
) -> list[dict[str, Any]]:
    """Offer ``rate`` events a second; a sample of Redis's figures every ``every`` s."""
    samples: list[dict[str, Any]] = []
    start = time.monotonic()
    next_sample = start
    n = 0
    late = 0
    while (elapsed := time.monotonic() - start) < seconds:
        if time.monotonic() >= next_sample:
            sample = await snapshot(redis, elapsed, load.sent)
            samples.append(sample)
            print(
                f"{sample['seconds']:7.0f} s  sent {sample['sent']:8d}  "
                f"pending {sample['pending']:6d}  used_memory {sample['used_memory_mib']:7.1f} MiB"
                f"  event index {sample['event_index']:7d}  keys {sample['keys']:8d}",
                flush=True,
            )
            next_sample += every
        due = int(rate * (time.monotonic() - start)) - n  # by the clock: open loop
        await load.submit([load.event(n + i, COMPLETED, searchable=True) for i in range(due)])
        n += due
        pause = TICK_SECONDS - (time.monotonic() - start - elapsed)
        if pause > 0:
            await asyncio.sleep(pause)
        else:
            late += 1
    samples.append(await snapshot(redis, time.monotonic() - start, load.sent))
    samples[-1]["late_ticks"] = late
    return samples


async def snapshot(redis: Any, elapsed: float, sent: int) -> dict[str, Any]:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.info("memory")
        pipe.zcard(keys.PENDING_EVENTS)
        pipe.zcard(keys.EVENT_INDEX)
        pipe.dbsize()
        memory, pending, index, dbsize = await pipe.execute()
    return {
        "seconds": round(elapsed, 1),
        "sent": sent,
        "pending": pending,
        "used_memory_mib": round(memory["used_memory"] / 2**20, 1),
        "event_index": index,
        "keys": dbsize,
    }


async def measure_costs(redis_url: str, sample: int) -> dict[str, float]:
    from redis.asyncio import Redis

    settings = Settings()
    async with Redis.from_url(redis_url) as redis:
        load = Load(
            EventIntake(redis, queue_name=settings.queue_name), settings.search_metadata_keys
        )
        costs = await cost_per_item(redis, load, sample)
        await redis.flushdb()
    return costs


async def measure_trim(redis_url: str, count: int, ttl: int, interval: float) -> dict[str, float]:
    from redis.asyncio import Redis

    settings = Settings()
    async with Redis.from_url(redis_url) as redis:
        load = Load(
            EventIntake(redis, queue_name=settings.queue_name), settings.search_metadata_keys
        )
        long_ago = int(time.time() * 1000) - (ttl + 60) * 1000
        for start in range(0, count, 1000):
            events = [
                load.event(n, COMPLETED, searchable=True)._replace(received_at_ms=long_ago)
                for n in range(start, min(start + 1000, count))
            ]
            await load.submit(events)
            await redis.delete(*(keys.event_key(event.event_id) for event in events))
        reconciler = Reconciler(
            redis,
            queue_name=settings.queue_name,
            interval_seconds=interval,
            grace_seconds=0,
            dedupe_ttl_seconds=ttl,
            dead_letter_retention_days=None,
        )
        started = time.perf_counter()
        removed = await reconciler.trim_indexes(int(time.time() * 1000))
        seconds = time.perf_counter() - started
        left = await redis.zcard(keys.EVENT_INDEX) + await redis.hlen(keys.SEARCH_TERMS)
        await redis.flushdb()
    return {
        "events_trimmed": removed,
        "entries_left": left,
        "seconds": round(seconds, 2),
        "events_per_second": round(removed / seconds),
    }


async def measure_sustained(args: argparse.Namespace, redis_url: str) -> list[dict[str, Any]]:
    from redis.asyncio import Redis

    settings = Settings()
    async with Redis.from_url(redis_url) as redis:
        load = Load(
            EventIntake(redis, queue_name=settings.queue_name), settings.search_metadata_keys
        )
        return await sustained(redis, load, args.rate, args.minutes * 60, args.every)


@contextlib.contextmanager
def workers(
    args: argparse.Namespace, workdir: Path, redis_url: str, ttl: int, phase: str
) -> Iterator[None]:
    env = {
        "REDIS_URL": redis_url,
        "PYTHONPATH": str(workdir),
        "LOOPS_HANDLERS": "bench_handlers:router",
        "LOOPS_DEDUPE_TTL_SECONDS": str(ttl),
        "LOOPS_RECONCILE_INTERVAL_SECONDS": str(args.interval),
        "LOOPS_LOG_LEVEL": "warning",
        "LOOPS_METRICS_PORT": "0",
        "LOOPS_MAX_ATTEMPTS": "1",
    }
    command = [str(Path(sys.executable).parent / "loops-webhooks"), "worker"]
    with contextlib.ExitStack() as stack:
        for index in range(args.workers):
            log = workdir / f"worker-{phase}-{index}.log"
            stack.enter_context(pinned_process(command, index % 2, log, env))
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=1000, help="events a second (%(default)s)")
    parser.add_argument("--minutes", type=float, default=5, help="of sustained load (%(default)s)")
    parser.add_argument("--ttl", type=int, default=60, help="dedupe TTL, s (%(default)s)")
    parser.add_argument("--interval", type=float, default=5, help="reconcile, s (%(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="(%(default)s)")
    parser.add_argument("--sample", type=int, default=20_000, help="items per cost (%(default)s)")
    parser.add_argument("--every", type=float, default=15, help="seconds a sample (%(default)s)")
    parser.add_argument(
        "--trim-events", type=int, default=120_000, help="for the trimming (%(default)s)"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="loops-retention-") as tmp:
        workdir = Path(tmp)
        (workdir / "bench_handlers.py").write_text(HANDLERS)
        redis_process, redis_url = start_redis(workdir)
        try:
            with workers(args, workdir, redis_url, COST_PHASE_TTL_SECONDS, "costs"):
                costs = asyncio.run(measure_costs(redis_url, args.sample))
            print("cost per item (used_memory delta / items):")
            for name, value in costs.items():
                print(f"  {name}: {value}")
            trim = asyncio.run(measure_trim(redis_url, args.trim_events, args.ttl, args.interval))
            print(
                f"trimming: {trim['events_trimmed']} expired events and their search entries "
                f"in {trim['seconds']} s, {trim['events_per_second']} events/s "
                f"({trim['entries_left']} entries left)"
            )
            with workers(args, workdir, redis_url, args.ttl, "sustained"):
                samples = asyncio.run(measure_sustained(args, redis_url))
        finally:
            redis_process.terminate()
            redis_process.wait()

    warm = args.ttl + 4 * args.interval
    plateau = [s["used_memory_mib"] for s in samples if s["seconds"] >= warm]
    indexes = [s["event_index"] for s in samples if s["seconds"] >= warm]
    if plateau:
        print(
            f"after the first {warm:g} s: used_memory min {min(plateau)} / median "
            f"{statistics.median(plateau)} / max {max(plateau)} MiB; event index min "
            f"{min(indexes)} / max {max(indexes)}; ticks late: {samples[-1]['late_ticks']}"
        )
    RESULTS_DIR.mkdir(exist_ok=True)
    moment = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"retention-{moment}.json"
    report = {"args": vars(args), "machine": platform.platform(), "costs": costs, "trim": trim}
    path.write_text(json.dumps({**report, "samples": samples}, indent=2))
    print(f"wrote {path.relative_to(RESULTS_DIR.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
