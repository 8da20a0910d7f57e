"""Redis dies (SIGKILL) or goes down: what it acknowledged survives on its AOF and is handled;
while it is down the receiver promises nothing (503), and accepts again once it is back."""

from __future__ import annotations

import asyncio

import pytest

from tests.faults.fault_harness import Harness, LoopsClient, account, event_plan
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(150)

REDIS_DOWN_SECONDS = 1.0


async def test_redis_sigkilled_mid_stream_keeps_every_acknowledged_event_and_handles_it(
    harness: Harness, client: LoopsClient
) -> None:
    stream = asyncio.create_task(client.stream(event_plan(harness.sender, "rkill", 300), rate=30))

    async def a_third_acknowledged() -> bool:
        return len(client.acknowledged) >= 100

    await eventually(a_third_acknowledged, within=30, what="100 events acknowledged")
    await harness.redis_down(kill=True)
    acknowledged_before_the_kill = set(client.acknowledged)
    await asyncio.sleep(REDIS_DOWN_SECONDS)
    await harness.redis_up()
    survived = await harness.stored(acknowledged_before_the_kill)
    await stream
    await harness.settle(within=60)

    result = await account(harness, client, "redis SIGKILLed and restarted mid-stream")
    print(result.summary())
    assert [event_id for event_id, kept in survived.items() if not kept] == []
    result.assert_kept(harness.describe())
    assert result.acknowledged == result.sent
    assert sum(n for answer, n in result.answers.items() if not answer.startswith("2")) > 0


async def test_while_redis_is_down_every_request_gets_503_and_events_after_its_return_are_accepted(
    harness: Harness, client: LoopsClient
) -> None:
    await client.stream(event_plan(harness.sender, "before", 100), rate=50)
    await harness.redis_down(kill=False)

    during = event_plan(harness.sender, "during", 50)
    answers = []
    for send in during:
        answers.append(await client.post_once(send.event_id, send.body))
    await harness.redis_up()
    stored_during = await harness.stored(send.event_id for send in during)
    redelivered = [*event_plan(harness.sender, "after", 100), *during]
    await client.stream(redelivered, rate=50)
    await harness.settle(within=60)

    result = await account(harness, client, "redis down, then back")
    print(result.summary())
    assert [status for status, _ in answers] == ["503"] * len(during)
    assert all(headers.get("Retry-After") for _, headers in answers)
    assert not any(stored_during.values())
    result.assert_kept(harness.describe())
    assert result.acknowledged == result.sent
