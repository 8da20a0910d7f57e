"""What the worker tests share: handler modules written to disk, their effects, and waiting.

Handlers are real modules written into the test's directory and loaded by real
``loops-webhooks worker`` processes through ``LOOPS_HANDLERS`` and ``PYTHONPATH``. Each one
records what it did as a JSON line in ``EFFECTS_FILE`` (appends of one short line, so
several processes may write at once), and the test counts those lines.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from loops_webhooks.settings import Settings
from loops_webhooks.workers.dead_letters import DeadLetter, get_dead_letter
from loops_webhooks.workers.event_store import EventStore, StoredEvent
from loops_webhooks.workers.intake import EventIntake, ReceivedEvent
from loops_webhooks.workers.keys import dead_letter_id
from tests.support.loops_sender import LoopsSender
from tests.support.processes import Service, StartLoopsWebhooks, Supervisor
from tests.support.waiting import eventually

__all__ = [
    "HANDLERS_MODULE",
    "QUEUE",
    "Effect",
    "Workbench",
]

HANDLERS_MODULE = "shop_handlers"
QUEUE: str = Settings.model_fields["queue_name"].default

PREAMBLE = '''\
import asyncio
import json
import os
import time

from loops_webhooks.handlers import HandlerContext, Reject, RetryLater, Router

router = Router()


def record(ctx: HandlerContext, what: str, **extra: object) -> None:
    """Append one effect line; the test reads them back to count runs."""
    line = json.dumps({
        "what": what,
        "handler": ctx.handler,
        "event_id": ctx.event_id,
        "attempt": ctx.attempt,
        "idempotency_key": ctx.idempotency_key,
        "pid": os.getpid(),
        "at": time.time(),
        **extra,
    })
    with open(os.environ["EFFECTS_FILE"], "a") as effects:
        effects.write(line + "\\n")
'''


@dataclass(frozen=True, slots=True)
class Effect:
    """One line a handler recorded."""

    what: str
    handler: str
    event_id: str
    attempt: int
    idempotency_key: str
    pid: int
    at: float
    extra: Mapping[str, Any]


class Workbench:
    """One test's handlers module, effects file, worker settings and event producer."""

    def __init__(
        self,
        directory: Path,
        redis: Redis,
        redis_url: str,
        start_loops_webhooks: StartLoopsWebhooks,
        loops: LoopsSender,
    ) -> None:
        self.directory = directory
        self.redis = redis
        self.redis_url = redis_url
        self.effects_path = directory / "effects.jsonl"
        self.store = EventStore(redis, dedupe_ttl_seconds=3600)
        self._start = start_loops_webhooks
        self._loops = loops
        self._intake = EventIntake(redis, queue_name=QUEUE)
        self._workers: list[Service] = []
        self._count = 0

    def write_handlers(self, source: str) -> None:
        """Write the handlers module: ``source`` after a preamble defining ``router``,
        ``record(ctx, what, **extra)`` and the imports handlers use."""
        body = PREAMBLE + "\n\n" + textwrap.dedent(source)
        (self.directory / f"{HANDLERS_MODULE}.py").write_text(body)

    def settings(self, **overrides: object) -> dict[str, str]:
        """The worker's environment: small delays and timeouts, JSON logs, our handlers, and no
        metrics server (several workers run side by side)."""
        env = {
            "REDIS_URL": self.redis_url,
            "PYTHONPATH": os.pathsep.join([str(self.directory), os.environ.get("PYTHONPATH", "")]),
            "EFFECTS_FILE": str(self.effects_path),
            "LOOPS_HANDLERS": f"{HANDLERS_MODULE}:router",
            "LOOPS_LOG_FORMAT": "json",
            "LOOPS_RETRY_BASE_SECONDS": "0.2",
            "LOOPS_HANDLER_TIMEOUT_SECONDS": "2",
            "LOOPS_SHUTDOWN_GRACE_SECONDS": "5",
            "LOOPS_RECONCILE_INTERVAL_SECONDS": "0.5",
            "LOOPS_RECONCILE_GRACE_SECONDS": "0",
            "LOOPS_METRICS_PORT": "0",
        }
        env.update({f"LOOPS_{name.upper()}": str(value) for name, value in overrides.items()})
        return env

    def start_worker(self, **overrides: object) -> Service:
        """Start ``loops-webhooks worker`` as a user would, with ``settings(**overrides)``."""
        worker = self._start("worker", env=self.settings(**overrides))
        self._workers.append(worker)
        return worker

    def supervised_worker(self, **overrides: object) -> Supervisor:
        """A worker as ``start_worker`` starts it, restarted whenever it exits."""
        return Supervisor([self.start_worker(**overrides)])

    def worker_output(self) -> str:
        """Every worker's output so far, for failure messages."""
        return "\n".join(
            f"--- worker {index} ({worker.logs[-1].name}) ---\n{worker.output()}"
            for index, worker in enumerate(self._workers)
        )

    async def submit(
        self, event_type: str = "checkout.session.completed", *, event_id: str | None = None
    ) -> str:
        """Record and enqueue a new event through the receiver's own producer API."""
        self._count += 1
        event_id = event_id or f"evt_{self._count:04d}_{time.time_ns()}"
        body = self._loops.event(event_id, event_type)
        event = ReceivedEvent(
            event_id, event_type, body, self._loops.headers(body), int(time.time() * 1000)
        )
        assert await self._intake.submit(event)
        return event_id

    def effects(self, what: str | None = None, handler: str | None = None) -> list[Effect]:
        """What handlers recorded, in the order written, optionally of one kind or handler."""
        if not self.effects_path.exists():
            return []
        found = []
        for line in self.effects_path.read_text().splitlines():
            data = json.loads(line)
            known = {name: data.pop(name) for name in Effect.__slots__ if name in data}
            effect = Effect(**known, extra=data)
            if (what is None or effect.what == what) and (
                handler is None or effect.handler == handler
            ):
                found.append(effect)
        return found

    async def event(self, event_id: str) -> StoredEvent:
        stored = await self.store.get(event_id)
        assert stored is not None, f"{event_id} is not in the store"
        return stored

    async def dead_letter(self, event_id: str, handler: str) -> DeadLetter | None:
        return await get_dead_letter(self.redis, dead_letter_id(event_id, handler))

    async def wait_for_effect(
        self, what: str, *, count: int = 1, within: float = 15, handler: str | None = None
    ) -> list[Effect]:
        async def recorded() -> bool:
            return len(self.effects(what, handler)) >= count

        await eventually(
            recorded,
            within=within,
            what=f"{count} {what!r} effect(s)",
            details=self.worker_output,
        )
        return self.effects(what, handler)

    async def wait_for_status(self, event_id: str, status: str, *, within: float = 15) -> None:
        async def reached() -> bool:
            stored = await self.store.get(event_id)
            return stored is not None and stored.status == status

        await eventually(
            reached,
            within=within,
            what=f"event {event_id} is {status}",
            details=self.worker_output,
        )
