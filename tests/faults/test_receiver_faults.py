"""The receiver is SIGKILLed mid-stream and restarted: clients redeliver what got no 2xx, as
Loops does, and every event ends handled exactly once."""

from __future__ import annotations

import asyncio

import pytest

from tests.faults.fault_harness import Harness, LoopsClient, account, event_plan
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(150)


async def test_receiver_sigkilled_mid_stream_loses_no_event_as_clients_redeliver(
    harness: Harness, client: LoopsClient
) -> None:
    stream = asyncio.create_task(client.stream(event_plan(harness.sender, "recv", 300), rate=30))
    for threshold in (80, 180):

        async def reached(threshold: int = threshold) -> bool:
            return len(client.acknowledged) >= threshold

        await eventually(reached, within=30, what=f"{threshold} events acknowledged")
        await harness.kill_receiver_and_restart()
    await stream
    await harness.settle(within=45)

    result = await account(harness, client, "receiver SIGKILLed and restarted twice")
    print(result.summary())
    result.assert_kept(harness.describe())
    assert result.acknowledged == result.sent
    assert result.receiver_restarts == 2
    assert sum(n for answer, n in result.answers.items() if not answer.startswith("2")) > 0
    assert result.invocations == result.handled_pairs  # no worker fault: each ran exactly once
