"""What one handler attempt's end means, and the handler state it leads to: pure functions.

Dispatch runs handlers and writes to Redis; deciding what a result *means* is kept here, apart
from both, so it can be called (and tested) with no Redis, arq or worker: a handler's
attempt number, what it raised (or None) and its retry policy give its verdict, and a verdict
gives the next state of the (event, handler) pair.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

import pydantic

from loops_webhooks.handlers import Reject, RetryLater
from loops_webhooks.handlers.router import Handler
from loops_webhooks.workers.dead_letters import DeadLetterReason
from loops_webhooks.workers.event_store import HandlerState, HandlerStatus
from loops_webhooks.workers.retry_policy import RetryPolicy

__all__ = [
    "AttemptOutcome",
    "Verdict",
    "classify",
    "describe",
    "exhausted_by_crashes",
    "next_state",
    "policy_for",
    "refunded",
]


class Verdict(StrEnum):
    """How one attempt ended, as logs, metrics and the testing kit name it."""

    DONE = "done"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """One attempt's verdict; ``retry_after`` (seconds) for a retry, ``reason`` for a letter."""

    verdict: Verdict
    error: BaseException | None = None
    retry_after: float | None = None
    reason: DeadLetterReason | None = None


def policy_for(handler: Handler, default: RetryPolicy) -> RetryPolicy:
    """The retry policy of one handler: the worker's, with the handler's own max_attempts."""
    if handler.max_attempts is None:
        return default
    return replace(default, max_attempts=handler.max_attempts)


def classify(attempt: int, error: BaseException | None, policy: RetryPolicy) -> AttemptOutcome:
    """The verdict on attempt number ``attempt`` (1-based) that ended by raising ``error``.

    None is success. ``Reject`` dead-letters at once, a ``pydantic.ValidationError`` (the
    payload does not fit the handler's model) too, as ``invalid_payload``. ``RetryLater``
    asks for its own delay; anything else, any ``BaseException`` included, is retried with
    the policy's backoff. Either retry becomes a dead letter once the attempts are spent.
    """
    if error is None:
        return AttemptOutcome(Verdict.DONE)
    if isinstance(error, Reject):
        return AttemptOutcome(Verdict.DEAD_LETTER, error, reason=DeadLetterReason.REJECTED)
    if isinstance(error, pydantic.ValidationError):
        return AttemptOutcome(Verdict.DEAD_LETTER, error, reason=DeadLetterReason.INVALID_PAYLOAD)
    if not policy.allows_another(attempt):
        return AttemptOutcome(Verdict.DEAD_LETTER, error, reason=DeadLetterReason.MAX_ATTEMPTS)
    delay = error.after if isinstance(error, RetryLater) else policy.delay(attempt)
    return AttemptOutcome(Verdict.RETRY, error, retry_after=delay)


def exhausted_by_crashes(attempts: int) -> AttemptOutcome:
    """A handler whose worker died during its last allowed attempt: dead-lettered unrun."""
    error = RuntimeError(
        f"the worker stopped during attempt {attempts} (killed, crashed or out of memory) "
        "and no attempts are left"
    )
    return AttemptOutcome(Verdict.DEAD_LETTER, error, reason=DeadLetterReason.MAX_ATTEMPTS)


def next_state(
    state: HandlerState, outcome: AttemptOutcome, *, now_ms: int, duration_ms: float
) -> HandlerState:
    """The state an attempt's outcome leaves the (event, handler) pair in."""
    state = replace(state, duration_ms=round(duration_ms, 3))
    if outcome.error is not None:
        state = replace(state, last_error=describe(outcome.error))
    if outcome.verdict is Verdict.DEAD_LETTER:
        return replace(state, status=HandlerStatus.DEAD, next_attempt_at=None)
    if outcome.verdict is Verdict.RETRY:
        due = now_ms + int((outcome.retry_after or 0) * 1000)
        return replace(state, status=HandlerStatus.RETRY, next_attempt_at=due)
    return replace(state, status=HandlerStatus.DONE, next_attempt_at=None)


def refunded(state: HandlerState, *, now_ms: int) -> HandlerState:
    """An attempt a graceful shutdown cancelled does not count: due again at once."""
    return replace(
        state, status=HandlerStatus.RETRY, attempts=state.attempts - 1, next_attempt_at=now_ms
    )


def describe(error: BaseException) -> str:
    """``Type: message``, bounded, as kept in the handler state and logged."""
    return f"{type(error).__name__}: {error}"[:2000]
