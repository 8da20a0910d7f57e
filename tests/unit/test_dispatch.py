"""``Dispatcher.process``, the body of the one arq job, against fakeredis running the real Lua.

Each test records an event the way the receiver does (``EventIntake.submit``), runs its job
as the worker does (claimed, then ``process`` with the job's id), and reads the outcome back
from the event store, the dead-letter queue and arq's queue: the job rescheduled at the time
the next handler is due, or removed once the event is finished.
"""

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import fakeredis
import orjson
import pytest
import structlog.testing

from loops_webhooks.handlers import HandlerContext, Reject, RetryLater, Router
from loops_webhooks.handlers.context import idempotency_key
from loops_webhooks.handlers.events import CheckoutSessionEvent, Event
from loops_webhooks.handlers.retry_policy import RetryPolicy
from loops_webhooks.workers import keys
from loops_webhooks.workers.admission import PausedHandlers
from loops_webhooks.workers.dead_letters import DeadLetter, get_dead_letter
from loops_webhooks.workers.dispatch import Dispatcher
from loops_webhooks.workers.event_store import EventStatus, EventStore, HandlerState, HandlerStatus
from loops_webhooks.workers.intake import EventIntake, ReceivedEvent
from loops_webhooks.workers.keys import dead_letter_id
from loops_webhooks.workers.replay import replay_dead_letter

QUEUE = "loops:queue"
COMPLETED = "checkout.session.completed"


class Deliveries:
    """Records an event as the receiver does and runs its job as arq would."""

    def __init__(self, redis: fakeredis.FakeAsyncRedis, loops: Any) -> None:
        self.redis = redis
        self.loops = loops
        self.store = EventStore(redis, dedupe_ttl_seconds=3600, queue_name=QUEUE)
        self._intake = EventIntake(redis, queue_name=QUEUE)
        self._count = 0

    async def record(self, event_type: str = COMPLETED, body: bytes | None = None) -> str:
        self._count += 1
        event_id = f"evt_{self._count}"
        body = body or self.loops.event(event_id, event_type)
        event = ReceivedEvent(event_id, event_type, body, {}, int(time.time() * 1000))
        assert await self._intake.submit(event)
        return event_id

    def dispatcher(
        self,
        router: Router,
        *,
        max_attempts: int = 3,
        base_seconds: float = 10.0,
        timeout: float = 5.0,
        dead_letter_unhandled: bool = False,
        shutting_down: bool = True,
    ) -> Dispatcher:
        """The dispatcher as the worker builds it; ``shutting_down`` says whether a
        cancellation is a shutdown (the attempt is given back) or the job's time limit."""
        return Dispatcher(
            router,
            self.store,
            paused=PausedHandlers(self.redis),
            retry_policy=RetryPolicy(
                max_attempts=max_attempts, base_seconds=base_seconds, max_delay_seconds=3600
            ),
            handler_timeout_seconds=timeout,
            dead_letter_unhandled=dead_letter_unhandled,
            shutting_down=lambda: shutting_down,
        )

    async def claim_job(self, event_id: str) -> str:
        """Mark the event's job as taken by a worker, as the worker's poll does before
        running it; its id."""
        job_id = keys.job_id_for_event(event_id)
        await self.redis.set(keys.arq_in_progress_key(job_id), b"1")
        await self.redis.set(keys.arq_retry_key(job_id), b"1")
        return job_id

    async def run_job(
        self, dispatcher: Dispatcher, event_id: str, event_type: str = COMPLETED
    ) -> int | None:
        """Run the event's job as the worker does, its final write settling the job: when
        the job is due again (ms since the epoch), or None once it was removed."""
        job_id = await self.claim_job(event_id)
        assert await dispatcher.process(event_id, event_type, job_id=job_id)
        return await self.job_due(event_id)

    async def job_due(self, event_id: str) -> int | None:
        """When the event's job is due in arq's queue (ms), None if it is not queued."""
        score = await self.redis.zscore(QUEUE, keys.job_id_for_event(event_id))
        return None if score is None else int(score)

    async def state(self, event_id: str, handler: str) -> HandlerState:
        stored = await self.store.get(event_id)
        assert stored is not None
        return stored.handlers[handler]

    async def status(self, event_id: str) -> EventStatus:
        stored = await self.store.get(event_id)
        assert stored is not None
        return stored.status

    async def dead_letter(self, event_id: str, handler: str) -> DeadLetter:
        letter = await get_dead_letter(self.redis, dead_letter_id(event_id, handler))
        assert letter is not None, f"no dead letter for {event_id} and {handler!r}"
        return letter

    async def is_pending(self, event_id: str) -> bool:
        return await self.redis.zscore(keys.PENDING_EVENTS, event_id) is not None


