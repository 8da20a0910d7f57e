"""Traces from the request to the handler: the receiver's span continues the sender's
``traceparent``, each handler attempt is a span of that trace, and a handler's own spans nest
under its attempt's.

In-process first (the app from ``create_app`` on real Redis, the worker's ``Dispatcher``
on the same Redis, the SDK's in-memory exporter), then across real ``serve`` and ``worker``
processes with ``OTEL_TRACES_EXPORTER=console``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from redis.asyncio import Redis

from loops_webhooks.handlers import HandlerContext, Reject, Router
from loops_webhooks.handlers.retry_policy import RetryPolicy
from loops_webhooks.settings import Settings
from loops_webhooks.workers import keys
from loops_webhooks.workers.admission import PausedHandlers
from loops_webhooks.workers.dead_letters import get_dead_letter
from loops_webhooks.workers.dispatch import Dispatcher
from loops_webhooks.workers.event_store import EventStore
from loops_webhooks.workers.intake import EventIntake, ReceivedEvent
from loops_webhooks.workers.replay import replay_dead_letter
from loops_webhooks.workers.traces import AttemptTraces
from tests.support.loops_sender import WEBHOOK_SECRET, LoopsSender
from tests.support.processes import Service, StartLoopsWebhooks
from tests.support.waiting import eventually

WEBHOOK_PATH = "/webhooks/loops"
COMPLETED = "checkout.session.completed"
SENDER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SENDER_SPAN_ID = "00f067aa0ba902b7"
SENDER_TRACEPARENT = f"00-{SENDER_TRACE_ID}-{SENDER_SPAN_ID}-01"


@dataclass
class Traced:
    """A tracer whose finished spans the in-memory exporter keeps."""

    provider: TracerProvider
    exporter: InMemorySpanExporter

    def spans(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if span.name == name]


@pytest.fixture
def traced() -> Iterator[Traced]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Traced(provider, exporter)
    provider.shutdown()


@pytest.fixture
async def receiver(
    start_receiver: Callable[..., Awaitable[TestClient]], redis_url: str, traced: Traced
) -> TestClient:
    return await start_receiver(redis_url, traced.provider.get_tracer("loops_webhooks"))


async def deliver(
    receiver: TestClient, loops: LoopsSender, headers: dict[str, str] | None = None
) -> str:
    """POST a signed event (with ``headers`` besides the signature); its id."""
    event_id = f"evt_traced_{time.monotonic_ns()}"
    body = loops.event(event_id)
    response = await receiver.post(
        WEBHOOK_PATH, data=body, headers={**loops.headers(body), **(headers or {})}
    )
    assert response.status == 200, await response.text()
    return event_id


def dispatcher_for(redis: Redis, router: Router, traced: Traced) -> Dispatcher:
    """The worker's dispatcher, with traces on."""
    return Dispatcher(
        router,
        EventStore(redis, dedupe_ttl_seconds=3600, queue_name=Settings().queue_name),
        paused=PausedHandlers(redis),
        retry_policy=RetryPolicy(max_attempts=3, base_seconds=10, max_delay_seconds=60),
        handler_timeout_seconds=5,
        dead_letter_unhandled=False,
        traces=AttemptTraces(traced.provider.get_tracer("loops_webhooks")),
    )


async def run_job(redis: Redis, router: Router, traced: Traced, event_id: str) -> None:
    """Run the event's job as the worker does."""
    dispatcher = dispatcher_for(redis, router, traced)
    assert await dispatcher.process(event_id, COMPLETED, job_id=keys.job_id_for_event(event_id))


def router_with(**handlers: Any) -> Router:
    router = Router()
    for name, func in handlers.items():
        router.on(COMPLETED, name=name)(func)
    return router


async def test_the_request_span_continues_the_traceparent_the_sender_sent(
    receiver: TestClient, loops: LoopsSender, traced: Traced
) -> None:
    await deliver(receiver, loops, {"traceparent": SENDER_TRACEPARENT})

    [span] = traced.spans(f"POST {WEBHOOK_PATH}")
    assert span.kind is SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == SENDER_TRACE_ID
    assert span.parent is not None and format(span.parent.span_id, "016x") == SENDER_SPAN_ID
    attributes = dict(span.attributes or {})
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == WEBHOOK_PATH
    assert attributes["url.path"] == WEBHOOK_PATH
    assert attributes["url.scheme"] == "http"
    assert attributes["http.response.status_code"] == 200
    assert attributes["client.address"] == "127.0.0.1"
    assert span.status.status_code is StatusCode.UNSET


