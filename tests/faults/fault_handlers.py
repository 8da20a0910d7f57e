"""The handlers the fault-injection suite's workers run (copied into each test's directory).

Each records its effect in the effects Redis (``FAULTS_EFFECTS_URL``), which no fault touches,
through its idempotency key: ``SET effect:<key> ... NX`` and, only if that set it, one more in
the ``applied`` count of the (event, handler) pair, in one script, so an effect is made once
however often the handler runs, and a second one would show as a count of 2. Every call is
counted in ``invocations`` before anything else. ``notify_support`` raises and
``release_stock`` kills its worker until the ``FAULTS_FIXED_FLAG`` file exists.

Routing (``fault_harness.HANDLERS_BY_TYPE`` says the same): ``completed`` runs fulfil and
audit, ``failed`` runs audit and notify_support, ``expired`` runs audit and release_stock.
"""

import asyncio
import os
import random
import time
from pathlib import Path

import redis
import redis.asyncio

from loops_webhooks.handlers import HandlerContext, Router
from loops_webhooks.handlers.events import CheckoutSessionEvent, Event

router = Router()
EFFECTS_URL = os.environ["FAULTS_EFFECTS_URL"]
FIXED = Path(os.environ["FAULTS_FIXED_FLAG"])

APPLY_ONCE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
  return 1
end
return 0
"""

effects = redis.Redis.from_url(EFFECTS_URL)
_effects_async = None


def effects_async():
    global _effects_async
    if _effects_async is None:
        _effects_async = redis.asyncio.Redis.from_url(EFFECTS_URL)
    return _effects_async


def is_fixed():
    return FIXED.exists()


def pair(ctx):
    return f"{ctx.event_id} {ctx.handler}"


def apply_once_args(ctx):
    effect = f"effect:{ctx.idempotency_key}"
    return (APPLY_ONCE, 2, effect, "applied", f"{pair(ctx)} {os.getpid()}", pair(ctx))


async def invoked(ctx):
    await effects_async().hincrby("invocations", pair(ctx), 1)


async def apply_effect(ctx):
    await effects_async().eval(*apply_once_args(ctx))


@router.on("checkout.session.completed", name="fulfil")
async def fulfil(event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
    await invoked(ctx)
    await asyncio.sleep(random.uniform(0, 0.1))
    await apply_effect(ctx)
    await asyncio.sleep(0.1)  # effect made, success not yet recorded: a kill now means a re-run


@router.on("checkout.session.*", name="audit")
def audit(event: Event, ctx: HandlerContext) -> None:  # plain def: runs in a thread
    effects.hincrby("invocations", pair(ctx), 1)
    effects.eval(*apply_once_args(ctx))
    time.sleep(0.05)


@router.on("checkout.session.failed", name="notify_support", max_attempts=3)
async def notify_support(event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
    await invoked(ctx)
    if not is_fixed():
        raise ConnectionError("the support desk is unreachable")
    await apply_effect(ctx)


@router.on("checkout.session.expired", name="release_stock", max_attempts=2)
async def release_stock(event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
    await invoked(ctx)
    if not is_fixed():
        os._exit(1)  # as a segfault or the OOM killer would: no cleanup, nothing recorded
    await apply_effect(ctx)


# Hostile handlers, for event types of their own (``hostile.*``), which no other handler matches.

BLOCK_SECONDS = 10
"""Longer than the in-progress marker's TTL (the 2 s handler timeout + 7 s)."""

TRACK_RUNNING = """
local now = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
if tonumber(ARGV[2]) > 0 and now > tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0') then
  redis.call('HSET', KEYS[2], ARGV[1], now)
end
return now
"""


class ProcessLevelError(BaseException):
    """Outside the Exception hierarchy, as some libraries' control-flow exceptions are."""


@router.on("hostile.blocks_loop", name="blocks_loop")
async def blocks_loop(event: Event, ctx: HandlerContext) -> None:
    """The mistake: a blocking sleep in an async handler. Runs at once are counted."""
    effects.hincrby("invocations", pair(ctx), 1)
    effects.eval(TRACK_RUNNING, 2, "running", "max_running", pair(ctx), 1)
    time.sleep(BLOCK_SECONDS)  # noqa: ASYNC251 (the mistake under test)
    effects.eval(TRACK_RUNNING, 2, "running", "max_running", pair(ctx), -1)
    effects.eval(*apply_once_args(ctx))


RAISED = {
    "hostile.system_exit": lambda: SystemExit(3),
    "hostile.keyboard_interrupt": KeyboardInterrupt,
    "hostile.base_exception": lambda: ProcessLevelError("not an Exception"),
}


@router.on("hostile.*", name="raises_base_exception", max_attempts=2)
async def raises_base_exception(event: Event, ctx: HandlerContext) -> None:
    await invoked(ctx)
    if event.type in RAISED:
        raise RAISED[event.type]()
    await apply_effect(ctx)


@router.on("hostile.*", name="bystander")
async def bystander(event: Event, ctx: HandlerContext) -> None:
    """Slow and innocent: must complete once beside a handler that raises SystemExit."""
    if event.type == "hostile.blocks_loop":
        return
    await invoked(ctx)
    await asyncio.sleep(1.0)
    await apply_effect(ctx)
