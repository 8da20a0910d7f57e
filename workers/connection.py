"""The one way every process turns ``REDIS_URL`` into a redis-py asyncio client.

``REDIS_URL`` names either one Redis (``redis://``, ``rediss://``, ``unix://``: redis-py reads
those) or a primary monitored by Sentinel::

    redis+sentinel://[[user]:password@]host1:port1[,host2:port2...]/MASTER_NAME[/DB]
    rediss+sentinel://...   (TLS to the Sentinels and to the Redis servers)

The user and password are the Redis servers'; ``LOOPS_REDIS_SENTINEL_PASSWORD`` is the
Sentinels' own, if they require one. A Sentinel client asks the Sentinels for the current
primary whenever it opens a connection, and drops a connection that fails or that answers
``READONLY`` (a primary demoted to a replica: redis-py's ``SentinelManagedConnection``), so
after a failover the next command reaches the new primary without a restart.

Both kinds of client hand out their pooled connections through ``_LeanHandout``: redis-py 5.3
takes an ``asyncio.Lock`` and makes a zero-timeout read on every connection it hands out
(redis-py issues 3692 and 4063; fixed in redis-py 8, which arq's pin keeps out of reach), which
cost 40 µs of a 140 µs script call here, on every command of the receiver and the workers.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.sentinel
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import RedisError

from loops_webhooks.redis_url import SentinelAddress, sentinel_address

__all__ = ["REDIS_FAILURES", "open_blocking_redis", "open_redis"]

REDIS_FAILURES = (RedisError, OSError)
"""What a Redis call raises when Redis is down, full, restarting or too slow: redis-py's errors,
and the socket's own (``TimeoutError``, which ``asyncio.timeout`` raises, is an ``OSError``)."""


class _LeanHandout:
    """Hands out a pooled connection without a lock and without reading from its socket.

    redis-py's own check reads from the socket (a zero-timeout read: one more trip through the
    event loop) to find a connection that the server closed or that holds unread data. What
    it would find is cheaper to see: a connection the server closed has its end-of-file in
    its reader already, one the peer reset has the reset error there, and either is
    reconnected here; redis-py itself disconnects a connection whose command failed or was
    cancelled part-way, so none holds an unread reply. Handing out is synchronous up to
    ``connect``, so no lock is needed for two callers never to get the same connection.
    (Without the lock, callers that find no idle connection each open one; redis-py's lock
    queued them behind one handshake.)
    """

    async def get_connection(
        self: Any, command_name: Any = None, *keys: Any, **options: Any
    ) -> AbstractConnection:
        connection: AbstractConnection = self.get_available_connection()
        try:
            reader = getattr(connection, "_reader", None)
            if reader is not None and (reader.at_eof() or reader.exception() is not None):
                await connection.disconnect()
            await connection.connect()  # type: ignore[no-untyped-call]  # a no-op if connected
        except BaseException:
            await self.release(connection)
            raise
        return connection


class _LeanConnectionPool(_LeanHandout, ConnectionPool):
    pass


class _LeanSentinelConnectionPool(_LeanHandout, SentinelConnectionPool):
    pass


def open_redis(
    url: str,
    *,
    sentinel_password: str | None = None,
    redis_class: type[Redis] = Redis,
    **options: Any,
) -> Redis:
    """A client for ``url``: plain, or following the primary that the Sentinels name.

    ``options`` are redis-py's connection options (``socket_timeout``, ...); with Sentinel
    they apply to the Sentinels' connections too. ``redis_class`` lets arq's worker get its
    ``ArqRedis``. No I/O happens here: connections open on first use.
    """
    address = sentinel_address(url)
    if address is None:
        pool = _LeanConnectionPool.from_url(url, **options)
        plain: Redis = redis_class.from_pool(pool)
        return plain
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(address.sentinels), **_sentinel_options(address, sentinel_password, options)
    )
    client: Redis = sentinel.master_for(
        address.master_name,
        redis_class=redis_class,
        connection_pool_class=_LeanSentinelConnectionPool,
    )
    return client


def open_blocking_redis(
    url: str, *, sentinel_password: str | None = None, **options: Any
) -> redis.Redis:
    """The same client as ``open_redis``, blocking, for a thread outside the event loop
    (the worker's in-progress keeper)."""
    address = sentinel_address(url)
    if address is None:
        plain: redis.Redis = redis.Redis.from_url(url, **options)
        return plain
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(address.sentinels), **_sentinel_options(address, sentinel_password, options)
    )
    client: redis.Redis = sentinel.master_for(address.master_name)  # type: ignore[no-untyped-call]
    return client


def _sentinel_options(
    address: SentinelAddress, sentinel_password: str | None, options: dict[str, Any]
) -> dict[str, Any]:
    """redis-py's ``Sentinel`` options: the Sentinels' own connections get the socket options
    and their password; the Redis servers' get the rest and the URL's credentials."""
    socket_options = {name: value for name, value in options.items() if name.startswith("socket_")}
    return {
        "sentinel_kwargs": {**socket_options, "password": sentinel_password, "ssl": address.tls},
        "db": address.db,
        "username": address.username,
        "password": address.password,
        "ssl": address.tls,
        **options,
    }
