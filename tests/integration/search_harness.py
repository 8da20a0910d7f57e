"""What the search and erasure tests share: a shop whose receiver and worker took a few
events of two customers, as a real Loops would post them.

``shop`` is a fixture, offered to every integration test by ``conftest.py``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from tests.integration.worker_harness import Workbench
from tests.support.loops_sender import WEBHOOK_SECRET, LoopsSender
from tests.support.processes import StartLoopsWebhooks
from tests.support.waiting import eventually

HANDLERS = """
@router.on("checkout.session.completed", name="fulfil")
async def fulfil(event, ctx):
    record(ctx, "fulfilled")


@router.on("checkout.session.expired", name="refuse")
async def refuse(event, ctx):
    raise Reject("expired")
"""


@dataclass(frozen=True)
class Posted:
    event_id: str
    session: str
    customer: str
    order: str


def body(event_id: str, event_type: str, session: str, customer: str, order: str) -> bytes:
    return orjson.dumps(
        {
            "id": event_id,
            "type": event_type,
            "created": "2025-01-15T10:35:00Z",
            "data": {
                "id": session,
                "status": "completed",
                "externalCustomerId": customer,
                "metadata": {"orderId": order, "source": "website"},
            },
        }
    )


class Shop:
    """A receiver and a worker on one Redis, and the events posted to it, oldest first."""

    def __init__(self, bench: Workbench, receiver_url: str, loops: LoopsSender) -> None:
        self.bench = bench
        self.receiver_url = receiver_url
        self.loops = loops
        self.posted: list[Posted] = []

    async def post(
        self,
        session: str,
        customer: str,
        order: str,
        event_type: str = "checkout.session.completed",
    ) -> Posted:
        event_id = f"evt_{len(self.posted)}_{time.time_ns()}"
        raw = body(event_id, event_type, session, customer, order)
        async with (
            aiohttp.ClientSession() as client,
            client.post(self.receiver_url, data=raw, headers=self.loops.headers(raw)) as response,
        ):
            assert response.status == 200, await response.text()
        posted = Posted(event_id, session, customer, order)
        self.posted.append(posted)
        await asyncio.sleep(0.002)  # receipt times (ms) order the lists: one ms each
        return posted

    async def handled(self) -> None:
        async def all_final() -> bool:
            for posted in self.posted:
                stored = await self.bench.store.get(posted.event_id)
                if stored is None or stored.status == "pending":
                    return False
            return True

        await eventually(
            all_final, within=20, what="every event handled", details=self.bench.worker_output
        )


@pytest.fixture
async def shop(
    tmp_path: Path,
    redis: Redis,
    redis_url: str,
    start_loops_webhooks: StartLoopsWebhooks,
    free_port: Callable[[], int],
    loops: LoopsSender,
) -> Shop:
    bench = Workbench(tmp_path, redis, redis_url, start_loops_webhooks, loops)
    bench.write_handlers(HANDLERS)
    bench.start_worker()
    port = free_port()
    env = {
        "REDIS_URL": redis_url,
        "LOOPS_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "LOOPS_METRICS_PORT": "0",
        "LOOPS_LOG_FORMAT": "json",
    }
    start_loops_webhooks("serve", "--port", str(port), env=env, port=port)
    shop = Shop(bench, f"http://127.0.0.1:{port}/webhooks/loops", loops)
    await shop.post("cs_1", "cus_a", "ord_1")
    await shop.post("cs_1", "cus_a", "ord_1", "checkout.session.expired")
    await shop.post("cs_2", "cus_a", "ord_2")
    await shop.post("cs_3", "cus_b", "ord_3")
    await shop.post("cs_4", "cus_a", "ord_4", "checkout.session.expired")
    await shop.handled()
    return shop
