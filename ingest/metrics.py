"""The receiver's Prometheus metrics, served on ``LOOPS_METRICS_PORT`` (never the webhook port).

Labels are bounded: an outcome from a fixed set, never an event id or type.

The receiver counts in plain numbers, which the collector below turns into Prometheus metrics
only when ``/metrics`` is scraped: ``prometheus_client``'s own ``Counter`` and ``Histogram``
take a lock and walk their buckets on every update, three updates a request on the hot path.
The metrics server runs on the receiver's event loop, as the updates do, so a scrape never
sees half an update.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import REGISTRY, CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = ["OUTCOMES", "RECEIVER_METRICS", "ReceiverMetrics"]

OUTCOMES = (
    "accepted",
    "duplicate",
    "invalid_signature",
    "invalid_payload",
    "invalid_body",
    "too_large",
    "body_timeout",
    "busy",
    "unavailable",
    "method_not_allowed",
    "error",
)

REQUEST_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
REDIS_WRITE_DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0,
)  # fmt: skip


class _Durations:
    """A histogram's observations: a count per bucket (not cumulative) and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, documentation)
        cumulative, buckets = 0, []
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        family.add_metric([], buckets, self.total)
        return family


class ReceiverMetrics(Collector):
    """Requests by outcome, their durations, and how long Redis took to acknowledge events."""

    def __init__(self) -> None:
        self.requests = dict.fromkeys(OUTCOMES, 0)
        self.request_durations = _Durations(REQUEST_DURATION_BUCKETS)
        self.redis_write_durations = _Durations(REDIS_WRITE_DURATION_BUCKETS)

    def request_answered(self, outcome: str, seconds: float) -> None:
        self.requests[outcome] += 1
        self.request_durations.observe(seconds)

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily(
            "loops_webhooks_requests", "Webhook requests received, by outcome.", labels=["outcome"]
        )
        for outcome, count in self.requests.items():
            requests.add_metric([outcome], count)
        yield requests
        yield self.request_durations.family(
            "loops_webhooks_request_duration_seconds",
            "Time from a webhook request's arrival to its response.",
        )
        yield self.redis_write_durations.family(
            "loops_webhooks_redis_write_duration_seconds",
            "Time a request waited for Redis to acknowledge its event (batching included).",
        )


RECEIVER_METRICS = ReceiverMetrics()
"""The receiver's one instance, registered with ``prometheus_client``'s default registry, so
the metrics server exports it with everything else the process registered."""
REGISTRY.register(RECEIVER_METRICS)
