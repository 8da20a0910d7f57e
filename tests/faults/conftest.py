"""Fixtures of the fault-injection suite: a running harness and a Loops-like client for it.

Each test gets its own world (two ``redis-server`` processes, the receiver, two supervised
workers) in its own directory; everything is stopped when the test ends, whatever happened.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.faults.fault_harness import Harness, LoopsClient
from tests.support.loops_sender import LoopsSender


@pytest.fixture
def sentinel() -> bool:
    """Whether the event store is a Sentinel group (a module overrides this fixture)."""
    return False


@pytest.fixture
async def harness(tmp_path: Path, loops: LoopsSender, sentinel: bool) -> AsyncIterator[Harness]:
    world = Harness(tmp_path, loops, sentinel=sentinel)
    try:
        await world.start()
        yield world
    finally:
        await world.stop()


@pytest.fixture
async def client(harness: Harness) -> AsyncIterator[LoopsClient]:
    async with aiohttp.ClientSession() as session:
        yield LoopsClient(session, harness.receiver_url, harness.sender)