@pytest.fixture
async def deliveries(loops: Any) -> AsyncIterator[Deliveries]:
    redis = fakeredis.FakeAsyncRedis()
    yield Deliveries(redis, loops)
    await redis.aclose()


class Calls:
    """A handler factory that remembers how each call went."""

    def __init__(self) -> None:
        self.contexts: list[HandlerContext] = []
        self.events: list[Event] = []

    def recording(self, then: Callable[[HandlerContext], None] = lambda ctx: None) -> Any:
        """A handler with no model annotation, so it gets its event type's default model."""

        async def handler(event: Any, ctx: HandlerContext) -> None:
            self.events.append(event)
            self.contexts.append(ctx)
            then(ctx)

        return handler

    @property
    def attempts(self) -> list[int]:
        return [ctx.attempt for ctx in self.contexts]


def fail(ctx: HandlerContext) -> None:
    raise ValueError(f"attempt {ctx.attempt} failed")


def router_with(*handlers: tuple[str, Any], **options: Any) -> Router:
    router = Router()
    for name, func in handlers:
        router.on("*", name=name, **options)(func)
    return router


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_a_handler_that_returns_is_done_and_its_event_leaves_the_pending_set(
    deliveries: Deliveries,
) -> None:
    calls = Calls()
    event_id = await deliveries.record()

    due = await deliveries.run_job(
        deliveries.dispatcher(router_with(("fulfil", calls.recording()))), event_id
    )

    assert calls.attempts == [1]
    assert due is None
    state = await deliveries.state(event_id, "fulfil")
    assert (state.status, state.attempts) == (HandlerStatus.DONE, 1)
    assert await deliveries.status(event_id) is EventStatus.DONE
    assert not await deliveries.is_pending(event_id)


async def test_a_handler_receives_the_event_parsed_into_the_model_of_its_type(
    deliveries: Deliveries,
) -> None:
    calls = Calls()
    event_id = await deliveries.record()

    await deliveries.run_job(
        deliveries.dispatcher(router_with(("fulfil", calls.recording()))), event_id
    )

    [event] = calls.events
    assert isinstance(event, CheckoutSessionEvent)
    assert event.id == event_id
    assert event.data.metadata["orderId"] == "order_456"


async def test_a_handler_context_carries_the_event_handler_attempt_and_idempotency_key(
    deliveries: Deliveries,
) -> None:
    calls = Calls()
    event_id = await deliveries.record()

    await deliveries.run_job(
        deliveries.dispatcher(router_with(("fulfil", calls.recording()))), event_id
    )

    [ctx] = calls.contexts
    assert (ctx.event_id, ctx.event_type, ctx.handler, ctx.attempt) == (
        event_id,
        COMPLETED,
        "fulfil",
        1,
    )
    assert ctx.idempotency_key == idempotency_key(event_id, "fulfil")


async def test_an_attempt_is_counted_in_the_store_before_the_handler_runs(
    deliveries: Deliveries,
) -> None:
    seen: list[HandlerState] = []

    async def look_at_own_state(event: Event, ctx: HandlerContext) -> None:
        seen.append(await deliveries.state(event.id, ctx.handler))

    event_id = await deliveries.record()

    await deliveries.run_job(
        deliveries.dispatcher(router_with(("fulfil", look_at_own_state))), event_id
    )

    [during] = seen
    assert (during.status, during.attempts) == (HandlerStatus.RUNNING, 1)


