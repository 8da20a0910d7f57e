"""The typed application and request keys of the dashboard, in one place."""

from __future__ import annotations

from aiohttp import web

from loops_webhooks.dashboard.auth import Gate, Identity
from loops_webhooks.dashboard.revoked_sessions import RevokedSessions
from loops_webhooks.dashboard.token_guesses import TokenGuesses
from loops_webhooks.settings import Settings
from loops_webhooks.workers.operator_api import OperatorApi

__all__ = [
    "GATE",
    "IDENTITY",
    "OPERATOR_API",
    "READ_ONLY",
    "REDIS_URL",
    "REVOKED_SESSIONS",
    "SETTINGS",
    "TOKEN_GUESSES",
]

SETTINGS = web.AppKey("settings", Settings)
REDIS_URL = web.AppKey("redis_url", str)
GATE = web.AppKey("gate", Gate)
READ_ONLY = web.AppKey("read_only", bool)
OPERATOR_API = web.AppKey("operator_api", OperatorApi)
TOKEN_GUESSES = web.AppKey("token_guesses", TokenGuesses)
REVOKED_SESSIONS = web.AppKey("revoked_sessions", RevokedSessions)

IDENTITY = web.RequestKey("identity", Identity)
"""Request key: how the request was authenticated (absent on the login page and assets)."""
