"""The arq worker that runs ``process_event`` jobs: built from settings, options checked.

arq's ``WorkerSettings`` classes silently ignore misspelled options; ours are passed as
keyword arguments from a validated Settings model, so a mistake fails at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from signal import Signals
from typing import TYPE_CHECKING, Any, cast

import orjson
import structlog
from arq.connections import ArqRedis
from arq.jobs import deserialize_job_raw
from arq.utils import timestamp_ms
from arq.worker import Worker, func
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from loops_webhooks.handlers import Handler, Router
from loops_webhooks.handlers.retry_policy import RetryPolicy
from loops_webhooks.settings import Settings
from loops_webhooks.workers import keys
from loops_webhooks.workers.admission import PausedHandlers, register_live_handlers
from loops_webhooks.workers.connection import REDIS_FAILURES, open_redis
from loops_webhooks.workers.dispatch import Dispatcher, slowest_handler_timeout
from loops_webhooks.workers.event_store import EventStore
from loops_webhooks.workers.health import RedisHealth
from loops_webhooks.workers.in_progress import InProgressKeeper
from loops_webhooks.workers.intake import PROCESS_EVENT_JOB
from loops_webhooks.workers.metrics import refresh_queue_gauges
from loops_webhooks.workers.metrics_server import MetricsServer
from loops_webhooks.workers.reconciler import Reconciler
from loops_webhooks.workers.scripts import register_script

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["EventWorker", "build_worker"]

JOB_MARGIN_SECONDS = 5.0
"""Time a job may take beyond its slowest handler's timeout, for its own bookkeeping."""

IN_PROGRESS_MARGIN_SECONDS = 2.0
"""How long after a job's timeout another worker may take over a job whose worker died."""

NEVER_BY_ARQ = 2**31 - 1
"""arq's max_tries: our dispatcher owns attempts and dead-lettering, never arq."""

REDIS_CONNECT_TIMEOUT_SECONDS = 1.0
REDIS_SOCKET_TIMEOUT_SECONDS = 10.0
"""A worker's Redis timeouts: a primary that stops answering (a host gone, a partition) is
given up on after this, so the next command asks Sentinel for the current one."""

STARTUP_REDIS_TRIES = 5
"""A worker starting while Redis is unreachable tries this often, a second apart (as arq's
own ``create_pool`` would), before it exits."""


WAKE_WHEN_FREE_FRACTION = 4
"""A full worker polls again, before its poll interval is up, once a quarter of its slots
(at least one) have freed: one poll then claims a batch, not one job per poll."""

HEALTH_KEY_INTERVAL_SECONDS = 5
"""How often arq's health key is written: the write that notices a full Redis when idle."""

RECONCILER = "loops_reconciler"
METRICS_SERVER = "loops_metrics_server"

log = structlog.get_logger(logger_name="loops_webhooks.workers")


