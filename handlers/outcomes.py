"""What a handler's attempt means: done, a retry (and after how long), or a dead letter (and why).

This is the meaning of the errors in ``loops_webhooks.handlers.errors``, so it lives beside
them: the worker's dispatcher and the testing kit's ``run`` both call `classify`, so a test
of a handler sees exactly the outcome the worker would record. It is pure: running the
handler, its timeout and recording the outcome belong to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

import pydantic

from loops_webhooks.handlers.errors import Reject, RetryLater
from loops_webhooks.handlers.retry_policy import RetryPolicy
from loops_webhooks.handlers.router import Handler

__all__ = ["AttemptOutcome", "DeadLetterReason", "Verdict", "classify", "policy_for"]


class DeadLetterReason(StrEnum):
    """Why a dead letter was written: the one list, which the worker, the receiver, the CLI,
    the dashboard and the API all import. The first three are verdicts on an attempt
    (`classify`); the others are the worker's, about an event rather than an attempt."""

    REJECTED = "rejected"
    INVALID_PAYLOAD = "invalid_payload"
    MAX_ATTEMPTS = "max_attempts"
    UNHANDLED = "unhandled"
    """No handler matches the event's type (with ``LOOPS_UNHANDLED=dead-letter``)."""
    UNKNOWN_HANDLER = "unknown_handler"
    """The event owes a handler a run (a replayed letter, a scheduled retry), and the worker
    that took it has no handler of that name for its type: renamed, removed, or a worker of
    another version during a rolling deploy. Replay it where a worker has the handler."""


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
