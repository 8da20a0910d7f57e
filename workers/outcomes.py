"""The handler state an attempt's outcome leads to: pure functions.

Dispatch runs handlers and writes to Redis; what an attempt *means* is decided by
``loops_webhooks.handlers.outcomes.classify`` (the testing kit calls it too), and what state
it leaves the (event, handler) pair in is decided here, with no Redis, arq or worker.
"""

from __future__ import annotations

from dataclasses import replace

from loops_webhooks.handlers.outcomes import AttemptOutcome, DeadLetterReason, Verdict
from loops_webhooks.workers.error_text import error_message
from loops_webhooks.workers.event_store import HandlerState, HandlerStatus

__all__ = [
    "UnknownHandler",
    "describe",
    "exhausted_by_crashes",
    "next_state",
    "refunded",
    "unknown_handler",
]


class UnknownHandler(LookupError):
    """What an unknown handler's letter records as its error."""


def exhausted_by_crashes(attempts: int) -> AttemptOutcome:
    """A handler whose worker died during its last allowed attempt: dead-lettered unrun."""
    error = RuntimeError(
        f"the worker stopped during attempt {attempts} (killed, crashed or out of memory) "
        "and no attempts are left"
    )
    return AttemptOutcome(Verdict.DEAD_LETTER, error, reason=DeadLetterReason.MAX_ATTEMPTS)


def unknown_handler(name: str) -> AttemptOutcome:
    """A handler owed a run that this worker does not have: dead-lettered again, unrun, so
    that its letter never vanishes with the event finished as done."""
    error = UnknownHandler(
        f"this worker has no handler named {name!r} for this event's type (renamed, removed, "
        "or a worker of another version); replay the letter once a worker has it"
    )
    return AttemptOutcome(Verdict.DEAD_LETTER, error, reason=DeadLetterReason.UNKNOWN_HANDLER)


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
    return f"{type(error).__name__}: {error_message(error)}"[:2000]
