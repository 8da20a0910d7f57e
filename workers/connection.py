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

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

from loops_webhooks.settings import ConfigurationError

__all__ = ["SentinelAddress", "check_redis_url", "open_redis", "sentinel_address"]

SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
"""Sentinel URL schemes, and whether each speaks TLS."""

DEFAULT_SENTINEL_PORT = 26379
SENTINEL_URL_SHAPE = "redis+sentinel://[[user]:password@]host:port[,host:port...]/MASTER_NAME[/DB]"


@dataclass(frozen=True, slots=True)
class SentinelAddress:
    """A parsed Sentinel URL: where the Sentinels are, and which primary to ask them for."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


def _malformed(problem: str) -> ConfigurationError:
    return ConfigurationError(
        f"REDIS_URL is not a valid Sentinel URL ({problem}); expected {SENTINEL_URL_SHAPE}"
    )


def _host_and_port(text: str) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise _malformed(f"bad address {text!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise _malformed(f"a Sentinel without a host in {text!r}")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _malformed(f"bad port in {text!r}")
    return host, int(port_text)


def sentinel_address(url: str) -> SentinelAddress | None:
    """The Sentinel address ``url`` names, or None if it names one Redis server.

    Raises ConfigurationError, naming REDIS_URL but never its password, if it is malformed.
    """
    scheme, separator, rest = url.partition("://")
    if scheme.lower() not in SENTINEL_SCHEMES:
        return None
    if not separator:
        raise _malformed("no '://'")
    if "?" in rest or "#" in rest:
        raise _malformed("query strings and fragments are not supported")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(password_text) if colon else None
    if not hosts:
        raise _malformed("no Sentinel host")
    sentinels = tuple(_host_and_port(part) for part in hosts.split(","))
    master_name, _, db_text = path.partition("/")
    if not master_name:
        raise _malformed("no master name after the hosts")
    db_text = db_text.rstrip("/")
    if db_text and not db_text.isdigit():
        raise _malformed(f"the database must be a number, not {db_text!r}")
    return SentinelAddress(
        sentinels=sentinels,
        master_name=unquote(master_name),
        db=int(db_text or 0),
        username=username,
        password=password,
        tls=SENTINEL_SCHEMES[scheme.lower()],
    )


def check_redis_url(url: str) -> str:
    """``url`` itself if it is usable; ConfigurationError (exit 2 in the CLI) otherwise."""
    sentinel_address(url)
    return url


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
    socket_options = {name: value for name, value in options.items() if name.startswith("socket_")}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(address.sentinels),
        sentinel_kwargs={**socket_options, "password": sentinel_password, "ssl": address.tls},
        db=address.db,
        username=address.username,
        password=address.password,
        ssl=address.tls,
        **options,
    )
    client: Redis = sentinel.master_for(address.master_name, redis_class=redis_class)
    return client
