"""The fault-injection harness: the real service as separate processes, faults, and the count.

Everything runs as in production, as child processes on loopback:

- a dedicated ``redis-server`` with AOF and ``appendfsync always``, which the faults kill and
  start again on the same port and directory;
- the receiver (``loops-webhooks serve``) and two workers (``loops-webhooks worker``), kept
  running by a supervisor that restarts whatever exits, as systemd or Kubernetes would;
- a client that signs events as Loops does (hex HMAC-SHA256 of the raw body, computed here
  with ``hmac``) and redelivers each one until it gets a 2xx, within bounded tries and time.

The handlers (``fault_handlers.py``, copied into the test's directory) record every effect in
a second ``redis-server`` that no fault touches, through their idempotency key: the effect is
a ``SET effect:<key> ... NX`` and, only when that set something, one more in the ``applied``
count of the (event, handler) pair, both in one script. A double effect therefore shows as
an applied count of 2; raw invocations are counted separately, since a handler may run more
than once (at least once per handler, by design).

``account`` ends every scenario: every event that got a 2xx is, for each matching handler,
done with exactly one applied effect or dead-lettered; nothing is pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import redis as redis_sync
from redis.asyncio import Redis

from loops_webhooks.handlers.context import idempotency_key
from loops_webhooks.workers import keys
from tests.support.loops_sender import LoopsSender
from tests.support.ports import free_port, listening
from tests.support.processes import LOOPS_WEBHOOKS, Service, Supervisor, clean_environment
from tests.support.redis_server import RedisServer
from tests.support.sentinel import SentinelGroup
from tests.support.waiting import eventually

__all__ = [
    "COMPLETED",
    "EXPIRED",
    "FAILED",
    "Accounting",
    "Harness",
    "LoopsClient",
    "Send",
    "account",
    "event_plan",
]

HANDLERS_FILE = Path(__file__).with_name("fault_handlers.py")
WEBHOOK_PATH = "/webhooks/loops"

COMPLETED = "checkout.session.completed"
EXPIRED = "checkout.session.expired"
FAILED = "checkout.session.failed"

HANDLERS_BY_TYPE: dict[str, tuple[str, ...]] = {
    COMPLETED: ("fulfil", "audit"),
    EXPIRED: ("audit", "release_stock"),
    FAILED: ("audit", "notify_support"),
}
"""What ``fault_handlers.py`` routes each event type to, by handler name."""

HANDLER_TIMEOUT_SECONDS = 2
STARTUP_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Send:
    """One delivery in a plan; ``copies`` > 1 sends that many at once (concurrent duplicates)."""

    event_id: str
    body: bytes
    copies: int = 1


@dataclass(slots=True)
class DeliveryRecord:
    """Everything the client saw for one event id, over all its deliveries and tries."""

    event_id: str
    body: bytes
    deliveries: int = 0
    acknowledged: bool = False
    accepted_as_new: int = 0
    answers: Counter[str] = field(default_factory=Counter)


def event_plan(
    sender: LoopsSender, prefix: str, count: int, *, types: Iterable[str] = (COMPLETED,)
) -> list[Send]:
    """``count`` fresh events (types cycled), with duplicates on purpose, as Loops sends them.

    Every 10th event is delivered again seven sends later (a sequential redelivery), every
    25th is delivered twice at once (two concurrent requests with the same body).
    """
    type_cycle = list(types)
    events = []
    for index in range(count):
        event_id = f"evt_{prefix}_{index:04d}_{time.time_ns() % 10**9}"
        events.append((event_id, sender.event(event_id, type_cycle[index % len(type_cycle)])))
    plan = [
        Send(event_id, body, copies=2 if index % 25 == 12 else 1)
        for index, (event_id, body) in enumerate(events)
    ]
    for index in range(len(events) - 1, -1, -1):
        if index % 10 == 3:
            event_id, body = events[index]
            plan.insert(min(index + 8, len(plan)), Send(event_id, body))
    return plan


class LoopsClient:
    """Delivers signed events to the receiver and, like Loops, redelivers until a 2xx.

    Any answer but a 2xx (connection refused or reset, timeout, 503, anything) is retried
    after a short backoff, up to ``max_tries`` and ``give_up_after`` seconds per delivery.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        sender: LoopsSender,
        *,
        max_tries: int = 150,
        give_up_after: float = 60.0,
        request_timeout: float = 5.0,
    ) -> None:
        self._session = session
        self._url = url
        self._sender = sender
        self._max_tries = max_tries
        self._give_up_after = give_up_after
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self.records: dict[str, DeliveryRecord] = {}
        self.requests = 0
        self.timeline: list[tuple[float, float, str]] = []
        """Every request as (sent, answered, answer), monotonic seconds."""

    @property
    def acknowledged(self) -> set[str]:
        return {event_id for event_id, record in self.records.items() if record.acknowledged}

    @property
    def sent(self) -> int:
        return len(self.records)

    @property
    def duplicates_sent(self) -> int:
        return sum(record.deliveries - 1 for record in self.records.values())

    def answers(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for record in self.records.values():
            total.update(record.answers)
        return total

    async def post_once(self, event_id: str, body: bytes) -> tuple[str, dict[str, str]]:
        """One request, no retry: the answer (status code or exception name) and headers."""
        record = self.records.setdefault(event_id, DeliveryRecord(event_id, body))
        self.requests += 1
        sent = time.monotonic()
        try:
            async with self._session.post(
                self._url, data=body, headers=self._sender.headers(body), timeout=self._timeout
            ) as response:
                payload = await response.read()
                answer = str(response.status)
                if 200 <= response.status < 300:
                    record.acknowledged = True
                    if not orjson.loads(payload).get("duplicate", True):
                        record.accepted_as_new += 1
                headers = dict(response.headers)
        except (aiohttp.ClientError, TimeoutError) as error:
            answer, headers = type(error).__name__, {}
        record.answers[answer] += 1
        self.timeline.append((sent, time.monotonic(), answer))
        return answer, headers

    async def deliver(self, event_id: str, body: bytes) -> bool:
        """Deliver until a 2xx; False if it never got one within the bounds."""
        record = self.records.setdefault(event_id, DeliveryRecord(event_id, body))
        record.deliveries += 1
        deadline = time.monotonic() + self._give_up_after
        for attempt in range(self._max_tries):
            answer, _ = await self.post_once(event_id, body)
            if answer.startswith("2"):
                return True
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(min(0.5, 0.05 * 2**attempt))
        return False

    async def stream(self, plan: list[Send], *, rate: float, concurrency: int = 16) -> None:
        """Start one send every ``1/rate`` s (at most ``concurrency`` in flight); wait for all."""
        slots = asyncio.Semaphore(concurrency)

        async def send(item: Send) -> None:
            async with slots:
                await asyncio.gather(
                    *(self.deliver(item.event_id, item.body) for _ in range(item.copies))
                )

        started = time.monotonic()
        tasks = []
        for index, item in enumerate(plan):
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(item)))
        await asyncio.gather(*tasks)


