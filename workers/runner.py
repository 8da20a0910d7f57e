"""The arq worker that runs ``process_event`` jobs: built from settings, options checked.

arq's ``WorkerSettings`` classes silently ignore misspelled options; ours are passed as
keyword arguments from a validated Settings model, so a mistake fails at start-up.
"""

from __future__ import annotations

import asyncio
import functools
import math
from signal import Signals
from typing import Any, cast

import orjson
import structlog
from arq.connections import ArqRedis
from arq.utils import timestamp_ms
from arq.worker import Worker, func
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from loops_webhooks.handlers import Router
from loops_webhooks.handlers.retry_policy import RetryPolicy
from loops_webhooks.settings import Settings
from loops_webhooks.workers import keys
from loops_webhooks.workers.connection import open_redis
from loops_webhooks.workers.dispatch import (
    DISPATCHER,
    SETTLED_JOBS,
    Dispatcher,
    process_event,
    slowest_handler_timeout,
)
from loops_webhooks.workers.event_store import EventStore
from loops_webhooks.workers.intake import PROCESS_EVENT_JOB
from loops_webhooks.workers.metrics import refresh_queue_gauges
from loops_webhooks.workers.metrics_server import MetricsServer
from loops_webhooks.workers.reconciler import Reconciler
from loops_webhooks.workers.scripts import register_script

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

REDIS_UNREACHABLE_PAUSE_SECONDS = 0.5
"""How long a worker that cannot reach Redis waits before polling again."""

RECONCILER = "loops_reconciler"
METRICS_SERVER = "loops_metrics_server"

log = structlog.get_logger(logger_name="loops_webhooks.workers")


class EventWorker(Worker):
    """arq's Worker, claiming all the due jobs it has room for in one script call per poll.

    arq claims each job with WATCH, EXISTS, ZSCORE and MULTI/EXEC: four round trips per job,
    the largest cost of a short job. The script makes the same checks and sets the same
    in-progress marker atomically, once per poll; everything else is arq's own code.
    """

    shutting_down = False
    """Set by SIGTERM/SIGINT: a job cancelled from now on was stopped, not timed out."""

    async def main(self) -> None:
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

    async def _poll_iteration(self) -> None:
        """arq's poll, which outlives a Redis outage or failover instead of ending the worker.

        A poll (or a finished job's bookkeeping) that cannot reach Redis is logged and tried
        again after a pause; each try opens a new connection, which with Sentinel asks for the
        current primary. Jobs cut off by the outage are redelivered once their in-progress
        marker expires, and the reconciler re-enqueues any event whose job was lost.
        """
        try:
            await super()._poll_iteration()
        except (RedisConnectionError, RedisTimeoutError, OSError) as error:
            log.warning("worker cannot reach Redis", error=type(error).__name__, detail=str(error))
            await asyncio.sleep(REDIS_UNREACHABLE_PAUSE_SECONDS)

    def handle_sig(self, signum: Signals) -> None:
        self.shutting_down = True
        super().handle_sig(signum)

    def handle_sig_wait_for_completion(self, signum: Signals) -> None:
        self.shutting_down = True
        super().handle_sig_wait_for_completion(signum)

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
                *job_ids,
            ],
        )
        for job_id, score in zip(claimed[0::2], claimed[1::2], strict=True):
            await self.sem.acquire()
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id.decode(), int(float(score))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id.decode()] = task

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        """Skip arq's own bookkeeping for a job whose final event-store write already did it."""
        settled: set[str] = self.ctx[SETTLED_JOBS]
        if job_id in settled:
            settled.discard(job_id)
            return
        await super().finish_job(
            job_id,
            finish,
            result_data,
            result_timeout_s,
            keep_result_forever,
            incr_score,
            keep_in_progress,
        )


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


def build_worker(settings: Settings, redis_url: str, router: Router) -> Worker:
    """An arq Worker for ``router``'s handlers; ``worker.run()`` runs it until a signal."""
    job_timeout = slowest_handler_timeout(router, settings.handler_timeout_seconds)
    job_timeout += JOB_MARGIN_SECONDS
    retry_policy = RetryPolicy(
        max_attempts=settings.max_attempts,
        base_seconds=settings.retry_base_seconds,
        max_delay_seconds=settings.retry_max_delay_seconds,
    )

    async def on_startup(ctx: dict[str, Any]) -> None:
        redis = ctx["redis"]
        ctx[DISPATCHER] = Dispatcher(
            router,
            EventStore(
                redis,
                dedupe_ttl_seconds=settings.dedupe_ttl_seconds,
                queue_name=settings.queue_name,
            ),
            retry_policy=retry_policy,
            handler_timeout_seconds=settings.handler_timeout_seconds,
            dead_letter_unhandled=settings.unhandled == "dead-letter",
            settled_jobs=ctx[SETTLED_JOBS],
            shutting_down=lambda: worker.shutting_down,
        )
        reconciler = Reconciler(
            redis,
            queue_name=settings.queue_name,
            interval_seconds=settings.reconcile_interval_seconds,
            grace_seconds=settings.reconcile_grace_seconds,
            dedupe_ttl_seconds=settings.dedupe_ttl_seconds,
        )
        reconciler.start()
        ctx[RECONCILER] = reconciler
        if settings.metrics_port:
            metrics_server = MetricsServer(
                host=settings.metrics_host,
                port=settings.metrics_port,
                refresh=functools.partial(
                    refresh_queue_gauges, redis, queue_name=settings.queue_name
                ),
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
                process_event,
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
        poll_delay=settings.poll_interval_seconds,
        max_tries=NEVER_BY_ARQ,
        job_serializer=orjson.dumps,
        job_deserializer=orjson.loads,
        log_results=False,
        ctx={SETTLED_JOBS: set()},
    )
    # arq lets a job that lost its worker be taken over 10 s after its timeout; a job's
    # timeout already bounds it, so a shorter margin redelivers sooner without overlap.
    worker.in_progress_timeout_s = job_timeout + IN_PROGRESS_MARGIN_SECONDS
    return worker