async def test_a_failing_handler_is_retried_after_a_delay_within_its_first_backoff_ceiling(
    deliveries: Deliveries,
) -> None:
    calls = Calls()
    event_id = await deliveries.record()
    dispatcher = deliveries.dispatcher(
        router_with(("fulfil", calls.recording(fail))), base_seconds=10
    )
    before = now_ms()

    due = await deliveries.run_job(dispatcher, event_id)

    assert due is not None
    assert before <= due <= now_ms() + 10_000
    state = await deliveries.state(event_id, "fulfil")
    assert state.status is HandlerStatus.RETRY
    assert state.last_error == "ValueError: attempt 1 failed"
    assert state.next_attempt_at == due
    assert await deliveries.is_pending(event_id)


async def test_a_job_that_runs_before_a_retry_is_due_runs_nothing_and_defers_to_it(
    deliveries: Deliveries,
) -> None:
    calls = Calls()

    def later(ctx: HandlerContext) -> None:
        raise RetryLater(after=60)

    event_id = await deliveries.record()
    dispatcher = deliveries.dispatcher(router_with(("fulfil", calls.recording(later))))
    assert await deliveries.run_job(dispatcher, event_id) is not None

    early = await deliveries.run_job(dispatcher, event_id)

    assert calls.attempts == [1]
    assert early is not None
    assert 58_000 <= early - now_ms() <= 60_000
    assert (await deliveries.state(event_id, "fulfil")).attempts == 1


async def test_a_handler_that_fails_its_last_attempt_is_dead_lettered_with_its_traceback(
    deliveries: Deliveries,
) -> None:
    calls = Calls()
    event_id = await deliveries.record()
    dispatcher = deliveries.dispatcher(
        router_with(("fulfil", calls.recording(fail))), max_attempts=2, base_seconds=0.001
    )
    assert await deliveries.run_job(dispatcher, event_id) is not None
    await asyncio.sleep(0.01)

    due = await deliveries.run_job(dispatcher, event_id)

    assert calls.attempts == [1, 2]
    assert due is None
    letter = await deliveries.dead_letter(event_id, "fulfil")
    assert (letter.reason, letter.attempts) == ("max_attempts", 2)
    assert (letter.error_type, letter.error_message) == ("ValueError", "attempt 2 failed")
    assert "in fail" in letter.traceback
    assert letter.traceback.rstrip().endswith("ValueError: attempt 2 failed")
    assert letter.raw == (await deliveries.store.get(event_id)).raw  # type: ignore[union-attr]
    assert await deliveries.status(event_id) is EventStatus.DEAD
    assert not await deliveries.is_pending(event_id)


async def test_attempts_spent_by_worker_crashes_dead_letter_the_handler_without_running_it(
    deliveries: Deliveries,
) -> None:
    calls = Calls()
    event_id = await deliveries.record()
    crashed_during = await deliveries.store.begin(event_id, [("fulfil", 1, b"")], now_ms())
    assert crashed_during is not None

    dispatcher = deliveries.dispatcher(router_with(("fulfil", calls.recording())), max_attempts=1)
    await deliveries.run_job(dispatcher, event_id)

    assert calls.attempts == []
    letter = await deliveries.dead_letter(event_id, "fulfil")
    assert (letter.reason, letter.attempts, letter.error_type) == (
        "max_attempts",
        1,
        "RuntimeError",
    )
    assert "the worker stopped during attempt 1" in letter.error_message
    assert await deliveries.status(event_id) is EventStatus.DEAD


async def test_a_crash_with_attempts_left_runs_the_handler_again_as_the_next_attempt(
    deliveries: Deliveries,
) -> None:
    calls = Calls()
    event_id = await deliveries.record()
    await deliveries.store.begin(event_id, [("fulfil", 3, b"")], now_ms())

    dispatcher = deliveries.dispatcher(router_with(("fulfil", calls.recording())), max_attempts=3)
    await deliveries.run_job(dispatcher, event_id)

    assert calls.attempts == [2]
    assert await deliveries.status(event_id) is EventStatus.DONE


