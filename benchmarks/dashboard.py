"""Dashboard timings with 10,000 events and 10,000 dead letters in Redis.

Starts a dedicated ``redis-server`` (no persistence, loopback only), seeds it through the
workers' own APIs (``EventIntake.submit`` then ``EventStore.finish``: every event has one
handler done and one dead-lettered, so there are as many dead letters as events, of two
handlers and two reasons), starts ``loops-webhooks dashboard`` against it and times pages and
API calls with one client, one request at a time. Prints the median and the slowest of
``--rounds`` requests per target; writes the figures as JSON to
``benchmarks/results/dashboard-<timestamp>.json``.

    python benchmarks/dashboard.py [--events 10000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, run as a script
from loops_webhooks.embedded_redis import find_redis_server
from tests.support.ports import free_port, wait_for_port
from tests.support.processes import pinned_process

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TOKEN = "bench-dashboard-token-6c0e2f9b41d7a358"
EVENT_TYPE = "checkout.session.completed"
TARGETS = [
    ("page: overview", "/"),
    ("page: events", "/events"),
    ("page: dead letters", "/dead-letters"),
    ("page: dead letters, one handler", "/dead-letters?handler=shop:audit"),
    ("api: stats", "/api/stats"),
    ("api: events, 50", "/api/events?limit=50"),
    ("api: events, status dead, 50", "/api/events?status=dead&limit=50"),
    ("api: dead letters, 50", "/api/dead-letters?limit=50"),
    ("api: dead letters, one reason, 50", "/api/dead-letters?reason=rejected&limit=50"),
]


async def seed(redis_url: str, count: int) -> None:
    from redis.asyncio import Redis

    from loops_webhooks.settings import Settings
    from loops_webhooks.workers.dead_letters import DeadLetter
    from loops_webhooks.workers.event_store import EventStore, HandlerState, HandlerStatus
    from loops_webhooks.workers.intake import EventIntake, ReceivedEvent
    from loops_webhooks.workers.keys import dead_letter_id

    settings = Settings()
    redis = Redis.from_url(redis_url)
    intake = EventIntake(redis, queue_name=settings.queue_name)
    store = EventStore(redis, dedupe_ttl_seconds=settings.dedupe_ttl_seconds)
    now_ms = int(time.time() * 1000)
    try:
        for start in range(0, count, 500):
            numbers = range(start, min(start + 500, count))
            events = [
                ReceivedEvent(
                    f"evt_seed_{n:06d}",
                    EVENT_TYPE,
                    orjson.dumps({"id": f"evt_seed_{n:06d}", "type": EVENT_TYPE, "data": {}}),
                    {"content-type": "application/json"},
                    now_ms - (count - n) * 100,
                )
                for n in numbers
            ]
            await asyncio.gather(*(intake.submit(event) for event in events))

            async def finish(n: int) -> None:
                stored = await store.get(f"evt_seed_{n:06d}")
                assert stored is not None
                dead = "shop:audit" if n % 3 == 0 else "shop:notify"
                letter = DeadLetter(
                    id=dead_letter_id(stored.event_id, dead),
                    reason="rejected" if n % 2 else "max_attempts",
                    event_id=stored.event_id,
                    handler=dead,
                    error_type="RuntimeError",
                    error_message="mail server said no",
                    traceback="Traceback (most recent call last):\n  ...\nRuntimeError\n",
                    attempts=3,
                    dead_lettered_at=stored.received_at_ms + 50,
                )
                states = {
                    "shop:fulfil": HandlerState(status=HandlerStatus.DONE, attempts=1),
                    dead: HandlerState(status=HandlerStatus.DEAD, attempts=3),
                }
                await store.finish(
                    stored,
                    states,
                    ["shop:fulfil", dead],
                    [letter],
                    now_ms=stored.received_at_ms + 50,
                    outcome="dead",
                )

            await asyncio.gather(*(finish(n) for n in numbers))
    finally:
        await redis.aclose()


async def measure(base_url: str, rounds: int) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    jar = aiohttp.CookieJar(unsafe=True)  # keep the session cookie of 127.0.0.1
    async with aiohttp.ClientSession(base_url, cookie_jar=jar) as client:
        login = await client.post("/login", data={"token": TOKEN}, allow_redirects=False)
        assert login.status == 303, login.status
        for name, path in TARGETS:
            timings = []
            size = 0
            for _ in range(rounds):
                started = time.perf_counter()
                # pages as a browser asks for them (the session cookie), the API with the token
                headers = bearer if path.startswith("/api/") else None
                async with client.get(path, headers=headers) as response:
                    body = await response.read()
                    assert response.status == 200, (path, response.status, body[:200])
                timings.append((time.perf_counter() - started) * 1000)
                size = len(body)
            figures[name] = {
                "median_ms": round(statistics.median(timings), 1),
                "max_ms": round(max(timings), 1),
                "bytes": size,
            }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        redis_port, dashboard_port = free_port(), free_port()
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        redis_command = [str(find_redis_server()), "--port", str(redis_port), "--bind",
                         "127.0.0.1", "--save", "", "--appendonly", "no"]  # fmt: skip
        with pinned_process(redis_command, 1, directory / "redis.log") as redis:
            wait_for_port(redis_port, redis)
            started = time.perf_counter()
            asyncio.run(seed(redis_url, args.events))
            print(f"seeded {args.events} events and dead letters in "
                  f"{time.perf_counter() - started:.1f} s")  # fmt: skip
            command = [str(Path(sys.executable).parent / "loops-webhooks"), "dashboard",
                       "--port", str(dashboard_port)]  # fmt: skip
            env = {"REDIS_URL": redis_url, "LOOPS_DASHBOARD_TOKEN": TOKEN,
                   "LOOPS_LOG_LEVEL": "warning"}  # fmt: skip
            log = directory / "dashboard.log"
            with pinned_process(command, 0, log, env) as dashboard:
                wait_for_port(dashboard_port, dashboard, log)
                figures = asyncio.run(measure(f"http://127.0.0.1:{dashboard_port}", args.rounds))
    width = max(len(name) for name in figures)
    print(f"{'target':<{width}}  median ms  max ms  bytes")
    for name, row in figures.items():
        print(f"{name:<{width}}  {row['median_ms']:>9}  {row['max_ms']:>6}  {row['bytes']:>5}")
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result = {"events": args.events, "dead_letters": args.events, "rounds": args.rounds,
              "figures": figures}  # fmt: skip
    (RESULTS_DIR / f"dashboard-{stamp}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
