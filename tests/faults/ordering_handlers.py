"""The handler of the ordering fault tests (copied into each test's directory, beside
``fault_handlers.py``, whose effects client it shares).

``slow`` runs for every checkout event and records, in the effects Redis
(``FAULTS_EFFECTS_URL``, which no fault touches), when each run starts and ends (wall clock,
shared by the processes of one machine), with its event, attempt, worker pid and
``superseded_by``: the list ``runs``, one JSON object per record. A run lasts
``data.metadata.holdSeconds`` (default 0.4 s), long enough for the other events of its
session to arrive and wait.
"""

import asyncio
import os
import time

import orjson
from fault_handlers import effects_async

from loops_webhooks.handlers import HandlerContext, Router
from loops_webhooks.handlers.events import CheckoutSessionEvent

router = Router()
DEFAULT_HOLD_SECONDS = 0.4


async def record(phase: str, event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
    entry = {
        "phase": phase,
        "at": time.time(),
        "event_id": ctx.event_id,
        "attempt": ctx.attempt,
        "pid": os.getpid(),
        "superseded_by": ctx.superseded_by,
    }
    await effects_async().rpush("runs", orjson.dumps(entry))


@router.on("checkout.session.*", name="slow")
async def slow(event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
    await record("start", event, ctx)
    await asyncio.sleep(float(event.data.metadata.get("holdSeconds", DEFAULT_HOLD_SECONDS)))
    await record("end", event, ctx)
