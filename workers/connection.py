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
"""

from __future__ import annotations

from typing import Any

import redis
import redis.sentinel
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

from loops_webhooks.redis_url import SentinelAddress, sentinel_address

__all__ = ["open_blocking_redis", "open_redis"]


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
        plain: Redis = redis_class.from_url(url, **options)
        return plain
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(address.sentinels), **_sentinel_options(address, sentinel_password, options)
    )
    client: Redis = sentinel.master_for(address.master_name, redis_class=redis_class)
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
