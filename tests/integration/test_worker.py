"""Real ``loops-webhooks worker`` processes against a real Redis, running real handler modules.

Events enter the way they do in production: through ``EventIntake.submit`` (the receiver's
producer API) or through the receiver itself. Faults are real too: workers are SIGKILLed,
SIGTERMed, or killed by their own handler, and restarted as a supervisor would.
"""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from loops_webhooks.handlers.context import idempotency_key
from loops_webhooks.ingest.app import create_app
from loops_webhooks.settings import Settings
from loops_webhooks.workers import keys
from loops_webhooks.workers.replay import ReplayResult, replay_dead_letter
from loops_webhooks.workers.runner import IN_PROGRESS_MARGIN_SECONDS, JOB_MARGIN_SECONDS
from tests.integration.worker_harness import HANDLERS_MODULE, QUEUE, Workbench
from tests.support.waiting import eventually

COMPLETED = "checkout.session.completed"
EXPIRED = "checkout.session.expired"


@pytest.fixture
async def bench(tmp_path, redis: Redis, redis_url: str, start_loops_webhooks, loops) -> Workbench:
    return Workbench(tmp_path, redis, redis_url, start_loops_webhooks, loops)


def takeover_after(handler_timeout: float) -> float:
    """How long after a worker dies mid-job another worker may take the job over."""
    return handler_timeout + JOB_MARGIN_SECONDS + IN_PROGRESS_MARGIN_SECONDS


def scheduled_retries(output: str, event_id: str) -> list[dict[str, Any]]:
    """The worker's canonical "handler will be retried" log lines for ``event_id``."""
    lines = []
    for line in output.splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("event") == "handler will be retried" and entry.get("event_id") == event_id:
            lines.append(entry)
    return lines


async def test_a_handler_failing_twice_then_succeeding_runs_three_times_within_its_backoff(
    bench: Workbench,
) -> None:
    bench.write_handlers(
        """
        @router.on("checkout.session.completed", name="fulfil")
        async def fulfil(event, ctx):
            record(ctx, "started")
            if ctx.attempt < 3:
                record(ctx, "failed")
                raise ConnectionError("payment API unreachable")
            record(ctx, "fulfilled")
        """
    )
    base = 0.3
    worker = bench.start_worker(retry_base_seconds=base)
    event_id = await bench.submit()

    await bench.wait_for_status(event_id, "done")

    started, failed = bench.effects("started"), bench.effects("failed")
    assert [effect.attempt for effect in started] == [1, 2, 3]
    assert len(bench.effects("fulfilled")) == 1
    retries = scheduled_retries(worker.output(), event_id)
    assert [entry["attempt"] for entry in retries] == [1, 2]
    for number, (entry, failure, next_start) in enumerate(
        zip(retries, failed, started[1:], strict=True), start=1
    ):
        ceiling = base * 2 ** (number - 1)
        assert 0 <= entry["retry_in_s"] <= ceiling
        waited = next_start.at - failure.at
        assert entry["retry_in_s"] - 0.005 <= waited <= entry["retry_in_s"] + 0.5


async def test_the_idempotency_key_is_the_same_on_every_retry_of_one_event_and_handler(
    bench: Workbench,
) -> None:
    bench.write_handlers(
        """
        @router.on("checkout.session.completed", name="fulfil")
        async def fulfil(event, ctx):
            record(ctx, "started")
            if ctx.attempt < 3:
                raise ConnectionError("payment API unreachable")
        """
    )
    bench.start_worker(retry_base_seconds=0.05)
    event_id = await bench.submit()

    await bench.wait_for_status(event_id, "done")

    keys_seen = {effect.idempotency_key for effect in bench.effects("started")}
    assert len(bench.effects("started")) == 3
    assert keys_seen == {idempotency_key(event_id, "fulfil")}


