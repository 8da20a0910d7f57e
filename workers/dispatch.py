"""Dispatch: the one arq job. Load the stored event, route it, run the due handlers, record.

arq is the scheduler, not the record. Each (event, handler) pair has its own attempts and
outcome in the event store; this module turns a handler's result into done, a scheduled
retry or a dead letter, and its one write of those outcomes (``lua/finish.lua``) also
settles the arq job: rescheduled at the time the next handler is due, or removed once the
event is finished. Handlers of one event run concurrently, so a failing or slow handler
never delays the others.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic
import structlog

from loops_webhooks.handlers import HandlerContext, Router
from loops_webhooks.handlers.context import idempotency_key
from loops_webhooks.handlers.events import Event, parse_event
from loops_webhooks.handlers.outcomes import (
    AttemptOutcome,
    DeadLetterReason,
    Verdict,
    classify,
    policy_for,
)
from loops_webhooks.handlers.retry_policy import RetryPolicy
from loops_webhooks.handlers.router import Handler
from loops_webhooks.workers import metrics
from loops_webhooks.workers.admission import Admission, PausedHandlers, limits_of
from loops_webhooks.workers.connection import REDIS_FAILURES
from loops_webhooks.workers.dead_letters import DeadLetter, build_dead_letter
from loops_webhooks.workers.event_store import (
    Action,
    Begun,
    EventStatus,
    EventStore,
    HandlerState,
    StoredEvent,
)
from loops_webhooks.workers.outcomes import (
    describe,
    exhausted_by_crashes,
    next_state,
    refunded,
    unknown_handler,
)

if TYPE_CHECKING:
    from loops_webhooks.workers.traces import AttemptTraces

__all__ = ["Dispatcher", "slowest_handler_timeout"]

WRITE_RETRY_FIRST_SECONDS = 0.05
WRITE_RETRY_MAX_SECONDS = 2.0

log = structlog.get_logger(logger_name="loops_webhooks.workers")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Outcome:
    """One handler's attempt on one event (by its name): its state when it began and how it
    ended."""

    handler: str
    state: HandlerState
    duration_ms: float
    result: AttemptOutcome


class Dispatcher:
    """Runs the handlers of one event at a time for the worker; shared by all of its jobs."""

    def __init__(
        self,
        router: Router,
        store: EventStore,
        *,
        paused: PausedHandlers,
        retry_policy: RetryPolicy,
        handler_timeout_seconds: float,
        dead_letter_unhandled: bool,
        shutting_down: Callable[[], bool] = lambda: True,
        on_redis_failure: Callable[[BaseException], None] = lambda error: None,
        traces: AttemptTraces | None = None,
    ) -> None:
        """``paused``: the worker's view of which handlers are paused, whose pause ``begin``
        asks about. ``shutting_down``: whether a cancellation is a graceful shutdown (the
        attempt is given back) rather than the job's time limit (the attempt counts as
        failed).
        ``on_redis_failure`` hears of every failed write, for the worker's health.
        ``traces`` (traces on): each attempt runs as a span of its event's trace."""
        self._traces = traces
        self._shutting_down = shutting_down
        self._on_redis_failure = on_redis_failure
        self.running: Counter[str] = Counter()
        """Names of the handlers running now (read by the worker's loop watchdog)."""
        self._router = router
        self._store = store
        self._paused = paused
        self._retry_policy = retry_policy
        self._handler_timeout = handler_timeout_seconds
        self._dead_letter_unhandled = dead_letter_unhandled
        self._unhandled_types_logged: set[str] = set()
        self._begin_entries: dict[tuple[str, bool], tuple[str, int, bytes]] = {}

    async def process(self, event_id: str, event_type: str, *, job_id: str) -> bool:
        """Run what is due for one event, as the arq job ``job_id``, and record it.

        The final write also reschedules or removes that job, and True says so (the caller
        must not finish the job itself); False means there was nothing to record: the job is
        the caller's to remove. A Redis failure before any handler ran propagates (nothing
        ran, nothing is lost); once handlers ran, their outcomes are kept and the final
        write is retried until Redis takes it.

        A handler the event owes a run (a replayed letter, a scheduled retry) that this
        worker does not have for the event's type is dead-lettered again as
        ``unknown_handler``, unrun: the event is never finished as done without it.
        """
        handlers = self._router.handlers_for(event_type)
        begun = await self._begin(event_id, handlers, job_id)
        if begun is None:
            log.warning("event not in the store; nothing to do", event_id=event_id)
            return False
        event = begun.event
        if event.status is not EventStatus.PENDING:
            return False
        if not handlers and not begun.unknown:
            await self._finish_unhandled(event, job_id)
            return True
        names = [handler.name for handler in handlers] + list(begun.unknown)
        outcomes = [
            Outcome(name, state, 0.0, unknown_handler(name))
            for name, state in begun.unknown.items()
        ]
        to_run: list[tuple[Handler, HandlerState]] = []
        held: list[Handler] = []
        for handler in handlers:
            action, state = begun.actions[handler.name]
            if action is Action.RUN:
                to_run.append((handler, state))
            elif action is Action.HELD:
                held.append(handler)
            elif action is Action.EXHAUSTED:
                outcomes.append(
                    Outcome(handler.name, state, 0.0, exhausted_by_crashes(state.attempts))
                )
        admitted = Admission.settled(held, [h for h, _ in to_run])
        try:
            outcomes += await self._run_all(event, to_run, begun.superseded_by)
        except _PartiallyRun as cancelled:
            outcomes += cancelled.finished
            finished = {outcome.handler for outcome in cancelled.finished}
            unfinished = [(h, state) for h, state in to_run if h.name not in finished]
            refunds: list[tuple[Handler, HandlerState]] = []
            if self._shutting_down():
                refunds = unfinished
            else:
                outcomes += [self._cut_short(h, state) for h, state in unfinished]
            await _despite_cancellation(
                self._record(event, names, outcomes, refunds, settle_job=job_id, admitted=admitted)
            )
            # A plain CancelledError, not the subclass that carried the outcomes: Python
            # 3.11's asyncio.timeout turns only the exact type into its TimeoutError, which
            # is how the worker tells the job's time limit from a shutdown.
            raise asyncio.CancelledError from None
        await _despite_cancellation(
            self._record(event, names, outcomes, settle_job=job_id, admitted=admitted)
        )
        return True

    async def _begin(self, event_id: str, handlers: list[Handler], settle: str) -> Begun | None:
        """Count the attempts of the due handlers that admission lets start; if the job is
        cancelled while Redis answers, give back the attempts that were counted (and the slots
        taken), since no handler ran."""
        paused = self._paused.names()
        limits = [self._begin_entry(h, paused is None or h.name in paused) for h in handlers]
        begin = asyncio.ensure_future(self._store.begin(event_id, limits, _now_ms(), job_id=settle))
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
                names = [handler.name for handler in handlers]
                held = [h for h in handlers if begun.actions[h.name][0] is Action.HELD]
                admitted = Admission.settled(held, [handler for handler, _ in counted])
                await self._record(
                    begun.event, names, [], counted, settle_job=settle, admitted=admitted
                )
            raise

    async def _run_all(
        self,
        event: StoredEvent,
        to_run: list[tuple[Handler, HandlerState]],
        superseded_by: dict[str, str],
    ) -> list[Outcome]:
        """Run the due handlers concurrently; on cancellation, keep what finished."""
        models: dict[type[Event], Event | pydantic.ValidationError] = {}
        run_one = self._run_one if self._traces is None else self._run_traced
        if len(to_run) == 1:
            handler, state = to_run[0]
            later = superseded_by.get(handler.name)
            try:
                return [await run_one(event, handler, state, models, later)]
            except asyncio.CancelledError:
                raise _PartiallyRun([]) from None
        tasks = [
            asyncio.create_task(
                run_one(event, handler, state, models, superseded_by.get(handler.name))
            )
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
        superseded_by: str | None,
    ) -> Outcome:
        parsed = _parse_once(event, handler.model_for(event.event_type), models)
        if isinstance(parsed, pydantic.ValidationError):
            return self._outcome(handler, state, time.perf_counter(), parsed)
        started = time.perf_counter()
        self.running[handler.name] += 1
        try:
            error = await self._call(event, handler, state, parsed, superseded_by)
        finally:
            self.running[handler.name] -= 1
            if not self.running[handler.name]:
                del self.running[handler.name]
        return self._outcome(handler, state, started, error)

    async def _run_traced(
        self,
        event: StoredEvent,
        handler: Handler,
        state: HandlerState,
        models: dict[type[Event], Event | pydantic.ValidationError],
        superseded_by: str | None,
    ) -> Outcome:
        """``_run_one`` as a span of the event's trace, the current span in this task."""
        assert self._traces is not None
        with self._traces.span(event, handler.name, state.attempts) as span:
            outcome = await self._run_one(event, handler, state, models, superseded_by)
            self._traces.finished(span, outcome.result)
        return outcome

    async def _call(
        self,
        event: StoredEvent,
        handler: Handler,
        state: HandlerState,
        parsed: Event,
        superseded_by: str | None,
    ) -> BaseException | None:
        """Call the handler once; what it raised, or None. Only a cancellation of this job
        propagates: anything the handler raises, ``SystemExit`` and ``KeyboardInterrupt``
        included, is its attempt's failure and never reaches the worker's event loop."""
        bound_log = log.bind(
            event_id=event.event_id,
            event_type=event.event_type,
            handler=handler.name,
            attempt=state.attempts,
        )
        context = HandlerContext(
            event_id=event.event_id,
            event_type=event.event_type,
            handler=handler.name,
            attempt=state.attempts,
            idempotency_key=idempotency_key(event.event_id, handler.name),
            received_at=datetime.fromtimestamp(event.received_at_ms / 1000, tz=UTC),
            log=bound_log,
            superseded_by=superseded_by,
        )
        timeout = self._timeout_of(handler)
        try:
            async with asyncio.timeout(timeout) as deadline:
                if handler.is_async:
                    await handler.func(parsed, context)
                else:
                    raised = await asyncio.to_thread(_call_in_thread, handler, parsed, context)
                    if raised is not None:
                        raise raised
        except asyncio.CancelledError as cancelled:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            stray = RuntimeError("the handler raised CancelledError without being cancelled")
            stray.__cause__ = cancelled
            return stray
        except TimeoutError as timed_out:
            if not deadline.expired():
                return timed_out
            error = TimeoutError(f"handler did not finish within {timeout:g}s")
            error.__traceback__ = timed_out.__traceback__
            return error
        except Exception as error:
            return error
        except BaseException as error:
            bound_log.error(
                "handler raised a process-level exception; it counts as one failed attempt "
                "and the worker carries on",
                error=describe(error),
                exc_info=error,
            )
            return error
        return None

    def _outcome(
        self, handler: Handler, state: HandlerState, started: float, error: BaseException | None
    ) -> Outcome:
        policy = policy_for(handler, self._retry_policy)
        result = classify(state.attempts, error, policy)
        return Outcome(handler.name, state, _ms_since(started), result)

    def _cut_short(self, handler: Handler, state: HandlerState) -> Outcome:
        """A handler still running when the job hit its time limit: a failed attempt."""
        error = TimeoutError("the job was cancelled at its time limit while the handler ran")
        return self._outcome(handler, state, time.perf_counter(), error)

    async def _record(
        self,
        event: StoredEvent,
        names: list[str],
        outcomes: list[Outcome],
        refunds: list[tuple[Handler, HandlerState]] | None = None,
        *,
        settle_job: str,
        admitted: bytes = b"",
    ) -> None:
        """Write outcomes in one step; ``refunds`` are attempts cancelled by a shutdown, which
        do not count, so those handlers are due again at once; ``admitted`` is what admission
        held back and what the runs give back (``Admission.settled``). The write is retried until
        Redis takes it: a handler that succeeded must not run again because Redis was full
        or restarting when its success was to be recorded."""
        now = _now_ms()
        states: dict[str, HandlerState] = {}
        letters: list[DeadLetter] = []
        for outcome in outcomes:
            states[outcome.handler] = next_state(
                outcome.state, outcome.result, now_ms=now, duration_ms=outcome.duration_ms
            )
            if outcome.result.reason is not None:
                letters.append(_dead_letter(event, outcome, now))
            _report_outcome(event, outcome)
        for handler, state in refunds or []:
            states[handler.name] = refunded(state, now_ms=now)
            log.info("handler cancelled by shutdown; it will run again", handler=handler.name)
        counts = Counter(outcome.result.verdict.value for outcome in outcomes)
        await self._until_written(
            lambda: self._store.finish(
                event,
                states,
                names,
                letters,
                now_ms=now,
                counts=counts,
                settle_job=settle_job,
                admitted=admitted,
            )
        )

    async def _until_written(self, write: Callable[[], Awaitable[T]]) -> T:
        """Retry a store write with capped backoff while Redis refuses it."""
        delay = WRITE_RETRY_FIRST_SECONDS
        while True:
            try:
                return await write()
            except REDIS_FAILURES as error:
                self._on_redis_failure(error)
                log.warning(
                    "cannot record outcomes yet; keeping them and retrying",
                    error=f"{type(error).__name__}: {error}",
                    retry_in_s=delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, WRITE_RETRY_MAX_SECONDS)

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
                build_dead_letter(
                    DeadLetterReason.UNHANDLED,
                    now_ms=now,
                    event_id=event.event_id,
                    error_message=f"no handler matches the type {event.event_type!r}",
                )
            )
        await _despite_cancellation(
            self._until_written(
                lambda: self._store.finish(
                    event,
                    {},
                    [],
                    letters,
                    now_ms=now,
                    outcome=DeadLetterReason.UNHANDLED,
                    counts={"unhandled": 1},
                    settle_job=job_id,
                )
            )
        )

    def _timeout_of(self, handler: Handler) -> float:
        return handler.timeout if handler.timeout is not None else self._handler_timeout

    def _begin_entry(self, handler: Handler, ask_paused: bool) -> tuple[str, int, bytes]:
        """What ``begin`` is told of a handler: its name, max attempts and admission limits
        (worked out once per handler and pause view: they are the same for every event)."""
        entry = self._begin_entries.get((handler.name, ask_paused))
        if entry is None:
            max_attempts = policy_for(handler, self._retry_policy).max_attempts
            entry = (handler.name, max_attempts, limits_of(handler, ask_paused=ask_paused))
            self._begin_entries[handler.name, ask_paused] = entry
        return entry