async def test_a_request_without_a_traceparent_starts_a_trace(
    receiver: TestClient, loops: LoopsSender, traced: Traced
) -> None:
    await deliver(receiver, loops)

    [span] = traced.spans(f"POST {WEBHOOK_PATH}")
    assert span.parent is None


async def test_a_refused_request_is_a_span_with_its_status_code(
    receiver: TestClient, loops: LoopsSender, traced: Traced
) -> None:
    body = loops.event()
    response = await receiver.post(
        WEBHOOK_PATH,
        data=body,
        headers={"loops-signature": "0" * 64, "traceparent": SENDER_TRACEPARENT},
    )

    assert response.status == 401
    [span] = traced.spans(f"POST {WEBHOOK_PATH}")
    assert (span.attributes or {})["http.response.status_code"] == 401
    assert span.status.status_code is StatusCode.UNSET  # a client's error, not the server's


async def test_a_request_answered_5xx_is_an_error_span(
    start_receiver: Callable[..., Awaitable[TestClient]],
    loops: LoopsSender,
    traced: Traced,
    free_port: Callable[[], int],
) -> None:
    nothing_listens = f"redis://127.0.0.1:{free_port()}"
    tracer = traced.provider.get_tracer("loops_webhooks")
    receiver = await start_receiver(nothing_listens, tracer, redis_timeout_seconds=1)
    body = loops.event()

    response = await receiver.post(WEBHOOK_PATH, data=body, headers=loops.headers(body))

    assert response.status == 503
    [span] = traced.spans(f"POST {WEBHOOK_PATH}")
    assert (span.attributes or {})["http.response.status_code"] == 503
    assert (span.attributes or {})["error.type"] == "503"
    assert span.status.status_code is StatusCode.ERROR


async def test_the_event_record_keeps_the_request_spans_traceparent(
    receiver: TestClient, loops: LoopsSender, traced: Traced, redis: Redis
) -> None:
    event_id = await deliver(receiver, loops, {"traceparent": SENDER_TRACEPARENT})

    [span] = traced.spans(f"POST {WEBHOOK_PATH}")
    stored = await redis.hget(keys.event_key(event_id), keys.TRACE_CONTEXT_FIELD)
    assert stored == f"00-{SENDER_TRACE_ID}-{span.context.span_id:016x}-01".encode()


async def test_each_attempt_is_a_child_span_of_the_request_with_the_event_and_outcome(
    receiver: TestClient, loops: LoopsSender, traced: Traced, redis: Redis
) -> None:
    async def fulfil(event: Any, ctx: HandlerContext) -> None:
        pass

    event_id = await deliver(receiver, loops, {"traceparent": SENDER_TRACEPARENT})
    await run_job(redis, router_with(fulfil=fulfil), traced, event_id)

    [request] = traced.spans(f"POST {WEBHOOK_PATH}")
    [attempt] = traced.spans("run fulfil")
    assert attempt.kind is SpanKind.CONSUMER
    assert attempt.context.trace_id == request.context.trace_id
    assert attempt.parent is not None and attempt.parent.span_id == request.context.span_id
    assert dict(attempt.attributes or {}) == {
        "loops.event.id": event_id,
        "loops.event.type": COMPLETED,
        "loops.handler": "fulfil",
        "loops.attempt": 1,
        "loops.outcome": "done",
    }
    assert attempt.status.status_code is StatusCode.UNSET


