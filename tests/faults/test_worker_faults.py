"""Workers die, SIGKILLed from outside or by their own handler: nothing acknowledged is lost,
no effect is made twice, and what cannot succeed waits in the dead-letter queue for a replay."""

from __future__ import annotations

import asyncio

import pytest

from tests.faults.fault_harness import (
    EXPIRED,
    FAILED,
    Harness,
    LoopsClient,
    account,
    event_plan,
)

pytestmark = pytest.mark.timeout(150)

KILL_EVERY_SECONDS = 2.0
MAX_KILLS = 30


async def kill_workers_until(harness: Harness, done: asyncio.Task[None]) -> None:
    """SIGKILL the two workers in turn every two seconds until ``done`` finishes."""
    for kill in range(MAX_KILLS):
        finished, _ = await asyncio.wait({done}, timeout=KILL_EVERY_SECONDS)
        if finished:
            return
        harness.kill_worker(kill % 2)


async def test_workers_sigkilled_every_two_seconds_lose_no_event_and_make_each_effect_once(
    harness: Harness, client: LoopsClient
) -> None:
    stream = asyncio.create_task(client.stream(event_plan(harness.sender, "kill", 300), rate=30))
    await kill_workers_until(harness, stream)
    await stream

    await harness.settle(within=60)

    result = await account(harness, client, "workers SIGKILLed every 2 s")
    print(result.summary())
    result.assert_kept(harness.describe())
    assert result.acknowledged == result.sent
    assert result.worker_kills >= 4


async def test_poison_events_are_dead_lettered_and_end_handled_after_a_fix_and_a_replay(
    harness: Harness, client: LoopsClient
) -> None:
    plan = event_plan(harness.sender, "busy", 120)
    raising = event_plan(harness.sender, "raises", 3, types=[FAILED])
    exiting = event_plan(harness.sender, "exits", 2, types=[EXPIRED])
    for position, poison in zip((10, 30, 50, 70, 90), raising + exiting, strict=True):
        plan.insert(position, poison)
    expected_letters = {f"{send.event_id}:notify_support" for send in raising}
    expected_letters |= {f"{send.event_id}:release_stock" for send in exiting}

    await client.stream(plan, rate=40)
    await harness.settle(within=60)

    before = await account(harness, client, "poison events, before the fix")
    print(before.summary())
    before.assert_kept(harness.describe())
    assert set(await harness.dead_letter_ids()) == expected_letters
    for letter_id in expected_letters:
        letter = await harness.dead_letter(letter_id)
        limit = 3 if letter_id.endswith(":notify_support") else 2
        assert (letter["reason"], letter["attempts"]) == ("max_attempts", str(limit)), letter
    assert harness.supervisor is not None
    assert harness.supervisor.own_exits >= 2
    audits_before = await harness.invocations("audit")

    harness.fix_handlers()
    replay = await harness.replay_all_dead_letters()
    assert replay.returncode == 0, replay.stderr
    assert "replayed 5, skipped 0, already gone 0" in replay.stdout
    await harness.settle(within=30)

    after = await account(harness, client, "poison events, after the fix and a replay")
    print(after.summary())
    after.assert_kept(harness.describe())
    assert await harness.dead_letter_ids() == []
    assert after.dead_lettered_pairs == 0
    assert after.handled_pairs == before.handled_pairs + len(expected_letters)
    assert await harness.invocations("audit") == audits_before