async def test_reject_dead_letters_at_once_with_its_reason_and_traceback(
    deliveries: Deliveries,
) -> None:
    def reject(ctx: HandlerContext) -> None:
        raise Reject("order order_456 does not exist")

    calls = Calls()
    event_id = await deliveries.record()

    dispatcher = deliveries.dispatcher(
        router_with(("fulfil", calls.recording(reject))), max_attempts=8
    )
    await deliveries.run_job(dispatcher, event_id)

    assert calls.attempts == [1]
    letter = await deliveries.dead_letter(event_id, "fulfil")
    assert (letter.reason, letter.attempts, letter.error_type) == ("rejected", 1, "Reject")
    assert letter.error_message == "order order_456 does not exist"
    assert "in reject" in letter.traceback
    assert await deliveries.status(event_id) is EventStatus.DEAD


async def test_retry_later_schedules_the_next_attempt_after_the_delay_the_handler_asked_for(
    deliveries: Deliveries,
) -> None:
    def later(ctx: HandlerContext) -> None:
        raise RetryLater(after=30, reason="rate limited")

    event_id = await deliveries.record()
    before = now_ms()

    dispatcher = deliveries.dispatcher(
        router_with(("fulfil", Calls().recording(later))), base_seconds=0.001
    )
    due = await deliveries.run_job(dispatcher, event_id)
    after = now_ms()

    assert due is not None
    assert before + 30_000 <= due <= after + 30_000
    assert (await deliveries.state(event_id, "fulfil")).next_attempt_at == due


async def test_retry_later_on_the_last_attempt_dead_letters(deliveries: Deliveries) -> None:
    def later(ctx: HandlerContext) -> None:
        raise RetryLater(after=1)

    event_id = await deliveries.record()

    dispatcher = deliveries.dispatcher(
        router_with(("fulfil", Calls().recording(later))), max_attempts=1
    )
    assert await deliveries.run_job(dispatcher, event_id) is None

    letter = await deliveries.dead_letter(event_id, "fulfil")
    assert (letter.reason, letter.error_type) == ("max_attempts", "RetryLater")


async def test_a_handler_that_overruns_its_timeout_is_retried(deliveries: Deliveries) -> None:
    async def hang(event: Event, ctx: HandlerContext) -> None:
        await asyncio.sleep(60)

    event_id = await deliveries.record()
    router = router_with(("fulfil", hang), timeout=0.05)

    assert await deliveries.run_job(deliveries.dispatcher(router, timeout=30), event_id) is not None

    state = await deliveries.state(event_id, "fulfil")
    assert state.status is HandlerStatus.RETRY
    assert state.last_error == "TimeoutError: handler did not finish within 0.05s"


async def test_a_timeout_error_raised_by_the_handler_itself_keeps_its_own_message(
    deliveries: Deliveries,
) -> None:
    def api_timed_out(ctx: HandlerContext) -> None:
        raise TimeoutError("payment API read timed out")

    event_id = await deliveries.record()

    dispatcher = deliveries.dispatcher(
        router_with(("fulfil", Calls().recording(api_timed_out))), timeout=30
    )
    assert await deliveries.run_job(dispatcher, event_id) is not None

    state = await deliveries.state(event_id, "fulfil")
    assert state.last_error == "TimeoutError: payment API read timed out"


async def test_a_payload_the_model_rejects_is_dead_lettered_as_invalid_without_running(
    deliveries: Deliveries,
) -> None:
    calls = Calls()
    body = orjson.dumps(
        {"id": "evt_1", "type": COMPLETED, "created": "2025-01-15T10:35:00Z", "data": {}}
    )
    event_id = await deliveries.record(body=body)

    await deliveries.run_job(
        deliveries.dispatcher(router_with(("fulfil", calls.recording()))), event_id
    )

    assert calls.attempts == []
    letter = await deliveries.dead_letter(event_id, "fulfil")
    assert (letter.reason, letter.error_type) == ("invalid_payload", "ValidationError")
    assert "status" in letter.error_message
    assert letter.raw == body
    assert await deliveries.status(event_id) is EventStatus.DEAD