def slowest_handler_timeout(router: Router, default_seconds: float) -> float:
    """The longest any handler may take; a job's own time limit is a little above it."""
    timeouts = [h.timeout for h in router.handlers if h.timeout is not None]
    return max([default_seconds, *timeouts])


class _PartiallyRun(asyncio.CancelledError):
    """Cancellation that carries the outcomes of the handlers that had already finished."""

    def __init__(self, finished: list[Outcome]) -> None:
        super().__init__()
        self.finished = finished


async def _despite_cancellation(write: Awaitable[T]) -> T:
    """Finish a store write even if the job is cancelled meanwhile, then let that through."""
    task = asyncio.ensure_future(write)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def _call_in_thread(
    handler: Handler, event: Event, context: HandlerContext
) -> BaseException | None:
    """A plain ``def`` handler's call, in its thread; what it raised is returned rather than
    carried over by the thread's future (which mishandles ``GeneratorExit``)."""
    try:
        handler.func(event, context)
    except BaseException as error:
        return error
    return None


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
    assert outcome.result.reason is not None
    return build_dead_letter(
        outcome.result.reason,
        now_ms=now,
        event_id=event.event_id,
        handler=outcome.handler,
        error=outcome.result.error,
        attempts=outcome.state.attempts,
        first_attempt_at=outcome.state.first_attempt_at or now,
        last_attempt_at=outcome.state.last_attempt_at or now,
    )


def _report_outcome(event: StoredEvent, outcome: Outcome) -> None:
    """The one log line and the metrics of one handler attempt."""
    name, result = outcome.handler, outcome.result
    metrics.HANDLER_RUNS.labels(handler=name, outcome=result.verdict).inc()
    metrics.HANDLER_DURATION.labels(handler=name).observe(outcome.duration_ms / 1000)
    if result.reason is not None:
        metrics.DEAD_LETTERS.labels(reason=result.reason).inc()
    elif result.verdict is Verdict.RETRY:
        metrics.RETRIES_SCHEDULED.inc()
    fields: dict[str, Any] = {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "handler": name,
        "attempt": outcome.state.attempts,
        "duration_ms": round(outcome.duration_ms, 3),
    }
    if result.error is not None:
        fields["error"] = describe(result.error)
    if result.verdict is Verdict.DEAD_LETTER:
        log.error("handler dead-lettered", outcome="dead_letter", reason=result.reason, **fields)
    elif result.verdict is Verdict.RETRY:
        retry_in = round(result.retry_after or 0, 3)
        log.warning("handler will be retried", outcome="retry", retry_in_s=retry_in, **fields)
    else:
        log.info("handler succeeded", outcome="done", **fields)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
