"""The worker's readiness: RedisHealth's view of Redis and ``/healthz`` on the metrics server."""

from __future__ import annotations

import socket

import aiohttp

from loops_webhooks.workers.health import BACKOFF_MAX_SECONDS, RedisHealth
from loops_webhooks.workers.metrics_server import MetricsServer
from tests.support.ports import free_port


def test_redis_failures_back_off_doubling_up_to_a_cap_and_one_success_clears_them() -> None:
    health = RedisHealth()
    assert (health.problem, health.backoff_seconds()) == (None, 0.0)

    waits = []
    for _ in range(12):
        health.failed(ConnectionError("Error 111 connecting"))
        waits.append(health.backoff_seconds())

    assert health.problem == "ConnectionError: Error 111 connecting"
    assert waits[1] == 2 * waits[0] and waits[-1] == BACKOFF_MAX_SECONDS
    health.succeeded()
    assert (health.problem, health.backoff_seconds()) == (None, 0.0)


async def test_healthz_answers_503_with_the_reason_while_redis_is_unusable() -> None:
    health = RedisHealth()
    port = free_port()
    server = MetricsServer(host="127.0.0.1", port=port, problem=lambda: health.problem)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/healthz"
            async with session.get(url) as ok:
                assert ok.status == 200
            health.failed(OSError("OOM command not allowed"))
            async with session.get(url) as unready:
                assert unready.status == 503
                assert "OOM command not allowed" in (await unready.json())["detail"]
    finally:
        await server.stop()


async def test_the_metrics_server_binds_the_configured_host_only() -> None:
    port = free_port()
    server = MetricsServer(host="127.0.0.1", port=port)
    await server.start()
    try:
        with socket.socket() as wildcard:
            wildcard.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
            # 127.0.0.2 is loopback too, but not the address the server bound
            assert wildcard.connect_ex(("127.0.0.2", port)) != 0
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        await server.stop()
