"""The verdict on one attempt: what a handler's return or exception means for its event."""

import pytest

from loops_webhooks.handlers import Reject, RetryLater
from loops_webhooks.handlers.outcomes import Verdict, classify_attempt
from loops_webhooks.handlers.retry_policy import RetryPolicy

POLICY = RetryPolicy(max_attempts=3, base_seconds=5, max_delay_seconds=3600)


def test_returning_is_done() -> None:
    assert classify_attempt(None, attempt=1, policy=POLICY) == Verdict("done")


def test_returning_on_the_last_attempt_is_still_done() -> None:
    assert classify_attempt(None, attempt=3, policy=POLICY) == Verdict("done")


@pytest.mark.parametrize("attempt", [1, 3])
def test_reject_dead_letters_at_once_on_any_attempt(attempt: int) -> None:
    verdict = classify_attempt(Reject("no order"), attempt=attempt, policy=POLICY)

    assert verdict == Verdict("dead_letter", dead_reason="rejected")


def test_retry_later_is_retried_after_the_delay_it_names() -> None:
    verdict = classify_attempt(RetryLater(after=60), attempt=1, policy=POLICY)

    assert verdict == Verdict("retry", retry_after=60)


def test_retry_later_on_the_last_attempt_is_dead_lettered_for_max_attempts() -> None:
    verdict = classify_attempt(RetryLater(after=60), attempt=3, policy=POLICY)

    assert verdict == Verdict("dead_letter", dead_reason="max_attempts")


def test_another_error_is_retried_within_the_backoff_ceiling_of_its_attempt() -> None:
    verdicts = [classify_attempt(RuntimeError("down"), attempt=2, policy=POLICY) for _ in range(50)]

    assert {verdict.outcome for verdict in verdicts} == {"retry"}
    assert all(0 <= (v.retry_after or -1) <= POLICY.ceiling(2) for v in verdicts)
    assert len({v.retry_after for v in verdicts}) > 1, "the delay is jittered"


def test_another_error_on_the_last_attempt_is_dead_lettered_for_max_attempts() -> None:
    verdict = classify_attempt(TimeoutError(), attempt=3, policy=POLICY)

    assert verdict == Verdict("dead_letter", dead_reason="max_attempts")
