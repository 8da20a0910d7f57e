"""Workers under a Redis that is full, stalled or restarted: they log, back off and carry on.

No worker exits, a handler that succeeded while its record could not be written is not run
again (its outcome is kept and the write retried), and each worker's ``/healthz`` answers 503
while Redis refuses it and 200 again after.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from tests.faults.fault_harness import Harness, LoopsClient, account, event_plan
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(150)

MIB = 1024 * 1024
FULL_SECONDS = 3.0
STALL_SECONDS = 3
DOWN_SECONDS = 1.5


async def fill(url: str) -> int:
    """Give Redis a small ``maxmemory`` (``noeviction``) and write filler until it refuses."""
    async with Redis.from_url(url) as client:
        used = int((await client.info("memory"))["used_memory"])
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set("maxmemory", used + 2 * MIB)
        written = 0
        try:
            while True:
                await client.set(f"filler:{written}", b"x" * 64 * 1024)
                written += 1
        except OutOfMemoryError:
            # Just past the limit, Redis is full only until it frees a buffer (the AOF's,
            # a client's): then small writes pass again. A limit below what is used now keeps
            # every write refused until free() lifts it.
            used = int((await client.info("memory"))["used_memory"])
            await client.config_set("maxmemory", max(1, used - MIB))
            return written


async def free(url: str, filler: int) -> None:
    async with Redis.from_url(url) as client:
        await client.delete(*(f"filler:{index}" for index in range(filler)))
        await client.config_set("maxmemory", 0)


async def healthz(session: aiohttp.ClientSession, port: int) -> int:
    async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
        return response.status


async def test_a_full_redis_makes_workers_back_off_unready_and_rerun_nothing_that_succeeded(
    harness: Harness, client: LoopsClient
) -> None:
    stream = asyncio.create_task(client.stream(event_plan(harness.sender, "full", 90), rate=30))

    async def some_acknowledged() -> bool:
        return len(client.acknowledged) >= 30

    await eventually(some_acknowledged, within=30, what="30 events acknowledged")
    filler = await fill(harness.redis.url)
    async with aiohttp.ClientSession() as session:

        async def both_unready() -> bool:
            harness.check_supervisor()
            statuses = [await healthz(session, port) for port in harness.worker_metrics_ports]
            return statuses == [503, 503]

        await eventually(both_unready, within=30, what="both workers' /healthz answer 503")
        await asyncio.sleep(FULL_SECONDS)
        await free(harness.redis.url, filler)
        await stream
        await harness.settle(within=60)

        async def both_ready() -> bool:
            statuses = [await healthz(session, port) for port in harness.worker_metrics_ports]
            return statuses == [200, 200]

        await eventually(both_ready, within=10, what="both workers' /healthz answer 200 again")

    result = await account(harness, client, "redis full under running workers")
    print(result.summary())
    result.assert_kept(harness.describe())
    assert result.worker_own_exits == 0, harness.describe()
    assert result.extra_invocations == 0, "a handler ran again after Redis was full"
    assert result.acknowledged == result.sent


async def test_workers_outlive_a_stalled_then_restarted_redis(
    harness: Harness, client: LoopsClient
) -> None:
    stream = asyncio.create_task(client.stream(event_plan(harness.sender, "stall", 240), rate=40))

    async def acknowledged(count: int) -> bool:
        return len(client.acknowledged) >= count

    await eventually(lambda: acknowledged(40), within=30, what="40 events acknowledged")
    stalled = harness.redis.stall(STALL_SECONDS, by="debug_sleep")
    await asyncio.to_thread(stalled.wait)
    await eventually(lambda: acknowledged(120), within=30, what="120 events acknowledged")
    await harness.redis_down(kill=True)
    await asyncio.sleep(DOWN_SECONDS)
    await harness.redis_up()
    await stream
    await harness.settle(within=60)

    result = await account(harness, client, "redis stalled, then SIGKILLed and restarted")
    print(result.summary())
    result.assert_kept(harness.describe())
    assert result.worker_own_exits == 0, harness.describe()
    assert result.acknowledged == result.sent