class EventWorker(Worker):
    """arq's Worker, with its job step and its loop made to outlive Redis trouble.

    Claiming: arq claims each job with WATCH, EXISTS, ZSCORE and MULTI/EXEC, four round trips
    per job, the largest cost of a short job; one script makes the same checks and sets the
    same in-progress marker atomically, and reads the jobs' payloads, once per poll.
    Running: ``run_claimed_job`` (in place of arq's ``run_job``) calls the
    dispatcher directly, whose final write reschedules or removes the job and says so in its
    return value, so arq's own pre-job pipeline and finishing step are skipped. Riding out
    Redis: a Redis error in a poll or a job never leaves the worker (arq would exit); it is
    reported to ``redis_health``, the poll loop backs off, and work goes on when Redis
    answers. Pacing: arq's loop sleeps a fixed step between polls, so a full worker whose
    jobs end early sits idle until the step is up; ``_until_next_poll`` sleeps the poll
    interval too, but a full worker's sleep ends as soon as a batch of slots has freed
    (``slots_freed``). The in-progress markers of running jobs are kept alive by a thread
    (``InProgressKeeper``), so a handler blocking the loop cannot let another worker in.
    """

    shutting_down = False
    """Set by SIGTERM/SIGINT: a job cancelled from now on was stopped, not timed out."""

    dispatcher: Dispatcher
    handlers: tuple[Handler, ...]
    in_progress: InProgressKeeper
    redis_health: RedisHealth
    poll_interval_s: float
    """The sleep between polls (``LOOPS_POLL_INTERVAL_SECONDS``); arq's own step is 0."""
    slots_freed: asyncio.Event
    """Set when a full worker has room for a batch again: its next poll need not wait."""

    async def main(self) -> None:
        """arq's main loop, after waiting a little for a Redis that is not there yet."""
        for tries_left in range(STARTUP_REDIS_TRIES - 1, -1, -1):
            try:
                await self.pool.ping()
                break
            except (RedisConnectionError, RedisTimeoutError, OSError) as error:
                if not tries_left:
                    raise
                log.warning("waiting for Redis", error=type(error).__name__, detail=str(error))
                await asyncio.sleep(1)
        await super().main()

    def handle_sig(self, signum: Signals) -> None:
        self._stopping(signum)
        super().handle_sig(signum)

    def handle_sig_wait_for_completion(self, signum: Signals) -> None:
        self._stopping(signum)
        super().handle_sig_wait_for_completion(signum)

    def _stopping(self, signum: Signals) -> None:
        """The worker's "stopping" line, once (arq's own is at info on a logger we quiet)."""
        if not self.shutting_down:
            log.info("worker stopping", signal=Signals(signum).name, running=len(self.tasks))
        self.shutting_down = True

    async def _poll_iteration(self) -> None:
        if self.shutting_down and all(task.done() for task in self.tasks.values()):
            # Stopping, and no job left to wait for: what arq's waiter does by cancelling
            # this task, whose cancel was seen lost to a signal that came during start-up
            # (the worker then polled on for good, picking nothing).
            raise asyncio.CancelledError
        pause = self.redis_health.backoff_seconds()
        if pause:
            await asyncio.sleep(pause)
        try:
            if self.redis_health.problem is not None:
                await self.record_health_now()
            await super()._poll_iteration()
        except REDIS_FAILURES as error:
            self.redis_health.failed(error)
        await self._until_next_poll()

    async def _until_next_poll(self) -> None:
        """Sleep the poll interval; a worker left full by this poll wakes as soon as a batch
        of its slots is free (a worker with room is waiting for due jobs, not slots)."""
        self.slots_freed.clear()
        if self.job_counter < self.max_jobs:
            await asyncio.sleep(self.poll_interval_s)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.poll_interval_s):
                await self.slots_freed.wait()

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        if (self.max_jobs - self.job_counter) * WAKE_WHEN_FREE_FRACTION >= self.max_jobs:
            self.slots_freed.set()

    async def record_health(self) -> None:
        """arq's health key, and with it (as often) the handlers this worker has, so that
        pausing a name no running worker knows can be refused."""
        if timestamp_ms() / 1000 - self._last_health_check < self.health_check_interval:
            return
        await super().record_health()
        await register_live_handlers(self.pool, self.handlers)
        self.redis_health.succeeded()

    async def record_health_now(self) -> None:
        """Write arq's health key at once: the probe that says Redis takes writes again."""
        self._last_health_check = 0
        await self.record_health()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        room = self.max_jobs - self.job_counter
        if room <= 0 or not job_ids:
            return
        if not hasattr(self, "_claim_due_jobs"):
            self._claim_due_jobs = register_script(self.pool, "claim_due_jobs")
        claimed = await self._claim_due_jobs(
            keys=[self.queue_name],
            args=[
                timestamp_ms(),
                int(self.in_progress_timeout_s * 1000),
                room,
                keys.ARQ_IN_PROGRESS_PREFIX,
                keys.ARQ_JOB_PREFIX,
                *job_ids,
            ],
        )
        for job_id, payload in zip(claimed[0::2], claimed[1::2], strict=True):
            await self.sem.acquire()
            self.job_counter += 1
            task = self.loop.create_task(self.run_claimed_job(job_id.decode(), payload or None))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id.decode()] = task

    async def run_claimed_job(self, job_id: str, payload: bytes | None) -> None:
        """Run one claimed job, whose ``payload`` the claim read (None: it expired or was
        removed). Raises nothing, as arq's own ``run_job``: arq's loop re-raises what a job
        raised and the worker would stop. A job cancelled by a shutdown was settled by the
        dispatcher on its way out (its handlers run again later)."""
        self.in_progress.track(job_id)
        try:
            await self._run_event_job(job_id, payload)
        except asyncio.CancelledError:
            log.info("job cancelled by shutdown; it runs again later", job_id=job_id)
        except REDIS_FAILURES as error:
            self.redis_health.failed(error)
            log.warning(
                "job not run: Redis failed before any handler ran; it runs again later",
                job_id=job_id,
                error=f"{type(error).__name__}: {error}",
            )
            await self._release(job_id)
        except Exception:
            log.exception("job failed unexpectedly; it runs again later", job_id=job_id)
            await self._release(job_id)
        finally:
            self.in_progress.untrack(job_id)

    async def _run_event_job(self, job_id: str, payload: bytes | None) -> None:
        if payload is None:
            log.warning("job payload expired or removed; dropping the job", job_id=job_id)
            await self._remove(job_id)
            return
        function_name, args, _, _, _ = deserialize_job_raw(
            payload, deserializer=self.job_deserializer
        )
        if function_name != PROCESS_EVENT_JOB or len(args) != 2:
            log.error("not an event job; dropping it", job_id=job_id, function=function_name)
            await self._remove(job_id)
            return
        event_id, event_type = args
        settled = False
        with structlog.contextvars.bound_contextvars(event_id=event_id, event_type=event_type):
            try:
                async with asyncio.timeout(self.job_timeout_s):
                    settled = await self.dispatcher.process(event_id, event_type, job_id=job_id)
            except TimeoutError:
                settled = True  # the dispatcher recorded the cut-short attempts and the job
        self.redis_health.succeeded()
        if not settled:
            await self._remove(job_id)

    async def _remove(self, job_id: str) -> None:
        """arq's own finishing step: the job, its marker and retry counter go."""
        await super().finish_job(job_id, True, None, None, False, None, None)

    async def _release(self, job_id: str) -> None:
        """Give a job that did not run back to the queue now (best effort: if Redis cannot
        take even this, the marker expires)."""
        with contextlib.suppress(*REDIS_FAILURES):
            await self.pool.delete(keys.arq_in_progress_key(job_id))

    async def close(self) -> None:
        try:
            await super().close()
        except REDIS_FAILURES as error:
            log.warning("Redis unusable while stopping", error=f"{type(error).__name__}: {error}")
        self.in_progress.stop()