async def test_a_permanently_failing_handler_is_dead_lettered_with_its_traceback_while_the_other_handler_ran_once(  # noqa: E501
    bench: Workbench,
) -> None:
    bench.write_handlers(
        """
        @router.on("checkout.session.completed", name="fulfil")
        async def fulfil(event, ctx):
            record(ctx, "fulfilled")


        @router.on("checkout.session.completed", name="sync_crm")
        async def sync_crm(event, ctx):
            record(ctx, "started")
            crm_answer = {}
            crm_answer["customer"]
        """
    )
    bench.start_worker(max_attempts=3, retry_base_seconds=0.05)
    event_id = await bench.submit()

    await bench.wait_for_status(event_id, "dead")

    letter = await bench.dead_letter(event_id, "sync_crm")
    assert letter is not None
    assert (letter.reason, letter.attempts, letter.error_type) == ("max_attempts", 3, "KeyError")
    assert 'crm_answer["customer"]' in letter.traceback
    assert "shop_handlers.py" in letter.traceback
    assert letter.raw == (await bench.event(event_id)).raw
    assert len(bench.effects("started", handler="sync_crm")) == 3
    assert len(bench.effects("fulfilled", handler="fulfil")) == 1
    assert await bench.dead_letter(event_id, "fulfil") is None


async def test_reject_dead_letters_the_event_at_once_without_retrying(bench: Workbench) -> None:
    bench.write_handlers(
        """
        @router.on("checkout.session.completed", name="fulfil")
        async def fulfil(event, ctx):
            record(ctx, "started")
            raise Reject("order order_456 was cancelled")
        """
    )
    bench.start_worker(max_attempts=8, retry_base_seconds=0.05)
    event_id = await bench.submit()

    await bench.wait_for_status(event_id, "dead")

    letter = await bench.dead_letter(event_id, "fulfil")
    assert letter is not None
    assert (letter.reason, letter.attempts) == ("rejected", 1)
    assert letter.error_message == "order order_456 was cancelled"
    assert "raise Reject" in letter.traceback
    assert len(bench.effects("started")) == 1


async def test_a_worker_killed_in_the_middle_of_a_handler_is_replaced_and_the_event_finishes(
    bench: Workbench,
) -> None:
    bench.write_handlers(
        """
        @router.on("checkout.session.completed", name="fulfil")
        async def fulfil(event, ctx):
            record(ctx, "started")
            if ctx.attempt == 1:
                await asyncio.sleep(60)
            record(ctx, "fulfilled")
        """
    )
    timeout = 1.0
    first = bench.start_worker(handler_timeout_seconds=timeout)
    event_id = await bench.submit()
    [started] = await bench.wait_for_effect("started")

    first.process.send_signal(signal.SIGKILL)
    first.process.wait(5)
    bench.start_worker(handler_timeout_seconds=timeout)

    await bench.wait_for_status(event_id, "done", within=takeover_after(timeout) + 10)
    assert [effect.attempt for effect in bench.effects("started")] == [1, 2]
    [fulfilled] = bench.effects("fulfilled")
    assert fulfilled.pid != started.pid
    assert (await bench.event(event_id)).handlers["fulfil"].attempts == 2


async def test_a_handler_that_kills_its_worker_every_time_is_dead_lettered_after_its_attempts_while_other_events_are_served(  # noqa: E501
    bench: Workbench,
) -> None:
    bench.write_handlers(
        """
        @router.on("checkout.session.completed", name="doomed", max_attempts=2)
        async def doomed(event, ctx):
            record(ctx, "started")
            os._exit(1)


        @router.on("checkout.session.expired", name="release")
        async def release(event, ctx):
            record(ctx, "released")
        """
    )
    timeout = 0.5
    supervisor = bench.supervised_worker(handler_timeout_seconds=timeout)
    doomed_id = await bench.submit(COMPLETED)

    async def crashed_once() -> bool:
        return len(supervisor.exits) == 1

    await supervisor.until(crashed_once, within=10, what="the first crash")
    others = [await bench.submit(EXPIRED) for _ in range(5)]

    async def dead_lettered() -> bool:
        return await bench.dead_letter(doomed_id, "doomed") is not None

    await supervisor.until(
        dead_lettered, within=2 * takeover_after(timeout) + 10, what="doomed is dead-lettered"
    )

    letter = await bench.dead_letter(doomed_id, "doomed")
    assert letter is not None
    assert (letter.reason, letter.attempts) == ("max_attempts", 2)
    assert "the worker stopped during attempt 2" in letter.error_message
    assert len(bench.effects("started", handler="doomed")) == 2
    assert supervisor.exits == [1, 1]
    for event_id in others:
        assert (await bench.event(event_id)).status == "done"
    released = bench.effects("released")
    assert sorted(effect.event_id for effect in released) == sorted(others)
    assert max(effect.at for effect in released) < letter.dead_lettered_at / 1000
    assert supervisor.workers[0].process.poll() is None


