"""The worker's metrics as a scrape shows them before anything has happened."""

from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest

from loops_webhooks.workers import metrics  # noqa: F401  (registers the worker's metrics)
from loops_webhooks.workers.dead_letters import DeadLetterReason


def test_every_dead_letter_reason_is_exported_before_its_first_dead_letter() -> None:
    """An alert on ``increase()`` sees the first letter only if the series existed before."""
    text = generate_latest(REGISTRY).decode()

    for reason in DeadLetterReason:
        assert f'loops_webhooks_dead_letters_total{{reason="{reason}"}}' in text