def _worker_redis(settings: Settings, redis_url: str) -> ArqRedis:
    """arq's client, from the same ``open_redis`` as every other process (arq's own Sentinel
    support cannot pass the Sentinels' password, TLS or timeouts)."""
    pool = cast(
        ArqRedis,
        open_redis(
            redis_url,
            sentinel_password=settings.sentinel_password,
            redis_class=ArqRedis,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_SECONDS,
            socket_timeout=REDIS_SOCKET_TIMEOUT_SECONDS,
        ),
    )
    pool.job_serializer = orjson.dumps
    pool.job_deserializer = orjson.loads
    pool.default_queue_name = settings.queue_name
    return pool


def build_worker(
    settings: Settings, redis_url: str, router: Router, tracer: Tracer | None = None
) -> Worker:
    """An arq Worker for ``router``'s handlers; ``worker.run()`` runs it until a signal.

    With a ``tracer`` (traces on, ``loops_webhooks.tracing``), each handler attempt is a span
    (``workers/traces.py``); without one, nothing of OpenTelemetry is imported."""
    job_timeout = slowest_handler_timeout(router, settings.handler_timeout_seconds)
    job_timeout += JOB_MARGIN_SECONDS
    retry_policy = RetryPolicy(
        max_attempts=settings.max_attempts,
        base_seconds=settings.retry_base_seconds,
        max_delay_seconds=settings.retry_max_delay_seconds,
    )

    traces = None
    if tracer is not None:
        from loops_webhooks.workers.traces import AttemptTraces

        traces = AttemptTraces(tracer)

    async def on_startup(ctx: dict[str, Any]) -> None:
        redis = ctx["redis"]
        worker.dispatcher = Dispatcher(
            router,
            EventStore(
                redis,
                dedupe_ttl_seconds=settings.dedupe_ttl_seconds,
                queue_name=settings.queue_name,
                slot_ttl_seconds=worker.in_progress_timeout_s,
                ordering=settings.ordering,
            ),
            paused=PausedHandlers(redis),
            retry_policy=retry_policy,
            handler_timeout_seconds=settings.handler_timeout_seconds,
            dead_letter_unhandled=settings.unhandled == "dead-letter",
            shutting_down=lambda: worker.shutting_down,
            on_redis_failure=worker.redis_health.failed,
            traces=traces,
        )
        worker.in_progress.start(asyncio.get_running_loop())
        reconciler = Reconciler(
            redis,
            queue_name=settings.queue_name,
            interval_seconds=settings.reconcile_interval_seconds,
            grace_seconds=settings.reconcile_grace_seconds,
            dedupe_ttl_seconds=settings.dedupe_ttl_seconds,
            dead_letter_retention_days=settings.dead_letter_retention_days,
        )
        reconciler.start()
        ctx[RECONCILER] = reconciler
        if settings.worker_metrics_port:
            metrics_server = MetricsServer(
                host=settings.metrics_host,
                port=settings.worker_metrics_port,
                refresh=functools.partial(
                    refresh_queue_gauges,
                    redis,
                    queue_name=settings.queue_name,
                    handlers=[handler.name for handler in router.handlers],
                ),
                problem=lambda: worker.redis_health.problem,
            )
            await metrics_server.start()
            ctx[METRICS_SERVER] = metrics_server
        log.info(
            "worker started",
            handlers=[handler.name for handler in router.handlers],
            queue=settings.queue_name,
            concurrency=settings.worker_concurrency,
        )

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        reconciler: Reconciler | None = ctx.get(RECONCILER)
        if reconciler is not None:
            await reconciler.stop()
        metrics_server: MetricsServer | None = ctx.get(METRICS_SERVER)
        if metrics_server is not None:
            await metrics_server.stop()

    worker = EventWorker(
        functions=[
            func(
                _run_by_event_worker,
                name=PROCESS_EVENT_JOB,
                timeout=job_timeout,
                max_tries=NEVER_BY_ARQ,
                keep_result=0,
            )
        ],
        queue_name=settings.queue_name,
        redis_pool=_worker_redis(settings, redis_url),
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        handle_signals=True,
        job_completion_wait=math.ceil(settings.shutdown_grace_seconds),
        max_jobs=settings.worker_concurrency,
        job_timeout=job_timeout,
        keep_result=0,
        poll_delay=0,  # EventWorker._until_next_poll sleeps between polls
        max_tries=NEVER_BY_ARQ,
        job_serializer=orjson.dumps,
        job_deserializer=orjson.loads,
        log_results=False,
        health_check_interval=HEALTH_KEY_INTERVAL_SECONDS,
    )
    # arq lets a job that lost its worker be taken over 10 s after its timeout; a job's
    # timeout already bounds it, so a shorter margin redelivers sooner without overlap.
    worker.in_progress_timeout_s = job_timeout + IN_PROGRESS_MARGIN_SECONDS
    worker.redis_health = RedisHealth()
    worker.poll_interval_s = settings.poll_interval_seconds
    worker.slots_freed = asyncio.Event()
    worker.handlers = router.handlers
    worker.in_progress = InProgressKeeper(
        redis_url,
        sentinel_password=settings.sentinel_password,
        ttl_seconds=worker.in_progress_timeout_s,
        running_handlers=lambda: sorted(worker.dispatcher.running),
        limited_handlers=[handler.name for handler in router.handlers if handler.concurrency],
    )
    return worker


async def _run_by_event_worker(ctx: dict[str, Any], event_id: str, event_type: str) -> None:
    """Registered so that arq knows the job's name and time limit; ``EventWorker.run_claimed_job``
    runs these jobs itself and never calls this."""
    raise RuntimeError("process_event jobs are run by EventWorker.run_claimed_job")
