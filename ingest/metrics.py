"""The receiver's Prometheus metrics, served on ``LOOPS_METRICS_PORT`` (never the webhook port).

Labels are bounded: an outcome from a fixed set, never an event id or type.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["OUTCOMES", "REDIS_WRITE_DURATION", "REQUESTS", "REQUEST_DURATION"]

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

REQUESTS = Counter(
    "loops_webhooks_requests",
    "Webhook requests received, by outcome.",
    ["outcome"],
)
REQUEST_DURATION = Histogram(
    "loops_webhooks_request_duration_seconds",
    "Time from a webhook request's arrival to its response.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
REDIS_WRITE_DURATION = Histogram(
    "loops_webhooks_redis_write_duration_seconds",
    "Time a request waited for Redis to acknowledge its event (batching included).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0),
)

REQUESTS_BY_OUTCOME = {outcome: REQUESTS.labels(outcome=outcome) for outcome in OUTCOMES}
"""Each outcome's counter, looked up once rather than per request (and exported at 0)."""