async def test_a_failed_attempt_is_an_error_span_recording_the_exception(
    receiver: TestClient, loops: LoopsSender, traced: Traced, redis: Redis
) -> None:
    async def refuse(event: Any, ctx: HandlerContext) -> None:
        raise Reject("the order is cancelled")

    event_id = await deliver(receiver, loops)
    await run_job(redis, router_with(refuse=refuse), traced, event_id)

    [attempt] = traced.spans("run refuse")
    assert (attempt.attributes or {})["loops.outcome"] == "dead_letter"
    assert attempt.status.status_code is StatusCode.ERROR
    assert attempt.status.description == "Reject: the order is cancelled"
    [recorded] = [event for event in attempt.events if event.name == "exception"]
    assert (recorded.attributes or {})["exception.type"] == "loops_webhooks.handlers.errors.Reject"
    assert "exception.stacktrace" in (recorded.attributes or {})


async def test_an_attempt_cancelled_while_its_handler_runs_is_an_error_span_without_outcome(
    receiver: TestClient, loops: LoopsSender, traced: Traced, redis: Redis
) -> None:
    running = asyncio.Event()

    async def slow(event: Any, ctx: HandlerContext) -> None:
        running.set()
        await asyncio.sleep(30)

    event_id = await deliver(receiver, loops)
    dispatcher = dispatcher_for(redis, router_with(slow=slow), traced)
    job = asyncio.create_task(
        dispatcher.process(event_id, COMPLETED, job_id=keys.job_id_for_event(event_id))
    )
    await running.wait()
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job

    [attempt] = traced.spans("run slow")
    assert attempt.status.status_code is StatusCode.ERROR
    assert attempt.status.description == "cancelled before the handler ended"
    assert "loops.outcome" not in (attempt.attributes or {})


async def test_an_event_received_with_traces_off_gets_a_trace_of_its_own_per_attempt(
    loops: LoopsSender, traced: Traced, redis: Redis
) -> None:
    async def fulfil(event: Any, ctx: HandlerContext) -> None:
        pass

    event_id = "evt_received_untraced"
    intake = EventIntake(redis, queue_name=Settings().queue_name)
    stored = ReceivedEvent(event_id, COMPLETED, loops.event(event_id), {}, int(time.time() * 1000))
    assert await intake.submit(stored)
    assert not await redis.hexists(keys.event_key(event_id), keys.TRACE_CONTEXT_FIELD)
    await run_job(redis, router_with(fulfil=fulfil), traced, event_id)

    [attempt] = traced.spans("run fulfil")
    assert attempt.parent is None
    assert (attempt.attributes or {})["loops.outcome"] == "done"


async def test_a_replayed_attempt_joins_the_trace_of_the_original_request(
    receiver: TestClient, loops: LoopsSender, traced: Traced, redis: Redis
) -> None:
    refusals = iter([Reject("not yet")])

    async def fulfil(event: Any, ctx: HandlerContext) -> None:
        if (refusal := next(refusals, None)) is not None:
            raise refusal

    router = router_with(fulfil=fulfil)
    event_id = await deliver(receiver, loops, {"traceparent": SENDER_TRACEPARENT})
    await run_job(redis, router, traced, event_id)
    letter = await get_dead_letter(redis, keys.dead_letter_id(event_id, "fulfil"))
    assert letter is not None
    await replay_dead_letter(redis, letter, queue_name=Settings().queue_name, history_limit=10)
    await run_job(redis, router, traced, event_id)

    [request] = traced.spans(f"POST {WEBHOOK_PATH}")
    first, replayed = traced.spans("run fulfil")
    assert [
        (first.attributes or {})["loops.outcome"],
        (replayed.attributes or {})["loops.outcome"],
    ] == ["dead_letter", "done"]
    assert replayed.parent is not None and replayed.parent.span_id == request.context.span_id
    assert replayed.context.trace_id == request.context.trace_id


@pytest.mark.parametrize(
    "handlers", [("charge",), ("charge", "email")], ids=["lone", "concurrent-async-and-def"]
)
async def test_a_handlers_own_spans_nest_under_its_attempt(
    handlers: tuple[str, ...],
    receiver: TestClient,
    loops: LoopsSender,
    traced: Traced,
    redis: Redis,
) -> None:
    shop = traced.provider.get_tracer("shop")

    async def charge(event: Any, ctx: HandlerContext) -> None:
        with shop.start_as_current_span("charge"):
            await asyncio.sleep(0.01)  # another handler runs meanwhile, in its own task

    def email(event: Any, ctx: HandlerContext) -> None:
        with shop.start_as_current_span("email"):
            time.sleep(0.01)

    written = {"charge": charge, "email": email}
    event_id = await deliver(receiver, loops)
    await run_job(
        redis, router_with(**{name: written[name] for name in handlers}), traced, event_id
    )

    for name in handlers:
        [attempt], [own] = traced.spans(f"run {name}"), traced.spans(name)
        assert own.parent is not None and own.parent.span_id == attempt.context.span_id
        assert own.context.trace_id == attempt.context.trace_id