async def test_a_payload_the_model_rejects_leaves_its_values_out_of_the_letter_and_the_log(
    deliveries: Deliveries,
) -> None:
    customer = {"email": "jane.doe@example.com", "name": "Jane Doe"}
    data = {"id": "cs_1", "metadata": customer}  # no status: the whole object fails
    body = orjson.dumps({"id": "evt_1", "type": COMPLETED, "created": "2025-01-15", "data": data})
    event_id = await deliveries.record(body=body)

    with structlog.testing.capture_logs() as logged:
        await deliveries.run_job(
            deliveries.dispatcher(router_with(("fulfil", Calls().recording()))), event_id
        )

    letter = await deliveries.dead_letter(event_id, "fulfil")
    state = await deliveries.state(event_id, "fulfil")
    [line] = [entry for entry in logged if entry["event"] == "handler dead-lettered"]
    assert "data.status: Field required [type=missing]" in letter.error_message
    assert "ValidationError: 1 validation error(s) for CheckoutSessionEvent" in letter.traceback
    for text in (letter.error_message, letter.traceback, state.last_error, line["error"]):
        assert "jane.doe" not in text
        assert "Jane Doe" not in text
        assert "input_value" not in text


async def test_an_event_type_no_handler_matches_is_recorded_done_with_outcome_unhandled(
    deliveries: Deliveries,
) -> None:
    router = Router()
    router.on(COMPLETED, name="fulfil")(Calls().recording())
    event_id = await deliveries.record("refund.created")

    due = await deliveries.run_job(deliveries.dispatcher(router), event_id, "refund.created")

    assert due is None

    stored = await deliveries.store.get(event_id)
    assert stored is not None
    assert (stored.status, stored.outcome) == (EventStatus.DONE, "unhandled")
    assert not await deliveries.is_pending(event_id)
    assert await deliveries.redis.zcard(keys.DEAD_LETTER_INDEX) == 0


async def test_an_unhandled_event_type_is_dead_lettered_when_so_configured(
    deliveries: Deliveries,
) -> None:
    event_id = await deliveries.record("refund.created")

    dispatcher = deliveries.dispatcher(Router(), dead_letter_unhandled=True)
    assert await deliveries.run_job(dispatcher, event_id, "refund.created") is None

    letter = await deliveries.dead_letter(event_id, "")
    stored = await deliveries.store.get(event_id)
    assert stored is not None
    assert (letter.reason, letter.event_type) == ("unhandled", "refund.created")
    assert letter.raw == stored.raw
    assert stored.status == EventStatus.DEAD
    assert await deliveries.redis.ttl(keys.event_key(event_id)) == -1
    assert not await deliveries.is_pending(event_id)


async def test_a_handler_that_succeeded_is_not_run_again_when_another_handler_is_retried(
    deliveries: Deliveries,
) -> None:
    fulfil, notify = Calls(), Calls()

    def fail_first(ctx: HandlerContext) -> None:
        if ctx.attempt == 1:
            raise ConnectionError("mail server down")

    event_id = await deliveries.record()
    dispatcher = deliveries.dispatcher(
        router_with(("fulfil", fulfil.recording()), ("notify", notify.recording(fail_first))),
        base_seconds=0.001,
    )
    assert await deliveries.run_job(dispatcher, event_id) is not None
    await asyncio.sleep(0.01)

    assert await deliveries.run_job(dispatcher, event_id) is None

    assert (fulfil.attempts, notify.attempts) == ([1], [1, 2])
    assert await deliveries.status(event_id) is EventStatus.DONE


async def test_a_plain_def_handler_runs_in_a_worker_thread_not_on_the_event_loop(
    deliveries: Deliveries,
) -> None:
    threads: list[int] = []

    def blocking(event: Event, ctx: HandlerContext) -> None:
        threads.append(threading.get_ident())

    event_id = await deliveries.record()

    await deliveries.run_job(deliveries.dispatcher(router_with(("fulfil", blocking))), event_id)

    assert len(threads) == 1
    assert threads[0] != threading.get_ident()
    assert await deliveries.status(event_id) is EventStatus.DONE