async def test_an_event_recorded_but_never_enqueued_is_found_by_the_reconciler_and_handled(
    bench: Workbench, redis: Redis
) -> None:
    bench.write_handlers(
        """
        @router.on("checkout.session.completed", name="fulfil")
        async def fulfil(event, ctx):
            record(ctx, "fulfilled")
        """
    )
    event_id = await bench.submit()
    job_id = keys.job_id_for_event(event_id)
    await redis.delete(keys.arq_job_key(job_id))
    await redis.zrem(QUEUE, job_id)
    assert await redis.zscore(keys.PENDING_EVENTS, event_id) is not None

    bench.start_worker(reconcile_interval_seconds=0.5, reconcile_grace_seconds=0)

    await bench.wait_for_status(event_id, "done")
    assert [effect.event_id for effect in bench.effects("fulfilled")] == [event_id]
    assert await redis.zscore(keys.PENDING_EVENTS, event_id) is None


async def test_sigterm_with_a_long_grace_period_lets_a_slow_handler_finish_and_records_it_done(
    bench: Workbench,
) -> None:
    bench.write_handlers(
        """
        @router.on("checkout.session.completed", name="fulfil")
        async def fulfil(event, ctx):
            record(ctx, "started")
            await asyncio.sleep(1.5)
            record(ctx, "fulfilled")
        """
    )
    worker = bench.start_worker(shutdown_grace_seconds=20, handler_timeout_seconds=10)
    event_id = await bench.submit()
    await bench.wait_for_effect("started")

    worker.process.send_signal(signal.SIGTERM)

    assert worker.wait(15) == 0
    stored = await bench.event(event_id)
    assert stored.status == "done"
    assert stored.handlers["fulfil"].attempts == 1
    assert len(bench.effects("started")) == len(bench.effects("fulfilled")) == 1


async def test_sigterm_with_a_short_grace_period_cancels_a_slow_handler_refunds_its_attempt_and_the_next_worker_runs_it(  # noqa: E501
    bench: Workbench,
) -> None:
    bench.write_handlers(
        """
        @router.on("checkout.session.completed", name="fulfil")
        async def fulfil(event, ctx):
            record(ctx, "started")
            if not os.path.exists(os.environ["EFFECTS_FILE"] + ".cancelled"):
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    open(os.environ["EFFECTS_FILE"] + ".cancelled", "w").close()
                    record(ctx, "cancelled")
                    raise
            record(ctx, "fulfilled")
        """
    )
    settings: dict[str, Any] = {"shutdown_grace_seconds": 0.5, "handler_timeout_seconds": 10}
    first = bench.start_worker(**settings)
    event_id = await bench.submit()
    await bench.wait_for_effect("started")

    first.process.send_signal(signal.SIGTERM)

    assert first.wait(15) == 0
    [cancelled] = bench.effects("cancelled")
    refunded = (await bench.event(event_id)).handlers["fulfil"]
    assert (refunded.status, refunded.attempts) == ("retry", 0)

    second = bench.start_worker(**settings)

    await bench.wait_for_status(event_id, "done")
    [fulfilled] = bench.effects("fulfilled")
    assert fulfilled.pid == second.process.pid != cancelled.pid
    assert [effect.attempt for effect in bench.effects("started")] == [1, 1]
    assert (await bench.event(event_id)).handlers["fulfil"].attempts == 1


async def test_an_event_posted_to_the_receiver_reaches_its_handler_parsed(
    bench: Workbench, loops, redis_url: str
) -> None:
    bench.write_handlers(
        """
        from loops_webhooks.handlers.events import CheckoutSessionEvent


        @router.on("checkout.session.completed", name="fulfil")
        async def fulfil(event: CheckoutSessionEvent, ctx):
            record(ctx, "fulfilled", order_id=event.data.metadata["orderId"])
        """
    )
    bench.start_worker()
    receiver = TestClient(
        TestServer(
            create_app(Settings(webhook_secret=loops.secret, metrics_port=0), redis_url),
            host="127.0.0.1",
        )
    )
    await receiver.start_server()
    try:
        body = loops.event("evt_via_receiver")
        response = await receiver.post("/webhooks/loops", data=body, headers=loops.headers(body))
        assert response.status == 200
    finally:
        await receiver.close()

    [fulfilled] = await bench.wait_for_effect("fulfilled")
    assert (fulfilled.event_id, fulfilled.extra["order_id"]) == ("evt_via_receiver", "order_456")
    await bench.wait_for_status("evt_via_receiver", "done")


