"""Handlers that misbehave: one blocking the event loop, others raising BaseException.

A blocked loop must not let a second worker run the same event (the in-progress marker is
kept alive from a thread); a handler raising ``SystemExit``, ``KeyboardInterrupt`` or another
``BaseException`` is one failed attempt, and the slow handlers beside it complete once.
"""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from loops_webhooks.workers import keys
from tests.faults.fault_harness import Harness, LoopsClient
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)

BLOCK_SECONDS = 10
"""As ``fault_handlers.BLOCK_SECONDS`` (that module needs the workers' environment)."""

RAISING_TYPES = ("hostile.system_exit", "hostile.keyboard_interrupt", "hostile.base_exception")


async def submit(harness: Harness, event_type: str, count: int) -> list[str]:
    """Deliver ``count`` fresh events of ``event_type`` once each; their ids."""
    async with aiohttp.ClientSession() as session:
        client = LoopsClient(session, harness.receiver_url, harness.sender)
        ids = [f"evt_{event_type.split('.')[1]}_{index}" for index in range(count)]
        for event_id in ids:
            assert await client.deliver(event_id, harness.sender.event(event_id, event_type))
    return ids


async def handler_state(harness: Harness, event_id: str, handler: str) -> dict[str, object]:
    async with Redis.from_url(harness.redis.url) as store:
        raw = await store.hget(keys.event_key(event_id), f"handler:{handler}")
    return orjson.loads(raw) if raw else {}


async def test_a_handler_blocking_the_event_loop_never_runs_in_two_workers_at_once(
    harness: Harness,
) -> None:
    """The handler blocks longer than the in-progress marker lives: without the keeper
    thread, the other worker takes the event over while the first one is stuck."""
    [event_id] = await submit(harness, "hostile.blocks_loop", 1)

    async def done() -> bool:
        state = await handler_state(harness, event_id, "blocks_loop")
        return state.get("status") == "done"

    await eventually(done, within=BLOCK_SECONDS + 20, what="blocks_loop done")
    async with Redis.from_url(harness.effects_redis.url) as effects:
        max_running = await effects.hget("max_running", f"{event_id} blocks_loop")
    runs = await harness.invocations("blocks_loop")
    assert harness.supervisor is not None
    logs = "".join(log.read_text() for w in harness.supervisor.workers for log in w.logs)

    assert int(max_running or 0) == 1, "the event ran in two workers at once"
    assert runs == {event_id: 1}
    blocked = [line for line in logs.splitlines() if "event loop blocked" in line]
    assert blocked and '"blocks_loop"' in blocked[0], logs[-3000:]
    assert harness.supervisor.own_exits == 0


async def test_handlers_raising_base_exceptions_fail_an_attempt_and_bystanders_complete_once(
    harness: Harness,
) -> None:
    ids = [event_id for kind in RAISING_TYPES for event_id in await submit(harness, kind, 2)]

    async def all_finished() -> bool:
        harness.check_supervisor()
        states = [await handler_state(harness, event_id, "bystander") for event_id in ids]
        raising = [
            await handler_state(harness, event_id, "raises_base_exception") for event_id in ids
        ]
        return all(s.get("status") == "done" for s in states) and all(
            s.get("status") == "dead" for s in raising
        )

    await eventually(all_finished, within=40, what="bystanders done, raisers dead-lettered")
    bystander_runs = await harness.invocations("bystander")
    raiser_runs = await harness.invocations("raises_base_exception")
    assert harness.supervisor is not None
    logs = "".join(log.read_text() for w in harness.supervisor.workers for log in w.logs)

    assert harness.supervisor.own_exits == 0, harness.describe()
    assert bystander_runs == {event_id: 1 for event_id in ids}
    assert raiser_runs == {event_id: 2 for event_id in ids}
    for name in ("SystemExit", "KeyboardInterrupt", "ProcessLevelError"):
        assert "Traceback" in logs and name in logs, name
    letters = await harness.dead_letter_ids()
    assert sorted(letters) == sorted(f"{event_id}:raises_base_exception" for event_id in ids)
