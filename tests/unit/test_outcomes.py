"""Classifying an attempt and the state it leads to: pure functions, no Redis, arq or worker."""

import random

import pydantic
import pytest

from loops_webhooks.handlers import Reject, RetryLater
from loops_webhooks.handlers.events import CheckoutSessionEvent
from loops_webhooks.handlers.outcomes import AttemptOutcome, Verdict, classify
from loops_webhooks.handlers.retry_policy import RetryPolicy
from loops_webhooks.workers.event_store import HandlerState, HandlerStatus
from loops_webhooks.workers.outcomes import exhausted_by_crashes, next_state, refunded

POLICY = RetryPolicy(max_attempts=3, base_seconds=10, max_delay_seconds=3600)
NOW = 1_700_000_000_000


class Custom(BaseException):
    """A BaseException that is not an Exception, as some libraries define."""


def validation_error() -> pydantic.ValidationError:
    try:
        CheckoutSessionEvent.model_validate({"id": "evt_1"})
    except pydantic.ValidationError as invalid:
        return invalid
    raise AssertionError("the model accepted an incomplete event")


def test_no_error_is_done() -> None:
    assert classify(1, None, POLICY) == AttemptOutcome(Verdict.DONE)


def test_reject_dead_letters_at_once_even_with_attempts_left() -> None:
    outcome = classify(1, Reject("no order"), POLICY)
    assert (outcome.verdict, outcome.reason) == (Verdict.DEAD_LETTER, "rejected")


def test_a_payload_that_does_not_fit_the_model_is_an_invalid_payload_letter() -> None:
    outcome = classify(1, validation_error(), POLICY)
    assert (outcome.verdict, outcome.reason) == (Verdict.DEAD_LETTER, "invalid_payload")


def test_retry_later_asks_for_its_own_delay() -> None:
    outcome = classify(1, RetryLater(after=42), POLICY)
    assert (outcome.verdict, outcome.retry_after) == (Verdict.RETRY, 42)


def test_any_other_error_is_retried_within_the_backoff_ceiling() -> None:
    random.seed(3)
    outcome = classify(2, ConnectionError("down"), POLICY)
    assert outcome.verdict is Verdict.RETRY
    assert outcome.retry_after is not None and 0 <= outcome.retry_after <= POLICY.ceiling(2)


@pytest.mark.parametrize(
    "error", [SystemExit(3), KeyboardInterrupt(), GeneratorExit(), Custom("boom")]
)
def test_a_base_exception_is_one_failed_attempt_like_any_error(error: BaseException) -> None:
    assert classify(1, error, POLICY).verdict is Verdict.RETRY
    assert classify(3, error, POLICY).reason == "max_attempts"


def test_the_last_allowed_attempt_failing_dead_letters_with_max_attempts() -> None:
    for error in (RetryLater(after=1), ValueError("x")):
        outcome = classify(3, error, POLICY)
        assert (outcome.verdict, outcome.reason, outcome.error) == (
            Verdict.DEAD_LETTER,
            "max_attempts",
            error,
        )


def test_a_worker_that_died_in_the_last_attempt_dead_letters_the_handler() -> None:
    outcome = exhausted_by_crashes(3)
    assert (outcome.verdict, outcome.reason) == (Verdict.DEAD_LETTER, "max_attempts")
    assert "attempt 3" in str(outcome.error)


def test_a_retry_is_due_after_its_delay_and_keeps_the_error() -> None:
    running = HandlerState(status=HandlerStatus.RUNNING, attempts=1)
    outcome = AttemptOutcome(Verdict.RETRY, ValueError("flaky"), retry_after=2.5)

    state = next_state(running, outcome, now_ms=NOW, duration_ms=12.3456)

    assert state.status is HandlerStatus.RETRY
    assert state.next_attempt_at == NOW + 2500
    assert (state.last_error, state.duration_ms, state.attempts) == ("ValueError: flaky", 12.346, 1)


def test_done_and_dead_states_have_no_next_attempt() -> None:
    running = HandlerState(status=HandlerStatus.RUNNING, attempts=2, next_attempt_at=5)
    done = next_state(running, AttemptOutcome(Verdict.DONE), now_ms=NOW, duration_ms=1)
    dead = next_state(running, classify(3, Reject("no"), POLICY), now_ms=NOW, duration_ms=1)
    assert (done.status, done.next_attempt_at, done.last_error) == (HandlerStatus.DONE, None, None)
    assert (dead.status, dead.next_attempt_at) == (HandlerStatus.DEAD, None)


def test_a_refunded_attempt_does_not_count_and_is_due_at_once() -> None:
    state = refunded(HandlerState(status=HandlerStatus.RUNNING, attempts=2), now_ms=NOW)
    assert (state.status, state.attempts, state.next_attempt_at) == (HandlerStatus.RETRY, 1, NOW)
