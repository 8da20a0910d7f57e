"""Fixtures of the integration suite: real Redis servers and real ``loops-webhooks`` processes.

Redis comes from ``REDIS_URL`` when it is set (its database is flushed before each test);
otherwise from a ``redis-server`` this suite starts itself (``tests.support.redis_server``).

- ``redis_url``: the URL of a real, empty Redis database.
- ``redis``: an asyncio client on it, for assertions.
- ``stoppable_redis``: a dedicated ``redis-server`` a test may kill, pause and start again.
- ``start_loops_webhooks``: runs a ``loops-webhooks`` command as a subprocess, waits for its
  port, and stops it at the end of the test.
- ``start_receiver``: serves the receiver app (``create_app``) in this process on a loopback
  port against a Redis URL, settings overridable, traced by a given tracer; an aiohttp test
  client on it.
- ``free_port``: a function giving a loopback port nobody listens on.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis as redis_sync
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from loops_webhooks.ingest.app import create_app
from loops_webhooks.settings import Settings
from tests.support import ports
from tests.support.loops_sender import LoopsSender
from tests.support.processes import Service, StartLoopsWebhooks, clean_environment
from tests.support.redis_server import RedisServer

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer


@pytest.fixture
def free_port() -> Callable[[], int]:
    return ports.free_port


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``REDIS_URL`` if set, else a ``redis-server`` started for this session."""
    external = os.environ.get("REDIS_URL")
    if external:
        yield external
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """A real Redis with an empty database."""
    client = redis_sync.Redis.from_url(redis_server_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server_url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def stoppable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A dedicated, running ``redis-server`` that this test alone may stop and restart."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def start_receiver(
    loops: LoopsSender,
) -> AsyncIterator[Callable[..., Awaitable[TestClient]]]:
    """Serve ``create_app`` on a loopback port against ``redis_url``; settings may be
    overridden (no metrics server unless asked for)."""
    clients: list[TestClient] = []

    async def start(redis_url: str, tracer: Tracer | None = None, **overrides: Any) -> TestClient:
        settings = Settings(webhook_secret=loops.secret, **{"metrics_port": 0, **overrides})
        app = create_app(settings, redis_url, tracer)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
def start_loops_webhooks(tmp_path: Path) -> Iterator[StartLoopsWebhooks]:
    """Start ``loops-webhooks *args`` with ``env`` (on a clean environment) in ``tmp_path``.

    With ``port`` given, returns once the process listens on it (pass ``--port`` yourself if
    the command takes one). No metrics server unless ``env`` asks for one (a fixed default
    port would clash between processes). Every process started is stopped when the test ends.
    """
    started: list[Service] = []

    def start(*args: str, env: Mapping[str, str], port: int | None = None) -> Service:
        settings = {"PYTHONUNBUFFERED": "1", "LOOPS_METRICS_PORT": "0", **env}
        service = Service(
            f"loops-webhooks-{len(started)}",
            args,
            clean_environment(settings),
            tmp_path,
            port=port,
        )
        started.append(service)
        service.start()
        if port is not None:
            service.wait_listening()
        return service

    yield start
    for service in started:
        service.stop()


from tests.integration.search_harness import shop  # noqa: E402, F401 (a fixture for the search tests)
