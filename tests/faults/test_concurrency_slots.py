"""A worker holding concurrency slots is SIGKILLed: its slots are not given back by anyone,
so they must lapse with its in-progress markers, and the handler's work goes on.

The handler has one attempt, so the killed runs' events are dead-lettered when their jobs
are taken over (crashed out) without running again: only the lapse frees their slots."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from loops_webhooks.settings import Settings
from loops_webhooks.workers import keys
from loops_webhooks.workers.intake import EventIntake, ReceivedEvent
from loops_webhooks.workers.runner import IN_PROGRESS_MARGIN_SECONDS, JOB_MARGIN_SECONDS
from tests.support.loops_sender import LoopsSender
from tests.support.processes import Service, clean_environment
from tests.support.redis_server import RedisServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)

HANDLER_TIMEOUT_SECONDS = 3
SLOT_LIFETIME_SECONDS = HANDLER_TIMEOUT_SECONDS + JOB_MARGIN_SECONDS + IN_PROGRESS_MARGIN_SECONDS
"""A slot lives as long as its job's in-progress marker, renewed while its worker lives."""

RENEWAL_SECONDS = 1.0
QUEUE: str = Settings.model_fields["queue_name"].default

HANDLERS = """
import asyncio
import os
import time

from loops_webhooks.handlers import Router

router = Router()


@router.on("checkout.session.completed", name="erp", concurrency=2, max_attempts=1)
async def erp(event, ctx):
    with open(os.environ["EFFECTS_FILE"], "a") as effects:
        effects.write(f"{ctx.event_id} {os.getpid()} {time.time()}\\n")
    if os.path.exists(os.environ["HANG_FLAG"]):
        await asyncio.sleep(3600)
"""


class World:
    def __init__(self, root: Path, redis_server: RedisServer) -> None:
        self.root = root
        self.redis_server = redis_server
        self.effects = root / "effects.txt"
        self.hang = root / "hang"
        (root / "slot_handlers.py").write_text(HANDLERS)
        self.redis = Redis.from_url(redis_server.url)
        self.workers: list[Service] = []

    def start_worker(self) -> Service:
        env = clean_environment(
            {
                "REDIS_URL": self.redis_server.url,
                "PYTHONPATH": str(self.root),
                "PYTHONUNBUFFERED": "1",
                "LOOPS_HANDLERS": "slot_handlers:router",
                "LOOPS_LOG_FORMAT": "json",
                "LOOPS_METRICS_PORT": "0",
                "LOOPS_HANDLER_TIMEOUT_SECONDS": str(HANDLER_TIMEOUT_SECONDS),
                "EFFECTS_FILE": str(self.effects),
                "HANG_FLAG": str(self.hang),
            }
        )
        worker = Service(f"worker-{len(self.workers)}", ["worker"], env, self.root)
        worker.start()
        self.workers.append(worker)
        return worker

    def runs(self) -> list[tuple[str, int, float]]:
        """(event id, worker pid, start time) of every run so far."""
        if not self.effects.exists():
            return []
        lines = self.effects.read_text().splitlines()
        return [(e, int(pid), float(at)) for e, pid, at in (line.split() for line in lines)]

    def output(self) -> str:
        return "\n".join(worker.output_tail() for worker in self.workers)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    redis_server = RedisServer(tmp_path / "redis", appendfsync=None)
    redis_server.start()
    world = World(tmp_path, redis_server)
    try:
        yield world
    finally:
        for worker in world.workers:
            worker.stop()
        await world.redis.aclose()
        redis_server.close()


async def submit(world: World, loops: LoopsSender, event_id: str) -> None:
    body = loops.event(event_id)
    received = ReceivedEvent(
        event_id, "checkout.session.completed", body, loops.headers(body), int(time.time() * 1000)
    )
    assert await EventIntake(world.redis, queue_name=QUEUE).submit(received)


async def test_the_slots_of_a_sigkilled_worker_come_back_within_the_in_progress_lifetime(
    world: World, loops: LoopsSender
) -> None:
    world.hang.touch()
    doomed = world.start_worker()
    for event_id in ("evt_held_1", "evt_held_2"):
        await submit(world, loops, event_id)

    async def both_slots_held() -> bool:
        return (
            len(world.runs()) == 2 and await world.redis.zcard(keys.handler_slots_key("erp")) == 2
        )

    await eventually(
        both_slots_held, within=30, what="two runs hold both slots", details=world.output
    )
    doomed.kill()
    killed_at = time.time()
    world.hang.unlink()
    world.start_worker()
    await submit(world, loops, "evt_after")

    async def settled() -> bool:
        statuses = [
            await world.redis.hget(keys.event_key(event_id), "status")
            for event_id in ("evt_held_1", "evt_held_2", "evt_after")
        ]
        return statuses == [b"dead", b"dead", b"done"]

    await eventually(
        settled,
        within=SLOT_LIFETIME_SECONDS + 20,
        what="the killed runs dead-lettered and the next event done once the slots lapsed",
        details=world.output,
    )
    runs_after = [(e, at) for e, pid, at in world.runs() if pid != doomed.process.pid]
    assert [e for e, _ in runs_after] == ["evt_after"]
    assert await world.redis.zcard(keys.handler_slots_key("erp")) == 0
    # Held until the dead worker's slots lapsed: no sooner than their lifetime after its
    # last renewal, which was at most a renewal interval before the kill.
    assert runs_after[0][1] >= killed_at + SLOT_LIFETIME_SECONDS - RENEWAL_SECONDS - 0.5
