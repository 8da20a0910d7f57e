"""Fixtures shared by the unit tests: a fresh fakeredis (Lua through lupa) per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fakeredis import FakeAsyncRedis


@pytest.fixture
async def redis() -> AsyncIterator[FakeAsyncRedis]:
    client = FakeAsyncRedis()
    try:
        yield client
    finally:
        await client.aclose()