HANDLERS_MODULE = """
from opentelemetry import trace

from loops_webhooks.handlers import Router

router = Router()
shop = trace.get_tracer("shop")  # the global provider's, as instrumented libraries use


@router.on("checkout.session.completed", name="fulfil")
async def fulfil(event, ctx):
    with shop.start_as_current_span("reserve stock"):
        ctx.log.info("fulfilled")
"""


def spans_in(output: str) -> list[dict[str, Any]]:
    """The spans the console exporter printed among a process's log lines: pretty-printed
    JSON objects, each starting on a line of its own."""
    decoder = json.JSONDecoder()
    found = []
    output, position = "\n" + output, 0
    while (start := output.find("\n{", position)) != -1:
        try:
            document, position = decoder.raw_decode(output, start + 1)
        except json.JSONDecodeError:
            position = start + 1
            continue
        if isinstance(document, dict) and "context" in document and "kind" in document:
            found.append(document)
    return found


async def test_one_trace_runs_from_the_request_through_real_receiver_and_worker_processes(
    tmp_path: Path,
    redis_url: str,
    start_loops_webhooks: StartLoopsWebhooks,
    free_port: Callable[[], int],
    loops: LoopsSender,
) -> None:
    (tmp_path / "traced_handlers.py").write_text(HANDLERS_MODULE)
    port, metrics_port = free_port(), free_port()
    env = {
        "REDIS_URL": redis_url,
        "LOOPS_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "LOOPS_HANDLERS": "traced_handlers:router",
        "LOOPS_LOG_FORMAT": "json",
        "PYTHONPATH": str(tmp_path),
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    worker = start_loops_webhooks(
        "worker", env={**env, "LOOPS_METRICS_PORT": str(metrics_port)}, port=metrics_port
    )
    receiver = start_loops_webhooks("serve", "--port", str(port), env=env, port=port)
    event_id = "evt_traced_across_processes"
    body = loops.event(event_id)
    headers = {**loops.headers(body), "traceparent": SENDER_TRACEPARENT}
    async with aiohttp.ClientSession() as session:
        url = f"{receiver.base_url}{WEBHOOK_PATH}"
        async with session.post(url, data=body, headers=headers) as response:
            assert response.status == 200

    def named(process: Service, name: str) -> list[dict[str, Any]]:
        return [span for span in spans_in(process.output()) if span["name"] == name]

    async def exported() -> bool:
        return bool(named(worker, "run fulfil") and named(receiver, f"POST {WEBHOOK_PATH}"))

    await eventually(
        exported,
        within=30,
        what="the request's and the attempt's spans printed",
        details=lambda: receiver.output_tail() + worker.output_tail(),
    )
    [received], [attempt] = named(receiver, f"POST {WEBHOOK_PATH}"), named(worker, "run fulfil")
    assert received["kind"] == "SpanKind.SERVER"
    assert received["resource"]["attributes"]["service.name"] == "loops-webhooks-receiver"
    assert attempt["resource"]["attributes"]["service.name"] == "loops-webhooks-worker"
    trace_id = f"0x{SENDER_TRACE_ID}"
    assert received["context"]["trace_id"] == attempt["context"]["trace_id"] == trace_id
    assert attempt["parent_id"] == received["context"]["span_id"]
    assert attempt["attributes"]["loops.event.id"] == event_id
    assert attempt["attributes"]["loops.outcome"] == "done"
    [own] = named(worker, "reserve stock")
    assert own["parent_id"] == attempt["context"]["span_id"]
    [started] = [line for line in receiver.output().splitlines() if '"traces on"' in line]
    assert json.loads(started)["exporters"] == ["console"]
