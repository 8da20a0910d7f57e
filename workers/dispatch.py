"""Dispatch: the one arq job. Load the stored event, route it, run the due handlers, record.

arq is the scheduler, not the record. Each (event, handler) pair has its own attempts and
outcome in the event store; this module turns a handler's result into done, a scheduled
retry or a dead letter, and asks arq (via ``arq.Retry``) to run the job again only when some
handler is due later. Handlers of one event run concurrently, so a failing or slow handler
never delays the others.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import pydantic
import structlog
from arq import Retry

from loops_webhooks.handlers import HandlerContext, Router
from loops_webhooks.handlers.context import idempotency_key
from loops_webhooks.handlers.events import Event, parse_event
from loops_webhooks.handlers.outcomes import classify_attempt
from loops_webhooks.handlers.retry_policy import RetryPolicy
from loops_webhooks.handlers.router import Handler
from loops_webhooks.workers import metrics
from loops_webhooks.workers.dead_letters import (
    TRACEBACK_LIMIT,
    DeadLetter,
    DeadLetterReason,
)
from loops_webhooks.workers.event_store import (
    Action,
    Begun,
    EventStatus,
    EventStore,
    HandlerState,
    HandlerStatus,
    StoredEvent,
)
from loops_webhooks.workers.keys import dead_letter_id

__all__ = [
    "DISPATCHER",
    "SETTLED_JOBS",
    "Dispatcher",
    "process_event",
    "slowest_handler_timeout",
]

DISPATCHER = "loops_dispatcher"
"""The key of the Dispatcher in arq's worker context."""

SETTLED_JOBS = "loops_settled_jobs"
"""The key, in arq's worker context, of the set of job ids whose job our own final write
already rescheduled or removed (see ``EventWorker.finish_job``)."""

