"""The worker's Prometheus metrics, served by ``loops_webhooks.workers.metrics_server`` on
``LOOPS_METRICS_PORT``.

Counters are updated as handlers finish; the queue gauges are refreshed from Redis every few
seconds by the metrics server's background task (``refresh_queue_gauges``), so a scrape never
waits on Redis. Labels are bounded: handler
names (registered in code), outcomes and reasons from fixed sets, never event ids.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from prometheus_client import Counter, Gauge, Histogram
from redis.asyncio import Redis
from redis.exceptions import RedisError

from loops_webhooks.workers.admission import handler_flows
from loops_webhooks.workers.dead_letters import DeadLetterReason
from loops_webhooks.workers.stats import queue_figures

__all__ = [
    "DEAD_LETTERS",
    "HANDLER_DURATION",
    "HANDLER_PAUSED",
    "HANDLER_RUNS",
    "HANDLER_WAITING_EVENTS",
    "RECONCILER_REPAIRS",
    "RETRIES_SCHEDULED",
    "UNHANDLED_EVENTS",
    "refresh_queue_gauges",
]

log = structlog.get_logger(logger_name="loops_webhooks.workers.metrics")

HANDLER_RUNS = Counter(
    "loops_webhooks_handler_runs",
    "Handler attempts finished, by handler and outcome (done, retry, dead_letter).",
    ["handler", "outcome"],
)
HANDLER_DURATION = Histogram(
    "loops_webhooks_handler_duration_seconds",
    "How long one handler attempt ran.",
    ["handler"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RETRIES_SCHEDULED = Counter(
    "loops_webhooks_retries_scheduled", "Handler retries scheduled after a failed attempt."
)
DEAD_LETTERS = Counter(
    "loops_webhooks_dead_letters", "(event, handler) pairs dead-lettered, by reason.", ["reason"]
)
# Every reason is exported at 0 from the start: a series that first appears at 1 shows no
# increase, so a worker's first dead letter of a reason would never fire an alert.
for _reason in DeadLetterReason:
    DEAD_LETTERS.labels(reason=_reason)
UNHANDLED_EVENTS = Counter(
    "loops_webhooks_unhandled_events", "Events whose type no registered handler matches."
)
RECONCILER_REPAIRS = Counter(
    "loops_webhooks_reconciler_repairs", "Pending events re-enqueued because their job was lost."
)
QUEUE_DEPTH = Gauge("loops_webhooks_queue_depth", "Jobs due now, waiting or running.")
SCHEDULED_RETRIES = Gauge("loops_webhooks_scheduled_retries", "Jobs scheduled for later.")
DEAD_LETTER_QUEUE_SIZE = Gauge("loops_webhooks_dead_letter_queue_size", "Dead letters stored.")
OLDEST_PENDING_AGE = Gauge(
    "loops_webhooks_oldest_pending_event_age_seconds",
    "Age of the oldest event accepted but not finished (0 when none).",
)

HANDLER_WAITING_EVENTS = Gauge(
    "loops_webhooks_handler_waiting_events",
    "Events whose run of the handler admission holds back: paused, or over its concurrency "
    "or rate limit.",
    ["handler"],
)
HANDLER_PAUSED = Gauge(
    "loops_webhooks_handler_paused", "1 while the handler is paused, else 0.", ["handler"]
)


async def refresh_queue_gauges(redis: Redis, *, queue_name: str, handlers: Sequence[str]) -> None:
    """Set the queue gauges, and the admission gauges of ``handlers`` (the worker's), from
    Redis; a Redis failure leaves them as they were, logged."""
    try:
        figures = await queue_figures(redis, queue_name=queue_name)
        flows = await handler_flows(redis, handlers)
    except RedisError as error:
        log.warning("cannot refresh queue gauges", error=str(error))
        return
    for name, flow in flows.items():
        HANDLER_WAITING_EVENTS.labels(handler=name).set(flow.waiting)
        HANDLER_PAUSED.labels(handler=name).set(1 if flow.paused else 0)
    QUEUE_DEPTH.set(figures.due)
    SCHEDULED_RETRIES.set(figures.scheduled)
    DEAD_LETTER_QUEUE_SIZE.set(figures.dead_letters)
    OLDEST_PENDING_AGE.set(figures.oldest_pending_age_seconds or 0)
