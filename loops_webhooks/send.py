"""``loops-webhooks send``: sign events exactly as Loops does and POST them to a receiver."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from loops_webhooks.handlers.sample_events import sample_event
from loops_webhooks.handlers.testing import SIGNATURE_HEADER, sign

__all__ = ["Delivery", "send_events"]

CONCURRENCY = 16


@dataclass(frozen=True, slots=True)
class Delivery:
    event_id: str
    status: int
    body: str

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


async def send_events(
    url: str,
    secret: str,
    event_type: str,
    *,
    count: int = 1,
    event_id: str | None = None,
    data: dict[str, Any] | None = None,
    timeout_seconds: float = 10.0,
) -> list[Delivery]:
    """POST ``count`` distinct signed events; a connection error raises aiohttp.ClientError."""
    events = [sample_event(event_type, event_id=event_id, data=data) for _ in range(count)]
    limit = asyncio.Semaphore(CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=timeout_seconds)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def deliver(event: dict[str, Any]) -> Delivery:
            body = orjson.dumps(event)
            headers = {"content-type": "application/json", SIGNATURE_HEADER: sign(body, secret)}
            async with limit, session.post(url, data=body, headers=headers) as response:
                return Delivery(event["id"], response.status, await response.text())

        return list(await asyncio.gather(*(deliver(event) for event in events)))