log = structlog.get_logger(logger_name="loops_webhooks.workers")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt ended; ``retry_after`` set means retry, ``dead`` means dead-letter."""

    handler: Handler
    state: HandlerState
    duration_ms: float
    error: BaseException | None = None
    retry_after: float | None = None
    dead_reason: DeadLetterReason | None = None


class Dispatcher:
    """Runs the handlers of one event at a time for the worker; shared by all of its jobs."""

    def __init__(
        self,
        router: Router,
        store: EventStore,
        *,
        retry_policy: RetryPolicy,
        handler_timeout_seconds: float,
        dead_letter_unhandled: bool,
        settled_jobs: set[str] | None = None,
        shutting_down: Callable[[], bool] = lambda: True,
    ) -> None:
        """``settled_jobs``: where to note the arq jobs our own final write rescheduled or
        removed (the worker then skips arq's finishing step for them); None leaves every job
        to arq. ``shutting_down``: whether a cancellation is a graceful shutdown (the attempt
        is given back) rather than the job's time limit (the attempt counts as failed)."""
        self._settled_jobs = settled_jobs
        self._shutting_down = shutting_down
        self._router = router
        self._store = store
        self._retry_policy = retry_policy
        self._handler_timeout = handler_timeout_seconds
        self._dead_letter_unhandled = dead_letter_unhandled
        self._unhandled_types_logged: set[str] = set()

    async def process(self, event_id: str, event_type: str, *, job_id: str = "") -> bool:
        """Run what is due for one event and record it.

        With ``job_id`` (the arq job running this) and ``settled_jobs``, the final write also
        reschedules or removes that job, and True says so: arq must not finish the job
        itself. Otherwise a later retry is asked for by raising ``arq.Retry``.
        """
        settle = job_id if self._settled_jobs is not None else ""
        handlers = self._router.handlers_for(event_type)
        begun = await self._begin(event_id, handlers)
        if begun is None:
            log.warning("event not in the store; nothing to do", event_id=event_id)
            return False
        event = begun.event
        if event.status is not EventStatus.PENDING:
            return False
        if not handlers:
            await self._finish_unhandled(event, settle)
            return bool(settle)
        outcomes: list[Outcome] = []
        to_run: list[tuple[Handler, HandlerState]] = []
        for handler in handlers:
            action, state = begun.actions[handler.name]
            if action is Action.RUN:
                to_run.append((handler, state))
            elif action is Action.EXHAUSTED:
                outcomes.append(self._exhausted_by_crashes(handler, state))
        try:
            outcomes += await self._run_all(event, to_run)
        except _PartiallyRun as cancelled:
            outcomes += cancelled.finished
            finished = {outcome.handler.name for outcome in cancelled.finished}
            unfinished = [(h, state) for h, state in to_run if h.name not in finished]
            refunds: list[tuple[Handler, HandlerState]] = []
            if self._shutting_down():
                refunds = unfinished
            else:
                outcomes += [self._cut_short(h, state) for h, state in unfinished]
            record = self._record(event, handlers, outcomes, refunds, settle_job=settle)
            await _despite_cancellation(record)
            raise
        record = self._record(event, handlers, outcomes, settle_job=settle)
        next_due = await _despite_cancellation(record)
        if settle:
            return True
        if next_due is not None:
            raise Retry(defer=max(0, next_due - _now_ms()) / 1000)
        return False

    async def _begin(self, event_id: str, handlers: list[Handler]) -> Begun | None:
        """Count the attempts of the due handlers; if the job is cancelled while Redis answers,
        give back the attempts that were counted, since no handler ran."""
        limits = [(handler.name, self._max_attempts_of(handler)) for handler in handlers]
        begin = asyncio.ensure_future(self._store.begin(event_id, limits, _now_ms()))
        try:
            return await asyncio.shield(begin)
        except asyncio.CancelledError:
            begun = await begin
            if begun is not None and begun.event.status is EventStatus.PENDING:
                counted = [
                    (handler, begun.actions[handler.name][1])
                    for handler in handlers
                    if begun.actions[handler.name][0] is Action.RUN
                ]
                await self._record(begun.event, handlers, [], counted)
            raise

    async def _run_all(
        self, event: StoredEvent, to_run: list[tuple[Handler, HandlerState]]
    ) -> list[Outcome]:
        """Run the due handlers concurrently; on cancellation, keep what finished."""
        models: dict[type[Event], Event | pydantic.ValidationError] = {}
        if len(to_run) == 1:
            handler, state = to_run[0]
            try:
                return [await self._run_one(event, handler, state, models)]
            except asyncio.CancelledError:
                raise _PartiallyRun([]) from None
        tasks = [
            asyncio.create_task(self._run_one(event, handler, state, models))
            for handler, state in to_run
        ]
        if not tasks:
            return []
        try:
            return list(await asyncio.gather(*tasks))
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            finished = [t.result() for t in tasks if not t.cancelled() and t.exception() is None]
            raise _PartiallyRun(finished) from None

    async def _run_one(
        self,
        event: StoredEvent,
        handler: Handler,
        state: HandlerState,
        models: dict[type[Event], Event | pydantic.ValidationError],
    ) -> Outcome:
        attempt = state.attempts
        bound_log = log.bind(
            event_id=event.event_id,
            event_type=event.event_type,
            handler=handler.name,
            attempt=attempt,
        )
        parsed = _parse_once(event, handler.model_for(event.event_type), models)
        if isinstance(parsed, pydantic.ValidationError):
            return Outcome(
                handler, state, 0.0, error=parsed, dead_reason=DeadLetterReason.INVALID_PAYLOAD
            )
        context = HandlerContext(
            event_id=event.event_id,
            event_type=event.event_type,
            handler=handler.name,
            attempt=attempt,
            idempotency_key=idempotency_key(event.event_id, handler.name),
            received_at=datetime.fromtimestamp(event.received_at_ms / 1000, tz=UTC),
            log=bound_log,
        )
        timeout = self._timeout_of(handler)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout) as deadline:
                if handler.is_async:
                    await handler.func(parsed, context)
                else:
                    await asyncio.to_thread(handler.func, parsed, context)
        except asyncio.CancelledError as cancelled:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            stray = RuntimeError("the handler raised CancelledError without being cancelled")
            stray.__cause__ = cancelled
            return self._failed(handler, state, started, stray)
        except TimeoutError as timed_out:
            if not deadline.expired():
                return self._failed(handler, state, started, timed_out)
            error = TimeoutError(f"handler did not finish within {timeout:g}s")
            error.__traceback__ = timed_out.__traceback__
            return self._failed(handler, state, started, error)
        except Exception as error:
            return self._failed(handler, state, started, error)
        return Outcome(handler, state, _ms_since(started))

    def _failed(
        self,
        handler: Handler,
        state: HandlerState,
        started: float,
        error: Exception,
    ) -> Outcome:
        verdict = classify_attempt(error, attempt=state.attempts, policy=self._policy_of(handler))
        dead_reason = None if verdict.dead_reason is None else DeadLetterReason(verdict.dead_reason)
        return Outcome(
            handler,
            state,
            _ms_since(started),
            error,
            retry_after=verdict.retry_after,
            dead_reason=dead_reason,
        )

    def _cut_short(self, handler: Handler, state: HandlerState) -> Outcome:
        """A handler still running when the job hit its time limit: a failed attempt."""
        error = TimeoutError("the job was cancelled at its time limit while the handler ran")
        return self._failed(handler, state, time.perf_counter(), error)

    def _exhausted_by_crashes(self, handler: Handler, state: HandlerState) -> Outcome:
        error = RuntimeError(
            f"the worker stopped during attempt {state.attempts} (killed, crashed or out of "
            "memory) and no attempts are left"
        )
        return Outcome(handler, state, 0.0, error, dead_reason=DeadLetterReason.MAX_ATTEMPTS)

    async def _record(
        self,
        event: StoredEvent,
        handlers: list[Handler],
        outcomes: list[Outcome],
        refunds: list[tuple[Handler, HandlerState]] | None = None,
        *,
        settle_job: str = "",
    ) -> int | None:
        """Write outcomes in one step; ``refunds`` are attempts cancelled by a shutdown, which
        do not count, so those handlers are due again at once."""
        now = _now_ms()
        states: dict[str, HandlerState] = {}
        letters: list[DeadLetter] = []
        for outcome in outcomes:
            states[outcome.handler.name] = self._next_state(outcome, now)
            if outcome.dead_reason is not None:
                letters.append(_dead_letter(event, outcome, now))
            _report_outcome(event, outcome)
        for handler, state in refunds or []:
            states[handler.name] = replace(
                state, status=HandlerStatus.RETRY, attempts=state.attempts - 1, next_attempt_at=now
            )
            log.info("handler cancelled by shutdown; it will run again", handler=handler.name)
        names = [handler.name for handler in handlers]
        counts = Counter(_counted_outcome(outcome) for outcome in outcomes)
        next_due = await self._store.finish(
            event, states, names, letters, now_ms=now, counts=counts, settle_job=settle_job
        )
        self._note_settled(settle_job)
        return next_due

    def _note_settled(self, job_id: str) -> None:
        """Our write settled the job: arq must not finish it too (even if cancelled now)."""
        if job_id and self._settled_jobs is not None:
            self._settled_jobs.add(job_id)

    def _next_state(self, outcome: Outcome, now: int) -> HandlerState:
        state = replace(outcome.state, duration_ms=round(outcome.duration_ms, 3))
        if outcome.error is not None:
            state = replace(state, last_error=_describe(outcome.error))
        if outcome.dead_reason is not None:
            return replace(state, status=HandlerStatus.DEAD, next_attempt_at=None)
        if outcome.retry_after is not None:
            due = now + int(outcome.retry_after * 1000)
            return replace(state, status=HandlerStatus.RETRY, next_attempt_at=due)
        return replace(state, status=HandlerStatus.DONE, next_attempt_at=None)

    async def _finish_unhandled(self, event: StoredEvent, job_id: str) -> None:
        metrics.UNHANDLED_EVENTS.inc()
        if self._dead_letter_unhandled:
            metrics.DEAD_LETTERS.labels(reason=DeadLetterReason.UNHANDLED).inc()
        if event.event_type not in self._unhandled_types_logged:
            self._unhandled_types_logged.add(event.event_type)
            log.warning("no handler matches this event type", event_type=event.event_type)
        now = _now_ms()
        letters = []
        if self._dead_letter_unhandled:
            letters.append(
                DeadLetter(
                    id=dead_letter_id(event.event_id, ""),
                    reason=DeadLetterReason.UNHANDLED,
                    event_id=event.event_id,
                    error_message=f"no handler matches the type {event.event_type!r}",
                    dead_lettered_at=now,
                )
            )
        await self._store.finish(
            event,
            {},
            [],
            letters,
            now_ms=now,
            outcome=DeadLetterReason.UNHANDLED,
            counts={"unhandled": 1},
            settle_job=job_id,
        )
        self._note_settled(job_id)

    def _timeout_of(self, handler: Handler) -> float:
        return handler.timeout if handler.timeout is not None else self._handler_timeout

    def _max_attempts_of(self, handler: Handler) -> int:
        if handler.max_attempts is not None:
            return handler.max_attempts
        return self._retry_policy.max_attempts

    def _policy_of(self, handler: Handler) -> RetryPolicy:
        return replace(self._retry_policy, max_attempts=self._max_attempts_of(handler))


