"""Logged-out dashboard sessions, kept in Redis until their cookies would have expired anyway.

A session cookie is valid by its signature alone (``auth``), so logging out must leave a
record that every replica reads: its nonce, with a time to live equal to what remained of
the session. A cookie whose session is here is treated as no cookie at all.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from loops_webhooks.dashboard.auth import Session
from loops_webhooks.workers.keys import dashboard_revoked_session_key

__all__ = ["RevokedSessions"]


class RevokedSessions:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def revoke(self, session: Session) -> None:
        remaining = session.expires_at - int(time.time())
        if remaining > 0:
            await self._redis.set(dashboard_revoked_session_key(session.nonce), 1, ex=remaining)

    async def is_revoked(self, session: Session) -> bool:
        return bool(await self._redis.exists(dashboard_revoked_session_key(session.nonce)))