async def test_a_shutdown_cancelling_a_running_handler_refunds_its_attempt(
    deliveries: Deliveries,
) -> None:
    slow_started = asyncio.Event()
    slow_attempts: list[int] = []
    quick = Calls()

    async def slow(event: Event, ctx: HandlerContext) -> None:
        slow_attempts.append(ctx.attempt)
        if len(slow_attempts) == 1:
            slow_started.set()
            await asyncio.sleep(60)

    event_id = await deliveries.record()
    dispatcher = deliveries.dispatcher(
        router_with(("slow", slow), ("quick", quick.recording())), max_attempts=1
    )
    job_id = await deliveries.claim_job(event_id)
    job = asyncio.create_task(dispatcher.process(event_id, COMPLETED, job_id=job_id))
    await slow_started.wait()
    for _ in range(20):
        await asyncio.sleep(0)

    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job

    refunded = await deliveries.state(event_id, "slow")
    assert (refunded.status, refunded.attempts) == (HandlerStatus.RETRY, 0)
    assert refunded.next_attempt_at is not None
    assert refunded.next_attempt_at <= now_ms()
    assert (await deliveries.state(event_id, "quick")).status is HandlerStatus.DONE
    assert await deliveries.is_pending(event_id)
    assert await deliveries.job_due(event_id) == refunded.next_attempt_at

    assert await deliveries.run_job(dispatcher, event_id) is None

    assert (slow_attempts, quick.attempts) == ([1, 1], [1])
    assert await deliveries.status(event_id) is EventStatus.DONE


