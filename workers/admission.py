"""Admission: whether one (event, handler) attempt may start now, across all workers.

One step, ``lua/admission.lua``, runs inside the event store's ``begin`` for every handler
about to start, and inside ``finish`` for what a run took or was held back for. Its gates,
in order: the handler is paused (an operator's pause, kept in Redis), ordering (one run of
the handler at a time per checkout session, the session's earliest-created due event
first; ``LOOPS_ORDERING``), its ``concurrency`` (runs at once) and its ``rate`` (starts per
second or minute). A run a gate holds back uses
no attempt: its job is rescheduled when the gate may open (a freed slot promotes the oldest
waiter at once; a resume moves every waiter back to the queue, oldest first), and the event
is kept on the handler's waiting list, which is what ``handlers`` and the metrics count.
Slots lapse with the in-progress marker's lifetime unless the worker running them renews
them (``InProgressKeeper``), so a killed worker's slots come back; a run holds its session's
order only while its job's in-progress marker lives, so it comes back with it too. A run ordering
holds back waits on its session's waiting list, not on the handler's; the earliest waiter
per handler goes back to the queue when a run of the session ends (or an event of it
finishes).

The hot path stays as it was for a handler without limits that no one paused, on an event
without a checkout session: its limits travel as an empty argument and admission asks Redis
nothing. An event with a session is asked about its session's order (a few reads of the
session's keys, inside the same script). Each worker reads the paused
names at most once a second in the background (``PausedHandlers``) and has ``begin`` ask
about the pause only of a handler it takes to be paused: no round trip is added per job.

This module is the one writer of the pause state and of the live-handler registry
(``keys.LIVE_HANDLERS``: which handlers running workers have, so that pausing a name no
worker knows is refused).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis

from loops_webhooks.handlers.router import Handler, Rate
from loops_webhooks.workers import keys
from loops_webhooks.workers.connection import REDIS_FAILURES
from loops_webhooks.workers.scripts import lua_table, register_script

__all__ = [
    "DEFAULT_SLOT_TTL_SECONDS",
    "LIVE_HANDLER_SECONDS",
    "PAUSED_RECHECK_SECONDS",
    "PAUSED_REFRESH_SECONDS",
    "Admission",
    "HandlerFlow",
    "HandlerNotLive",
    "HandlerPause",
    "LiveHandler",
    "PausedHandlers",
    "Resumed",
    "encoded_limits",
    "handler_flows",
    "limits_of",
    "live_handlers",
    "pause_handler",
    "paused_names",
    "register_live_handlers",
    "resume_handler",
]

PAUSED_RECHECK_SECONDS = 3600
"""A run held by a pause is looked at again after this at the latest; a resume moves it back
at once, so this only bounds how long a pause state removed by hand would go unnoticed."""

LIVE_HANDLER_SECONDS = 30
"""A handler counts as registered by a running worker this long after that worker last said
so (workers say so every few seconds, with arq's health check)."""

DEFAULT_SLOT_TTL_SECONDS = 60.0
"""A slot's lifetime where no worker sets it (a store that only reads)."""

PAUSED_REFRESH_SECONDS = 1.0
"""How old a worker's view of the paused handlers may get (``PausedHandlers``)."""

SESSION_WAITING_TTL_SECONDS = 86_400
"""A session's waiting list is removed this long after it was last written. Only for cleaning
up: a woken or rechecked waiter leaves it."""

RESUME_BATCH = 1000
"""Waiting events moved back to the queue per script call of a resume."""

log = structlog.get_logger(logger_name="loops_webhooks.workers")


class HandlerNotLive(LookupError):
    """A pause named a handler that no running worker has registered (a typo, most often)."""


@dataclass(frozen=True, slots=True)
class HandlerPause:
    since_ms: int
    reason: str | None
    by: str
    """How the pause was authenticated: ``cli``, ``token`` or ``no-auth``."""


@dataclass(frozen=True, slots=True)
class HandlerFlow:
    """One handler's admission state, for ``handlers``, the dashboard and the metrics."""

    name: str
    paused: HandlerPause | None
    waiting: int
    """Events whose run of this handler admission holds back (paused or over a limit)."""


@dataclass(frozen=True, slots=True)
class LiveHandler:
    """A handler a running worker registered, with the limits its code sets."""

    name: str
    concurrency: int | None
    rate: str | None


@cache
def encoded_limits(concurrency: int | None, rate: Rate | None, *, ask_paused: bool) -> bytes:
    """A handler's limits as admission reads them, with ``paused`` when its pause is to be
    asked; empty (nothing to ask: the common, cheap case) for none."""
    limits: dict[str, int | bool] = {}
    if concurrency is not None:
        limits["concurrency"] = concurrency
    if rate is not None:
        limits["rate"] = rate.limit
        limits["window_ms"] = rate.per_seconds * 1000
    if ask_paused:
        limits["paused"] = True
    return orjson.dumps(limits) if limits else b""


def limits_of(handler: Handler, *, ask_paused: bool) -> bytes:
    return encoded_limits(handler.concurrency, handler.rate, ask_paused=ask_paused)


class PausedHandlers:
    """Which handlers a worker takes to be paused: read from Redis at most once a
    ``PAUSED_REFRESH_SECONDS``, in the background, so that a handler no one paused costs
    ``begin`` nothing. Only a handler in this view has its pause asked in ``begin`` (where
    Redis answers for certain), so a pause reaches every worker within about that interval,
    and a resume at once. Until the first read, every handler's pause is asked."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._names: frozenset[str] | None = None
        self._read_at = -math.inf
        self._reading: asyncio.Task[None] | None = None

    def names(self) -> frozenset[str] | None:
        """The paused names as last read (None: not read yet); starts a fresh read when
        this view is older than the interval."""
        if self._reading is None and time.monotonic() - self._read_at >= PAUSED_REFRESH_SECONDS:
            self._reading = asyncio.create_task(self._read())
        return self._names

    async def _read(self) -> None:
        try:
            self._names = frozenset(await paused_names(self._redis))
        except REDIS_FAILURES as error:
            log.warning("cannot read which handlers are paused", error=str(error))
        finally:
            self._read_at = time.monotonic()
            self._reading = None


class Admission:
    """What ``begin`` and ``finish`` pass to the admission step of their scripts."""

    def __init__(self, *, slot_ttl_seconds: float, ordering: bool) -> None:
        """``slot_ttl_seconds``: how long a slot holds unless renewed; the worker's
        in-progress marker lifetime, so a dead worker's slots come back with its jobs.
        ``ordering``: whether the runs of a checkout session's events keep its order
        (``LOOPS_ORDERING``)."""
        self.keys = [keys.PAUSED_HANDLERS]
        self.settings = lua_table(
            "admission_settings",
            {
                "slot_ttl_ms": int(slot_ttl_seconds * 1000),
                "slots_prefix": keys.HANDLER_SLOTS_PREFIX,
                "starts_prefix": keys.HANDLER_STARTS_PREFIX,
                "waiting_prefix": keys.HANDLER_WAITING_PREFIX,
                "paused_recheck_ms": PAUSED_RECHECK_SECONDS * 1000,
                "job_id_prefix": keys.JOB_ID_PREFIX,
                "ordering": ordering,
                "event_prefix": keys.EVENT_PREFIX,
                "handler_prefix": keys.HANDLER_FIELD_PREFIX,
                "session_prefix": keys.SESSION_EVENTS_PREFIX,
                "session_waiting_prefix": keys.SESSION_WAITING_PREFIX,
                "in_progress_prefix": keys.ARQ_IN_PROGRESS_PREFIX,
                "session_waiting_ttl_ms": SESSION_WAITING_TTL_SECONDS * 1000,
            },
        )
        """This worker's settings, the constants ``begin`` and ``finish`` are built with
        (``script_source``): a script decoding them on every call cost Redis about 5 µs."""

    @staticmethod
    def settled(held: Iterable[Handler], released: Iterable[Handler]) -> bytes:
        """``finish``'s admission argument: the runs held back in ``begin`` and the runs
        whose concurrency slots to give back; empty when there are none (a session's order
        takes nothing: a run's state is its hold)."""
        slots = [h for h in released if h.concurrency]
        if not held and not slots:
            return b""
        held_limits = {h.name: _limits_object(h, ask_paused=True) for h in held}
        released_limits = {h.name: _limits_object(h, ask_paused=False) for h in slots}
        return orjson.dumps({"held": held_limits, "released": released_limits})


def _limits_object(handler: Handler, *, ask_paused: bool) -> dict[str, Any]:
    encoded = limits_of(handler, ask_paused=ask_paused)
    return orjson.loads(encoded) if encoded else {}


async def register_live_handlers(
    redis: Redis, handlers: Sequence[Handler], *, now_ms: int | None = None
) -> None:
    """Say that a running worker has ``handlers`` (with their limits), for the next
    ``LIVE_HANDLER_SECONDS``."""
    if not handlers:
        return
    seen_until = (now_ms or _now_ms()) + LIVE_HANDLER_SECONDS * 1000
    mapping = {
        handler.name: orjson.dumps(
            {
                "seen_until_ms": seen_until,
                "concurrency": handler.concurrency,
                "rate": None if handler.rate is None else str(handler.rate),
            }
        )
        for handler in handlers
    }
    await redis.hset(keys.LIVE_HANDLERS, mapping=mapping)  # type: ignore[misc]


async def live_handlers(redis: Redis, *, now_ms: int | None = None) -> dict[str, LiveHandler]:
    """The handlers running workers have registered lately, by name, sorted."""
    now = now_ms or _now_ms()
    stored = await redis.hgetall(keys.LIVE_HANDLERS)  # type: ignore[misc]
    found = {}
    for raw_name, raw in stored.items():
        data = orjson.loads(raw)
        if data.get("seen_until_ms", 0) >= now:
            name = raw_name.decode()
            found[name] = LiveHandler(name, data.get("concurrency"), data.get("rate"))
    return dict(sorted(found.items()))


async def pause_handler(
    redis: Redis, name: str, *, reason: str | None, by: str, force: bool = False
) -> tuple[HandlerPause, bool]:
    """Pause ``name`` on every worker (within the script's next ``begin``): its runs wait,
    using no attempt, until it is resumed. Returns the pause in force and whether this call
    made it (False: it was paused already, and that earlier pause is kept).

    Raises `HandlerNotLive` if no running worker has registered ``name``, unless ``force``
    (a worker about to be deployed with it, say)."""
    if not force and name not in await live_handlers(redis):
        raise HandlerNotLive(name)
    pause = HandlerPause(since_ms=_now_ms(), reason=reason or None, by=by)
    encoded = orjson.dumps({"since_ms": pause.since_ms, "reason": pause.reason, "by": by}).decode()
    made = await redis.hsetnx(keys.PAUSED_HANDLERS, name, encoded)  # type: ignore[misc]
    if made:
        return pause, True
    current = (await handler_flows(redis, [name]))[name].paused
    return current or pause, False


@dataclass(frozen=True, slots=True)
class Resumed:
    was_paused: bool
    moved: int
    """Waiting events put back on the queue, oldest first."""


async def resume_handler(redis: Redis, name: str, *, queue_name: str) -> Resumed:
    """Lift the pause of ``name`` and put every event waiting for it back on the queue,
    oldest first (their jobs are due at their receipt time, so they go before newer work)."""
    resume = register_script(redis, "resume")
    was_paused = False
    moved = 0
    first = True
    while True:
        reply = await resume(
            keys=[keys.PAUSED_HANDLERS, keys.handler_waiting_key(name), queue_name],
            args=[name, keys.JOB_ID_PREFIX, RESUME_BATCH, 1 if first else 0],
        )
        unpaused, batch_moved, remaining = (int(value) for value in reply)
        was_paused = was_paused or bool(unpaused)
        moved += batch_moved
        first = False
        if not remaining:
            return Resumed(was_paused, moved)


async def handler_flows(redis: Redis, names: Iterable[str]) -> dict[str, HandlerFlow]:
    """Paused or not, since when and why, and how many events wait, per handler name."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hmget(keys.PAUSED_HANDLERS, wanted)
        for name in wanted:
            pipe.zcard(keys.handler_waiting_key(name))
        paused, *waiting = await pipe.execute()
    flows = {}
    for name, raw, count in zip(wanted, paused, waiting, strict=True):
        pause = None
        if raw is not None:
            data = orjson.loads(raw)
            pause = HandlerPause(int(data["since_ms"]), data.get("reason"), data.get("by", ""))
        flows[name] = HandlerFlow(name, pause, int(count))
    return flows


async def paused_names(redis: Redis) -> list[str]:
    """Every paused handler's name, whether a running worker has it or not."""
    return sorted(name.decode() for name in await redis.hkeys(keys.PAUSED_HANDLERS))  # type: ignore[misc]


def _now_ms() -> int:
    return int(time.time() * 1000)