class Harness:
    """One scenario's world: the two Redis servers, the receiver, two supervised workers.

    With ``sentinel``, the event store is a ``SentinelGroup`` instead of one server: the
    services get its ``redis+sentinel://`` URL and ``LOOPS_REDIS_MIN_REPLICAS=1``.
    ``settings`` override the suite's ``LOOPS_*`` settings (names without the prefix). Each
    worker serves ``/healthz`` on its own port, ``worker_metrics_ports[slot]``. ``handlers``
    is the handler module the services load (its ``router``); ``handlers_env`` is what that
    module reads from the environment beside the suite's ``FAULTS_*``.
    """

    def __init__(
        self,
        root: Path,
        sender: LoopsSender,
        settings: dict[str, str] | None = None,
        *,
        sentinel: bool = False,
        handlers: Path = HANDLERS_FILE,
        handlers_env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.sender = sender
        self.settings = settings or {}
        self.handlers = handlers
        self.handlers_env = handlers_env or {}
        self.worker_metrics_ports = [free_port(), free_port()]
        self.sentinel_group = SentinelGroup(root / "redis-ha") if sentinel else None
        self.redis = (
            self.sentinel_group.primary
            if self.sentinel_group
            else RedisServer(root / "redis", appendfsync="always")
        )
        self.effects_redis = RedisServer(root / "effects-redis", appendfsync=None)
        self.fixed_flag = root / "handlers-fixed"
        self.receiver_port = free_port()
        self.receiver_url = f"http://127.0.0.1:{self.receiver_port}{WEBHOOK_PATH}"
        self.receiver: Service | None = None
        self.supervisor: Supervisor | None = None
        self.receiver_restarts = 0
        self.redis_outages = 0
        self._supervising: asyncio.Task[None] | None = None
        self._started = 0.0

    @property
    def env(self) -> dict[str, str]:
        """A clean environment (no LOOPS_* or REDIS_URL inherited) with the suite's settings."""
        return clean_environment(
            {
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(self.root), os.environ.get("PYTHONPATH")])
                ),
                **(
                    {"REDIS_URL": self.sentinel_group.url, "LOOPS_REDIS_MIN_REPLICAS": "1"}
                    if self.sentinel_group
                    else {"REDIS_URL": self.redis.url}
                ),
                "LOOPS_WEBHOOK_SECRET": self.sender.secret,
                "LOOPS_HANDLERS": f"{self.handlers.stem}:router",
                "LOOPS_LOG_FORMAT": "json",
                "LOOPS_METRICS_PORT": "0",
                "LOOPS_HANDLER_TIMEOUT_SECONDS": str(HANDLER_TIMEOUT_SECONDS),
                "LOOPS_RETRY_BASE_SECONDS": "0.1",
                "LOOPS_RETRY_MAX_DELAY_SECONDS": "1",
                "LOOPS_RECONCILE_INTERVAL_SECONDS": "1",
                "LOOPS_RECONCILE_GRACE_SECONDS": "2",
                "LOOPS_SHUTDOWN_GRACE_SECONDS": "1",
                "FAULTS_EFFECTS_URL": self.effects_redis.url,
                "FAULTS_FIXED_FLAG": str(self.fixed_flag),
                **{f"LOOPS_{name.upper()}": value for name, value in self.settings.items()},
                **self.handlers_env,
            }
        )

    async def start(self) -> None:
        self._started = time.monotonic()
        shutil.copy(self.handlers, self.root / self.handlers.name)
        await asyncio.to_thread(self.effects_redis.start)
        await asyncio.to_thread(
            self.sentinel_group.start if self.sentinel_group else self.redis.start
        )
        env = self.env
        serve = ["serve", "--port", str(self.receiver_port)]
        self.receiver = Service("receiver", serve, env, self.root)
        workers = [
            Service(
                f"worker{slot}",
                ["worker"],
                {**env, "LOOPS_METRICS_PORT": str(self.worker_metrics_ports[slot])},
                self.root,
            )
            for slot in (0, 1)
        ]
        self.supervisor = Supervisor(workers)
        self.receiver.start()
        for worker in workers:
            worker.start()
        self._supervising = asyncio.create_task(self.supervisor.run())
        await self._wait_for_receiver()
        for worker in workers:
            await self._wait_for_log(worker, '"worker started"')

    async def stop(self) -> None:
        if self._supervising is not None:
            self._supervising.cancel()
            with contextlib.suppress(asyncio.CancelledError, AssertionError):
                await self._supervising
        services = [self.receiver, *(self.supervisor.workers if self.supervisor else [])]
        await asyncio.gather(
            *(asyncio.to_thread(service.stop) for service in services if service is not None)
        )
        for server in (self.sentinel_group or self.redis, self.effects_redis):
            await asyncio.to_thread(server.close)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self._started

    def check_supervisor(self) -> None:
        """Raise what stopped the supervisor, if anything did."""
        if self._supervising is not None and self._supervising.done():
            self._supervising.result()

    def describe(self) -> str:
        """The last lines of every process's current log, for failure messages."""
        services = [self.receiver, *(self.supervisor.workers if self.supervisor else [])]
        return "\n".join(service.output_tail() for service in services if service is not None)

    async def _wait_for_receiver(self) -> None:
        assert self.receiver is not None
        receiver = self.receiver

        async def receiver_listens() -> bool:
            code = receiver.exit_code()
            if code is not None:
                raise AssertionError(f"receiver exited with {code}:\n{receiver.output_tail()}")
            return await asyncio.to_thread(listening, self.receiver_port)

        await eventually(receiver_listens, within=STARTUP_SECONDS, what="the receiver listens")

    async def _wait_for_log(self, service: Service, needle: str) -> None:
        async def logged() -> bool:
            self.check_supervisor()
            return needle in service.logs[-1].read_text(errors="replace")

        await eventually(
            logged,
            within=STARTUP_SECONDS,
            what=f"{service.name} logs {needle}",
            details=service.output_tail,
        )

    # faults

    def kill_worker(self, slot: int) -> None:
        assert self.supervisor is not None
        self.supervisor.kill(slot)

    async def kill_receiver_and_restart(self) -> None:
        """SIGKILL the receiver, then start it again on the same port."""
        assert self.receiver is not None
        await asyncio.to_thread(self.receiver.kill)
        self.receiver.start()
        self.receiver_restarts += 1
        await self._wait_for_receiver()

    async def redis_down(self, *, kill: bool) -> None:
        """Take the event store away: SIGKILL (``kill``) or an orderly ``SHUTDOWN``."""
        await asyncio.to_thread(self.redis.kill if kill else self.redis.shutdown)
        self.redis_outages += 1

    async def redis_up(self) -> None:
        """Start the event store again, same port and directory: it loads its AOF."""
        await asyncio.to_thread(self.redis.start)

    # inspection

    def store_url(self) -> str:
        """The event store's current primary (after a failover, the promoted replica)."""
        return self.sentinel_group.primary_url() if self.sentinel_group else self.redis.url

    async def pending_events(self) -> int:
        async with Redis.from_url(self.store_url()) as client:
            return int(await client.zcard(keys.PENDING_EVENTS))

    async def dead_letter_ids(self) -> list[str]:
        async with Redis.from_url(self.store_url()) as client:
            return [raw.decode() for raw in await client.zrange(keys.DEAD_LETTER_INDEX, 0, -1)]

    async def dead_letter(self, letter_id: str) -> dict[str, str]:
        """One dead letter's fields (raw bytes left out)."""
        async with Redis.from_url(self.store_url()) as client:
            stored = await client.hgetall(keys.dead_letter_key(letter_id))
        return {name.decode(): value.decode() for name, value in stored.items() if name != b"raw"}

    async def invocations(self, handler: str) -> dict[str, int]:
        """How often ``handler`` was called, per event id (every call, whatever its end)."""
        async with Redis.from_url(self.effects_redis.url) as client:
            counts = _pair_counts(await client.hgetall("invocations"))
        return {
            pair.split()[0]: count for pair, count in counts.items() if pair.split()[1] == handler
        }

    async def stored(self, event_ids: Iterable[str]) -> dict[str, bool]:
        """Whether each event id has its record in the event store."""
        ids = list(event_ids)
        async with Redis.from_url(self.store_url()) as client, client.pipeline() as pipe:
            for event_id in ids:
                pipe.exists(keys.event_key(event_id))
            found = await pipe.execute()
        return {event_id: bool(exists) for event_id, exists in zip(ids, found, strict=True)}

    async def settle(self, *, within: float) -> None:
        """Wait, workers supervised, until no event is pending."""

        async def nothing_pending() -> bool:
            self.check_supervisor()
            with contextlib.suppress(redis_sync.RedisError, OSError):
                return await self.pending_events() == 0
            return False

        await eventually(
            nothing_pending,
            within=within,
            what="no event pending",
            details=self.describe,
            interval=0.2,
        )

    async def replay_all_dead_letters(self) -> subprocess.CompletedProcess[str]:
        """``loops-webhooks dlq replay --all``, as an operator runs it."""
        return await asyncio.to_thread(
            subprocess.run,
            [LOOPS_WEBHOOKS, "dlq", "replay", "--all"],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def fix_handlers(self) -> None:
        self.fixed_flag.touch()


@dataclass(slots=True)
class Accounting:
    """The end-of-scenario count; ``problems`` empty means every promise held."""

    scenario: str
    seconds: float
    sent: int
    requests: int
    acknowledged: int
    duplicates_sent: int
    handled_pairs: int = 0
    dead_lettered_pairs: int = 0
    applied_effects: int = 0
    invocations: int = 0
    worker_kills: int = 0
    worker_own_exits: int = 0
    receiver_restarts: int = 0
    redis_outages: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    @property
    def extra_invocations(self) -> int:
        """Invocations beyond one per (event, handler): retries, and re-runs after a kill."""
        return self.invocations - self.handled_pairs - self.dead_lettered_pairs

    def summary(self) -> str:
        answers = ", ".join(f"{answer}: {count}" for answer, count in sorted(self.answers.items()))
        return (
            f"[faults] {self.scenario}: {self.seconds:.1f}s | sent {self.sent} events "
            f"({self.requests} requests), 2xx {self.acknowledged}, duplicates sent "
            f"{self.duplicates_sent} | handled pairs {self.handled_pairs}, dead-lettered pairs "
            f"{self.dead_lettered_pairs}, applied effects {self.applied_effects}, raw "
            f"invocations {self.invocations} (+{self.extra_invocations} beyond one per pair) | "
            f"worker kills {self.worker_kills}, worker own exits {self.worker_own_exits}, "
            f"receiver restarts {self.receiver_restarts}, redis outages {self.redis_outages} | "
            f"answers {{{answers}}}"
        )

    def assert_kept(self, details: str = "") -> None:
        shown = "\n".join(self.problems[:20])
        more = f"\n... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        assert not self.problems, f"{self.summary()}\n{shown}{more}\n{details}"


async def account(harness: Harness, client: LoopsClient, scenario: str) -> Accounting:
    """Count every acknowledged event's fate; the scenario's promises as a list of problems."""
    assert harness.supervisor is not None
    result = Accounting(
        scenario=scenario,
        seconds=harness.seconds,
        sent=client.sent,
        requests=client.requests,
        acknowledged=len(client.acknowledged),
        duplicates_sent=client.duplicates_sent,
        worker_kills=harness.supervisor.kills,
        worker_own_exits=harness.supervisor.own_exits,
        receiver_restarts=harness.receiver_restarts,
        redis_outages=harness.redis_outages,
        answers=client.answers(),
    )
    problems = result.problems
    acknowledged = sorted(client.acknowledged)
    async with Redis.from_url(harness.effects_redis.url) as effects:
        invocations = _pair_counts(await effects.hgetall("invocations"))
        applied = _pair_counts(await effects.hgetall("applied"))
        effect_keys = {raw.decode() async for raw in effects.scan_iter("effect:*", count=1000)}
    async with Redis.from_url(harness.store_url()) as store:
        pending = int(await store.zcard(keys.PENDING_EVENTS))
        async with store.pipeline() as pipe:
            for event_id in acknowledged:
                pipe.hgetall(keys.event_key(event_id))
            records = await pipe.execute()
        letters = {raw.decode() for raw in await store.zrange(keys.DEAD_LETTER_INDEX, 0, -1)}

    if pending:
        problems.append(f"{pending} event(s) still pending")
    for pair, count in applied.items():
        if count != 1:
            problems.append(f"{pair}: applied {count} times (a double effect)")
    if len(effect_keys) != len(applied):
        problems.append(f"{len(effect_keys)} effect keys for {len(applied)} applied pairs")
    for record in client.records.values():
        if record.accepted_as_new > 1:
            problems.append(f"{record.event_id}: accepted as new {record.accepted_as_new} times")

    for event_id, stored in zip(acknowledged, records, strict=True):
        if not stored:
            problems.append(f"{event_id}: got a 2xx but is not in the event store (lost)")
            continue
        event_type = stored[b"type"].decode()
        status = stored[b"status"].decode()
        if status not in ("done", "dead"):
            problems.append(f"{event_id}: status {status}")
        for handler in HANDLERS_BY_TYPE[event_type]:
            pair = f"{event_id} {handler}"
            raw_state = stored.get(f"handler:{handler}".encode())
            state = orjson.loads(raw_state)["status"] if raw_state else "never run"
            lettered = f"{event_id}:{handler}" in letters
            if state == "done" and not lettered:
                result.handled_pairs += 1
                effect = f"effect:{idempotency_key(event_id, handler)}"
                if applied.get(pair) != 1 or effect not in effect_keys:
                    problems.append(f"{pair}: done, but applied {applied.get(pair, 0)} times")
            elif state == "dead" and lettered:
                result.dead_lettered_pairs += 1
                if applied.get(pair, 0) > 1:
                    problems.append(f"{pair}: dead-lettered after {applied[pair]} effects")
            else:
                problems.append(f"{pair}: handler {state}, dead letter {lettered}")
    result.applied_effects = sum(applied.values())
    result.invocations = sum(
        count for pair, count in invocations.items() if pair.split()[0] in client.acknowledged
    )
    return result


def _pair_counts(raw: dict[bytes, bytes]) -> dict[str, int]:
    return {pair.decode(): int(count) for pair, count in raw.items()}