class SlowToAnswerStore(EventStore):
    """An event store whose ``begin`` reply arrives late, as over a slow network: the
    attempt is already counted in Redis while the worker still waits for the answer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counted = asyncio.Event()

    async def begin(self, *args: Any, **kwargs: Any) -> Any:
        begun = await super().begin(*args, **kwargs)
        self.counted.set()
        await asyncio.sleep(0.2)
        return begun


async def test_a_shutdown_while_begin_is_answering_spends_no_attempt(
    deliveries: Deliveries,
) -> None:
    calls = Calls()
    event_id = await deliveries.record()
    store = SlowToAnswerStore(deliveries.redis, dedupe_ttl_seconds=3600, queue_name=QUEUE)
    dispatcher = Dispatcher(
        router_with(("fulfil", calls.recording())),
        store,
        paused=PausedHandlers(deliveries.redis),
        retry_policy=RetryPolicy(max_attempts=3, base_seconds=1, max_delay_seconds=60),
        handler_timeout_seconds=5,
        dead_letter_unhandled=False,
    )
    job_id = await deliveries.claim_job(event_id)
    job = asyncio.create_task(dispatcher.process(event_id, COMPLETED, job_id=job_id))
    await store.counted.wait()

    job.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await job

    assert calls.attempts == []
    assert (await deliveries.state(event_id, "fulfil")).attempts == 0


async def test_the_idempotency_key_is_the_same_on_every_attempt_of_one_handler(
    deliveries: Deliveries,
) -> None:
    calls = Calls()
    event_id = await deliveries.record()
    dispatcher = deliveries.dispatcher(
        router_with(("fulfil", calls.recording(fail))), max_attempts=3, base_seconds=0.001
    )
    for _ in range(3):
        await asyncio.sleep(0.01)
        await deliveries.run_job(dispatcher, event_id)

    assert calls.attempts == [1, 2, 3]
    assert {ctx.idempotency_key for ctx in calls.contexts} == {idempotency_key(event_id, "fulfil")}


async def test_a_job_for_an_event_missing_from_the_store_does_nothing(
    deliveries: Deliveries,
) -> None:
    calls = Calls()

    dispatcher = deliveries.dispatcher(router_with(("fulfil", calls.recording())))

    settled = await dispatcher.process(
        "evt_purged", COMPLETED, job_id=keys.job_id_for_event("evt_purged")
    )

    assert not settled, "the job is the caller's to remove"
    assert calls.attempts == []


async def test_a_redelivered_job_of_an_event_that_already_finished_runs_nothing(
    deliveries: Deliveries,
) -> None:
    calls = Calls()
    event_id = await deliveries.record()
    dispatcher = deliveries.dispatcher(router_with(("fulfil", calls.recording())))
    await deliveries.run_job(dispatcher, event_id)

    job_id = await deliveries.claim_job(event_id)
    settled = await dispatcher.process(event_id, COMPLETED, job_id=job_id)

    assert not settled, "the job is the caller's to remove"
    assert calls.attempts == [1]


async def test_a_finished_event_removes_its_job_in_the_same_write_when_settling(
    deliveries: Deliveries,
) -> None:
    router = Router()
    router.on(COMPLETED, name="fulfil")(Calls().recording())
    dispatcher = deliveries.dispatcher(router)
    event_id = await deliveries.record()
    job_id = await deliveries.claim_job(event_id)

    assert await dispatcher.process(event_id, COMPLETED, job_id=job_id)

    assert await deliveries.status(event_id) == EventStatus.DONE
    assert await deliveries.redis.zscore(QUEUE, job_id) is None
    for key in (
        keys.arq_job_key(job_id),
        keys.arq_in_progress_key(job_id),
        keys.arq_retry_key(job_id),
    ):
        assert not await deliveries.redis.exists(key), key


async def test_a_retry_reschedules_the_job_at_the_due_time_when_settling(
    deliveries: Deliveries,
) -> None:
    router = Router()
    router.on(COMPLETED, name="flaky")(Calls().recording(fail))
    dispatcher = deliveries.dispatcher(router)
    event_id = await deliveries.record()
    job_id = await deliveries.claim_job(event_id)

    assert await dispatcher.process(event_id, COMPLETED, job_id=job_id)

    state = await deliveries.state(event_id, "flaky")
    assert state.status == HandlerStatus.RETRY
    assert await deliveries.redis.zscore(QUEUE, job_id) == state.next_attempt_at
    assert await deliveries.redis.exists(keys.arq_job_key(job_id))
    assert not await deliveries.redis.exists(keys.arq_in_progress_key(job_id))


async def test_a_handler_raising_cancelled_error_itself_fails_its_attempt_and_is_not_refunded(
    deliveries: Deliveries,
) -> None:
    async def cancels_itself(event: Event, ctx: HandlerContext) -> None:
        raise asyncio.CancelledError

    event_id = await deliveries.record()
    dispatcher = deliveries.dispatcher(router_with(("stray", cancels_itself)), max_attempts=1)

    assert await deliveries.run_job(dispatcher, event_id) is None

    letter = await deliveries.dead_letter(event_id, "stray")
    assert (letter.reason, letter.attempts) == ("max_attempts", 1)
    assert "CancelledError" in letter.error_message


async def test_a_job_cancelled_at_its_time_limit_counts_the_attempt_and_reschedules_the_job(
    deliveries: Deliveries,
) -> None:
    started = asyncio.Event()

    async def slow(event: Event, ctx: HandlerContext) -> None:
        started.set()
        await asyncio.sleep(60)

    dispatcher = deliveries.dispatcher(router_with(("slow", slow)), shutting_down=False)
    event_id = await deliveries.record()
    job_id = await deliveries.claim_job(event_id)
    job = asyncio.create_task(dispatcher.process(event_id, COMPLETED, job_id=job_id))
    await started.wait()

    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job

    state = await deliveries.state(event_id, "slow")
    assert (state.status, state.attempts) == (HandlerStatus.RETRY, 1)
    assert state.next_attempt_at is not None
    assert await deliveries.redis.zscore(QUEUE, job_id) == state.next_attempt_at


async def test_a_job_reaching_its_time_limit_surfaces_as_the_timeouts_own_error(
    deliveries: Deliveries,
) -> None:
    """The worker tells the job's time limit (attempts count, the job is settled) from a
    shutdown by asyncio.timeout's TimeoutError; on Python 3.11 only an exact CancelledError
    becomes one, so the dispatcher must not let its outcome-carrying subclass out."""

    async def slow(event: Event, ctx: HandlerContext) -> None:
        await asyncio.sleep(60)

    dispatcher = deliveries.dispatcher(router_with(("slow", slow)), shutting_down=False)
    event_id = await deliveries.record()
    job_id = await deliveries.claim_job(event_id)

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await dispatcher.process(event_id, COMPLETED, job_id=job_id)

    state = await deliveries.state(event_id, "slow")
    assert (state.status, state.attempts) == (HandlerStatus.RETRY, 1)


class ProcessLevel(BaseException):
    """A custom BaseException, outside the Exception hierarchy."""


@pytest.mark.parametrize(
    "error", [SystemExit(7), KeyboardInterrupt(), GeneratorExit(), ProcessLevel("boom")]
)
@pytest.mark.parametrize("is_async", [True, False])
async def test_a_handler_raising_a_base_exception_fails_one_attempt_and_its_neighbour_completes(
    deliveries: Deliveries, error: BaseException, is_async: bool
) -> None:
    async def raises_async(event: Event, ctx: HandlerContext) -> None:
        raise error

    def raises_sync(event: Event, ctx: HandlerContext) -> None:
        raise error

    calls = Calls()
    event_id = await deliveries.record()
    exits = raises_async if is_async else raises_sync
    dispatcher = deliveries.dispatcher(router_with(("exits", exits), ("fulfil", calls.recording())))

    assert await deliveries.run_job(dispatcher, event_id) is not None

    state = await deliveries.state(event_id, "exits")
    assert (state.status, state.attempts) == (HandlerStatus.RETRY, 1)
    assert state.last_error is not None and state.last_error.startswith(type(error).__name__)
    assert (await deliveries.state(event_id, "fulfil")).status == HandlerStatus.DONE
    assert calls.attempts == [1]


@pytest.mark.parametrize("other_handlers", [("fulfil_v2",), ()])
async def test_a_replayed_letter_of_a_handler_this_worker_lacks_is_dead_lettered_again_as_unknown(
    deliveries: Deliveries, other_handlers: tuple[str, ...]
) -> None:
    """Renamed or removed handler, or a rolling deploy: the replayed event must not be
    finished as done with its letter gone; with no handler at all for the type, it must not
    be finished as unhandled either."""
    event_id = await deliveries.record()
    old = deliveries.dispatcher(router_with(("fulfil", Calls().recording(fail))), max_attempts=1)
    await deliveries.run_job(old, event_id)
    letter = await deliveries.dead_letter(event_id, "fulfil")
    assert await replay_dead_letter(deliveries.redis, letter, queue_name=QUEUE, history_limit=10)
    others = Calls()
    renamed = deliveries.dispatcher(
        router_with(*((name, others.recording()) for name in other_handlers))
    )

    assert await deliveries.run_job(renamed, event_id) is None

    assert others.attempts == [1] * len(other_handlers)
    again = await deliveries.dead_letter(event_id, "fulfil")
    assert (again.reason, again.error_type, again.attempts) == (
        "unknown_handler",
        "UnknownHandler",
        0,
    )
    assert "no handler named 'fulfil'" in again.error_message
    assert again.raw == letter.raw
    assert (await deliveries.state(event_id, "fulfil")).status is HandlerStatus.DEAD
    assert await deliveries.status(event_id) is EventStatus.DEAD
    assert await deliveries.redis.hget(keys.DEAD_LETTER_REASON_COUNTS, "unknown_handler") == b"1"


async def test_a_retry_scheduled_for_a_handler_this_worker_lacks_is_dead_lettered_as_unknown(
    deliveries: Deliveries,
) -> None:
    """A rolling deploy: a worker of the old version scheduled a retry of a handler that the
    new version renamed; the new worker must not finish the event as done without it."""
    event_id = await deliveries.record()
    old = deliveries.dispatcher(router_with(("fulfil", Calls().recording(fail))), base_seconds=0)
    assert await deliveries.run_job(old, event_id) is not None
    renamed = deliveries.dispatcher(router_with(("fulfil_v2", Calls().recording())))

    assert await deliveries.run_job(renamed, event_id) is None

    letter = await deliveries.dead_letter(event_id, "fulfil")
    assert (letter.reason, letter.attempts) == ("unknown_handler", 1)
    assert (await deliveries.state(event_id, "fulfil_v2")).status is HandlerStatus.DONE
    assert await deliveries.status(event_id) is EventStatus.DEAD
