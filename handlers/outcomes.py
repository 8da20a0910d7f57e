"""What a handler's attempt means: done, a retry (and after how long), or a dead letter (and why).

This is the meaning of the errors in ``loops_webhooks.handlers.errors``, so it lives beside
them: the worker's dispatcher and the testing kit's ``run`` both call `classify_attempt`, so
a test of a handler sees exactly the outcome the worker would record. It is pure: running the
handler, its timeout and recording the outcome belong to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from loops_webhooks.handlers.errors import Reject, RetryLater
from loops_webhooks.handlers.retry_policy import RetryPolicy

__all__ = ["DONE", "AttemptOutcome", "DeadReason", "Verdict", "classify_attempt"]

AttemptOutcome = Literal["done", "retry", "dead_letter"]
DeadReason = Literal["rejected", "max_attempts"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """``retry_after`` (seconds) is set exactly when ``outcome`` is "retry"; ``dead_reason``
    exactly when it is "dead_letter"."""

    outcome: AttemptOutcome
    retry_after: float | None = None
    dead_reason: DeadReason | None = None


DONE = Verdict("done")


def classify_attempt(error: BaseException | None, *, attempt: int, policy: RetryPolicy) -> Verdict:
    """The verdict on attempt number ``attempt`` (1-based) that ended with ``error`` (None:
    the handler returned).

    `Reject` dead-letters at once. Any other error is retried while ``policy`` allows another
    attempt, after `RetryLater.after` seconds or else a jittered backoff delay; once the
    attempts are spent it is dead-lettered as "max_attempts", `RetryLater` included.
    """
    if error is None:
        return DONE
    if isinstance(error, Reject):
        return Verdict("dead_letter", dead_reason="rejected")
    if not policy.allows_another(attempt):
        return Verdict("dead_letter", dead_reason="max_attempts")
    if isinstance(error, RetryLater):
        return Verdict("retry", retry_after=error.after)
    return Verdict("retry", retry_after=policy.delay(attempt))