def slowest_handler_timeout(router: Router, default_seconds: float) -> float:
    """The longest any handler may take; a job's own time limit is a little above it."""
    timeouts = [h.timeout for h in router.handlers if h.timeout is not None]
    return max([default_seconds, *timeouts])


class _PartiallyRun(asyncio.CancelledError):
    """Cancellation that carries the outcomes of the handlers that had already finished."""

    def __init__(self, finished: list[Outcome]) -> None:
        super().__init__()
        self.finished = finished


async def process_event(ctx: dict[str, Any], event_id: str, event_type: str) -> None:
    """The arq job: everything that happens to one stored event on one delivery."""
    dispatcher: Dispatcher = ctx[DISPATCHER]
    with structlog.contextvars.bound_contextvars(event_id=event_id, event_type=event_type):
        await dispatcher.process(event_id, event_type, job_id=ctx["job_id"])


async def _despite_cancellation(write: Awaitable[T]) -> T:
    """Finish a store write even if the job is cancelled meanwhile, then let that through."""
    task = asyncio.ensure_future(write)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def _parse_once(
    event: StoredEvent,
    model: type[Event],
    models: dict[type[Event], Event | pydantic.ValidationError],
) -> Event | pydantic.ValidationError:
    if model not in models:
        try:
            models[model] = parse_event(event.raw, model)
        except pydantic.ValidationError as invalid:
            models[model] = invalid
    return models[model]