async def test_workers_sharing_the_queue_run_each_handler_of_each_event_once(
    bench: Workbench,
) -> None:
    bench.write_handlers(
        """
        @router.on("checkout.session.*", name="fulfil")
        async def fulfil(event, ctx):
            record(ctx, "ran")
            await asyncio.sleep(0.01)


        @router.on("*", name="audit")
        def audit(event, ctx):
            record(ctx, "ran")
        """
    )
    bench.start_worker(worker_concurrency=5)
    bench.start_worker(worker_concurrency=5)
    event_ids = [await bench.submit() for _ in range(60)]

    async def all_done() -> bool:
        return await bench.redis.zcard(keys.PENDING_EVENTS) == 0

    await eventually(all_done, within=30, what="every event done", details=bench.worker_output)

    runs = sorted((effect.event_id, effect.handler) for effect in bench.effects("ran"))
    assert runs == sorted(
        (event_id, name) for event_id in event_ids for name in ("audit", "fulfil")
    )


async def test_a_letter_replayed_to_a_worker_without_its_handler_is_dead_lettered_again_as_unknown_handler(  # noqa: E501
    bench: Workbench,
) -> None:
    bench.write_handlers(
        """
        @router.on("checkout.session.completed", name="fulfil")
        async def fulfil(event, ctx):
            record(ctx, "rejected")
            raise Reject("warehouse closed")
        """
    )
    old = bench.start_worker()
    event_id = await bench.submit()
    await bench.wait_for_status(event_id, "dead")
    old.process.send_signal(signal.SIGTERM)
    assert old.wait(15) == 0
    bench.write_handlers(
        """
        @router.on("checkout.session.completed", name="fulfil_v2")
        async def fulfil_v2(event, ctx):
            record(ctx, "fulfilled")
        """
    )
    new = bench.start_worker()
    letter = await bench.dead_letter(event_id, "fulfil")
    assert letter is not None and letter.reason == "rejected"

    assert (
        await replay_dead_letter(bench.redis, letter, queue_name=QUEUE, history_limit=10)
        == ReplayResult.REPLAYED
    )

    await bench.wait_for_effect("fulfilled", handler="fulfil_v2")
    await bench.wait_for_status(event_id, "dead")
    again = await bench.dead_letter(event_id, "fulfil")
    assert again is not None, new.output()
    assert (again.reason, again.error_type) == ("unknown_handler", "UnknownHandler")
    assert "no handler named 'fulfil'" in again.error_message
    assert again.raw == letter.raw
    assert len(bench.effects("rejected")) == 1
    logged = [json.loads(line) for line in new.output().splitlines() if line.startswith("{")]
    assert any(
        entry.get("event") == "handler dead-lettered" and entry.get("reason") == "unknown_handler"
        for entry in logged
    ), new.output()


async def test_a_dead_letters_traceback_shows_the_line_that_ran_after_its_file_was_fixed(
    bench: Workbench,
) -> None:
    bench.write_handlers(
        """
        @router.on("checkout.session.completed", name="sync_crm")
        async def sync_crm(event, ctx):
            crm_answer = {}
            crm_answer["customer"]
        """
    )
    worker = bench.start_worker(max_attempts=1)

    async def started() -> bool:
        return "worker started" in worker.output()

    await eventually(started, within=15, what="the worker started", details=bench.worker_output)
    module_file = bench.directory / f"{HANDLERS_MODULE}.py"
    module_file.write_text(
        module_file.read_text().replace('crm_answer["customer"]', 'crm_answer.get("customer")')
    )
    event_id = await bench.submit()
    await bench.wait_for_status(event_id, "dead")

    letter = await bench.dead_letter(event_id, "sync_crm")
    assert letter is not None and letter.error_type == "KeyError"
    assert 'crm_answer["customer"]' in letter.traceback
    assert "crm_answer.get" not in letter.traceback
