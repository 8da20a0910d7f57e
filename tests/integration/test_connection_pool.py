"""The clients ``open_redis`` makes hand out pooled connections without redis-py's lock and
socket read (``workers/connection.py``): what that check was there to catch, against a real
Redis."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from loops_webhooks.workers.connection import open_redis
from tests.support.redis_server import RedisServer


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    client = open_redis(redis_url, socket_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


async def test_a_connection_the_server_closed_is_reconnected_before_it_is_used(
    client: Redis, redis: Redis
) -> None:
    await client.set("key", "before")
    [own_id] = [entry["id"] for entry in await redis.client_list() if entry["cmd"] == "set"]

    await redis.client_kill_filter(_id=own_id)
    await asyncio.sleep(0.1)  # the end of file reaches the pooled connection's reader

    assert await client.get("key") == b"before"


async def test_a_restarted_server_is_reached_again_by_the_next_command(
    stoppable_redis: RedisServer,
) -> None:
    client = open_redis(stoppable_redis.url, socket_timeout=5)
    try:
        await client.set("key", "value")
        stoppable_redis.kill()
        stoppable_redis.start()
        await asyncio.sleep(0.1)

        assert await client.ping() is True
    finally:
        await client.aclose()


async def test_concurrent_commands_each_get_their_own_connection_and_their_own_reply(
    client: Redis,
) -> None:
    await client.mset({f"key:{n}": n for n in range(200)})

    replies = await asyncio.gather(*(client.get(f"key:{n}") for n in range(200)))

    assert replies == [str(n).encode() for n in range(200)]
    assert len(client.connection_pool._available_connections) > 1  # type: ignore[attr-defined]


async def test_a_command_cancelled_before_its_reply_leaves_no_reply_for_the_next_one(
    client: Redis,
) -> None:
    await client.set("key", "value")
    slow = asyncio.create_task(client.blpop(["empty-list"], timeout=0.3))
    await asyncio.sleep(0.1)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    await asyncio.sleep(0.4)  # the late reply has arrived on the cancelled connection

    assert [await client.get("key") for _ in range(3)] == [b"value"] * 3


async def test_a_connection_the_peer_reset_is_reconnected_before_it_is_used() -> None:
    """A peer that resets (RST, as a NAT or load balancer dropping an idle connection does)
    leaves an error in the reader, not an end of file."""
    accepted: list[asyncio.StreamWriter] = []

    async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        while line := await reader.readline():  # RESP arrays: "*n", then "$len" and the arg
            for _ in range(int(line[1:])):
                await reader.readline()
                await reader.readline()
            writer.write(b"+OK\r\n")
            await writer.drain()

    server = await asyncio.start_server(answer_ok, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = open_redis(f"redis://127.0.0.1:{port}/0", socket_timeout=2)
    try:
        assert await client.set("key", "value") is True
        for writer in accepted:
            linger_zero = struct.pack("ii", 1, 0)  # close with RST, not FIN
            writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, linger_zero
            )
            writer.transport.abort()
        await asyncio.sleep(0.2)

        assert await client.set("key", "again") is True
        assert len(accepted) == 2
    finally:
        await client.aclose()
        server.close()