def _dead_letter(event: StoredEvent, outcome: Outcome, now: int) -> DeadLetter:
    error = outcome.error
    trace = ""
    if error is not None and error.__traceback__ is not None:
        trace = "".join(traceback.format_exception(error))[-TRACEBACK_LIMIT:]
    assert outcome.dead_reason is not None
    return DeadLetter(
        id=dead_letter_id(event.event_id, outcome.handler.name),
        reason=outcome.dead_reason,
        event_id=event.event_id,
        handler=outcome.handler.name,
        error_type=type(error).__name__ if error is not None else "",
        error_message=str(error)[:2000] if error is not None else "",
        traceback=trace,
        attempts=outcome.state.attempts,
        first_attempt_at=outcome.state.first_attempt_at or now,
        last_attempt_at=outcome.state.last_attempt_at or now,
        dead_lettered_at=now,
    )


def _report_outcome(event: StoredEvent, outcome: Outcome) -> None:
    """The one log line and the metrics of one handler attempt."""
    name = outcome.handler.name
    metrics.HANDLER_RUNS.labels(handler=name, outcome=_counted_outcome(outcome)).inc()
    metrics.HANDLER_DURATION.labels(handler=name).observe(outcome.duration_ms / 1000)
    if outcome.dead_reason is not None:
        metrics.DEAD_LETTERS.labels(reason=outcome.dead_reason).inc()
    elif outcome.retry_after is not None:
        metrics.RETRIES_SCHEDULED.inc()
    fields: dict[str, Any] = {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "handler": outcome.handler.name,
        "attempt": outcome.state.attempts,
        "duration_ms": round(outcome.duration_ms, 3),
    }
    if outcome.error is not None:
        fields["error"] = _describe(outcome.error)
    if outcome.dead_reason is not None:
        log.error(
            "handler dead-lettered", outcome="dead_letter", reason=outcome.dead_reason, **fields
        )
    elif outcome.retry_after is not None:
        retry_in = round(outcome.retry_after, 3)
        log.warning("handler will be retried", outcome="retry", retry_in_s=retry_in, **fields)
    else:
        log.info("handler succeeded", outcome="done", **fields)


def _counted_outcome(outcome: Outcome) -> str:
    if outcome.dead_reason is not None:
        return "dead_letter"
    return "retry" if outcome.retry_after is not None else "done"


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:2000]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
