"""Wrong tokens per client address, counted in Redis so that every dashboard replica sees them.

After ``LIMIT`` wrong tokens (on the login form or as a bearer token) from one address within
``WINDOW_SECONDS`` of the first, every token that address presents is refused with 429 and
``Retry-After`` until the window ends, the right token too: answering it would let a guesser
go on. A session cookie is not a guess and still works. A right token counts nothing.

The client address is the TCP peer, unless the peer is one of the trusted proxies
(``LOOPS_DASHBOARD_TRUSTED_PROXIES``): then it is the nearest address in ``X-Forwarded-For``
that is not a trusted proxy, since each proxy appends the peer it saw and only the part the
trusted proxies appended can be believed.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence

from aiohttp import web
from redis.asyncio import Redis

from loops_webhooks.dashboard.errors import TooManyWrongTokens
from loops_webhooks.workers.keys import dashboard_wrong_tokens_key

__all__ = ["LIMIT", "WINDOW_SECONDS", "Network", "TokenGuesses", "client_address"]

LIMIT = 10
WINDOW_SECONDS = 60

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def client_address(request: web.Request, trusted_proxies: Sequence[Network]) -> str:
    """Who is asking: the peer, or what trusted proxies say the peer was."""
    peer = request.remote or ""
    address = _address(peer)
    if address is None or not any(address in network for network in trusted_proxies):
        return peer
    hops = ",".join(request.headers.getall("X-Forwarded-For", [])).split(",")
    for hop in reversed(hops):
        forwarded = _address(hop)
        if forwarded is None:
            break  # not written by a proxy: nothing further left can be believed
        if not any(forwarded in network for network in trusted_proxies):
            return str(forwarded)
        address = forwarded
    return str(address)


class TokenGuesses:
    """The per-address counter; a window opens at an address's first wrong token."""

    def __init__(self, redis: Redis, trusted_proxies: Sequence[Network]) -> None:
        self._redis = redis
        self._trusted_proxies = trusted_proxies

    async def wrong(self, request: web.Request) -> None:
        """Count a wrong token; TooManyWrongTokens once this one is past the limit."""
        key = dashboard_wrong_tokens_key(client_address(request, self._trusted_proxies))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=WINDOW_SECONDS, nx=True)
            pipe.incr(key)
            pipe.pttl(key)
            _, count, ttl_ms = await pipe.execute()
        if count > LIMIT:
            raise TooManyWrongTokens(_seconds(ttl_ms))

    async def check(self, request: web.Request) -> None:
        """TooManyWrongTokens while the request's client is shut out, whatever it sends."""
        key = dashboard_wrong_tokens_key(client_address(request, self._trusted_proxies))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            count, ttl_ms = await pipe.execute()
        if count is not None and int(count) >= LIMIT:
            raise TooManyWrongTokens(_seconds(ttl_ms))


def _seconds(ttl_ms: int) -> int:
    """Retry-After: whole seconds, at least one (the key may be expiring as we read it)."""
    return max(1, math.ceil(ttl_ms / 1000))
