"""Waiting for a condition in a test, with a deadline and a message that says what failed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(
    condition: Callable[[], Awaitable[bool]],
    *,
    within: float,
    what: str,
    details: Callable[[], str] = lambda: "",
    interval: float = 0.05,
) -> None:
    """Poll ``condition`` until it holds; fail after ``within`` seconds saying ``what`` and
    ``details()`` (process output, for instance)."""
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:g}s: {what}\n{details()}")
        await asyncio.sleep(interval)
