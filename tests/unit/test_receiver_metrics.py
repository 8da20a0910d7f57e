"""The receiver's metrics: plain numbers on the hot path, Prometheus metrics when scraped."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from loops_webhooks.ingest.metrics import OUTCOMES, ReceiverMetrics


def exposition(metrics: ReceiverMetrics) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(metrics)
    samples = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_every_outcome_is_exported_at_zero_before_any_request() -> None:
    samples = exposition(ReceiverMetrics())

    for outcome in OUTCOMES:
        assert samples[f'loops_webhooks_requests_total{{outcome="{outcome}"}}'] == 0
    assert samples["loops_webhooks_request_duration_seconds_count"] == 0


def test_requests_are_counted_by_outcome_and_their_durations_bucketed_cumulatively() -> None:
    metrics = ReceiverMetrics()
    for outcome, seconds in [("accepted", 0.0004), ("accepted", 0.001), ("duplicate", 0.3)]:
        metrics.request_answered(outcome, seconds)
    metrics.redis_write_durations.observe(7.0)

    samples = exposition(metrics)

    assert samples['loops_webhooks_requests_total{outcome="accepted"}'] == 2
    assert samples['loops_webhooks_requests_total{outcome="duplicate"}'] == 1
    bucket = 'loops_webhooks_request_duration_seconds_bucket{{le="{}"}}'.format
    assert samples[bucket("0.001")] == 2  # a duration equal to a bound is in that bucket
    assert samples[bucket("0.25")] == 2
    assert samples[bucket("0.5")] == 3
    assert samples[bucket("+Inf")] == 3
    assert samples["loops_webhooks_request_duration_seconds_count"] == 3
    assert abs(samples["loops_webhooks_request_duration_seconds_sum"] - 0.3014) < 1e-9
    write_bucket = 'loops_webhooks_redis_write_duration_seconds_bucket{{le="{}"}}'.format
    assert samples[write_bucket("2.0")] == 0
    assert samples[write_bucket("+Inf")] == 1
