"""The primary of a Sentinel group is SIGKILLed mid-stream: Sentinel promotes a replica, the
receiver and workers follow it without a restart, and no acknowledged event is lost, because
with ``LOOPS_REDIS_MIN_REPLICAS=1`` an event is acknowledged only once a replica holds it."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.faults.fault_harness import Harness, LoopsClient, account, event_plan
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def sentinel() -> bool:
    return True


async def test_primary_sigkilled_mid_stream_fails_over_and_keeps_every_acknowledged_event(
    harness: Harness, client: LoopsClient
) -> None:
    assert harness.sentinel_group is not None
    stream = asyncio.create_task(client.stream(event_plan(harness.sender, "ha", 300), rate=30))

    async def a_third_acknowledged() -> bool:
        return len(client.acknowledged) >= 100

    await eventually(a_third_acknowledged, within=30, what="100 events acknowledged")
    old_primary = harness.store_url()
    killed_at = time.monotonic()
    await asyncio.to_thread(harness.sentinel_group.kill_primary)
    acknowledged_before_the_kill = set(client.acknowledged)

    def accepted_again() -> float | None:
        """When the first request sent after the kill got a 2xx, if one has."""
        accepted = [
            end for sent, end, answer in client.timeline if sent > killed_at and answer[0] == "2"
        ]
        return min(accepted, default=None)

    async def accepting_again() -> bool:
        return accepted_again() is not None

    await eventually(accepting_again, within=30, what="events accepted after the failover")
    await stream
    await harness.settle(within=60)
    recovered_at = accepted_again()
    assert recovered_at is not None
    new_primary = harness.store_url()
    survived = await harness.stored(acknowledged_before_the_kill)

    result = await account(harness, client, "Sentinel primary SIGKILLed mid-stream")
    after_kill = [(end, answer) for _, end, answer in client.timeline if end >= killed_at]
    failover_503s = sum(1 for end, answer in after_kill if end <= recovered_at and answer == "503")
    refused_later = [end for end, answer in after_kill if end > recovered_at and answer[0] != "2"]
    print(result.summary())
    print(
        f"[faults] failover: acknowledged {result.acknowledged} of {result.sent}, "
        f"503s during the failover {failover_503s}, events accepted again "
        f"{recovered_at - killed_at:.1f}s after the kill; then {len(refused_later)} more "
        f"refusals, the last {max(refused_later, default=recovered_at) - killed_at:.1f}s "
        f"after the kill ({old_primary} -> {new_primary})"
    )
    assert new_primary != old_primary
    assert [event_id for event_id, kept in survived.items() if not kept] == []
    result.assert_kept(harness.describe())
    assert result.acknowledged == result.sent
    assert failover_503s > 0
