"""The typed application keys of the receiver, in one place."""

from __future__ import annotations

import asyncio

from aiohttp import web
from redis.asyncio import Redis

from loops_webhooks.ingest.signature import SignatureVerifier
from loops_webhooks.settings import Settings
from loops_webhooks.workers.intake import EventIntake

__all__ = [
    "BODY_SLOTS",
    "INTAKE",
    "REDIS",
    "REDIS_URL",
    "SETTINGS",
    "VERIFIER",
]

SETTINGS = web.AppKey("settings", Settings)
REDIS_URL = web.AppKey("redis_url", str)
VERIFIER = web.AppKey("verifier", SignatureVerifier)
REDIS = web.AppKey("redis", Redis)
INTAKE = web.AppKey("intake", EventIntake)
BODY_SLOTS = web.AppKey("body_slots", asyncio.Semaphore)
"""One slot per request body being read (``LOOPS_MAX_CONCURRENT_BODIES``)."""
