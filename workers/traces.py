"""Handler attempts as spans (the ``otel`` extra): imported only when traces are on.

Each attempt is a span of the trace its event was received in: its parent is the receiver's
span, whose ``traceparent`` the record script stored with the event. The span is the current
one while the handler runs, in the handler's own task (and, for a plain ``def`` handler, in
its thread, which gets a copy of the task's context), so the spans of a shop's instrumented
calls (HTTP clients, SQLAlchemy) nest under it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from loops_webhooks.handlers.outcomes import AttemptOutcome
from loops_webhooks.workers.event_store import StoredEvent
from loops_webhooks.workers.outcomes import describe

__all__ = ["STORED_CONTEXT", "AttemptTraces"]

STORED_CONTEXT = TraceContextTextMapPropagator()
"""How a trace context is kept with an event (written by the receiver, read here): W3C trace
context, whatever the senders use."""


class AttemptTraces:
    """Starts and ends the span of each handler attempt, for the dispatcher."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    @contextmanager
    def span(self, event: StoredEvent, handler: str, attempt: int) -> Iterator[Span]:
        """The attempt's span, current until the block ends; a cancelled attempt (the job's
        time limit, or a shutdown) ends with status ERROR and no outcome."""
        parent = None
        if event.trace_context:
            parent = STORED_CONTEXT.extract({"traceparent": event.trace_context})
        with self._tracer.start_as_current_span(
            f"run {handler}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "loops.event.id": event.event_id,
                "loops.event.type": event.event_type,
                "loops.handler": handler,
                "loops.attempt": attempt,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except asyncio.CancelledError:
                span.set_status(Status(StatusCode.ERROR, "cancelled before the handler ended"))
                raise

    @staticmethod
    def finished(span: Span, result: AttemptOutcome) -> None:
        """The attempt's outcome (done, retry, dead_letter); what it raised, if anything, as
        the span's exception and ERROR status."""
        span.set_attribute("loops.outcome", result.verdict.value)
        if result.error is not None:
            span.record_exception(result.error)
            span.set_status(Status(StatusCode.ERROR, describe(result.error)))
