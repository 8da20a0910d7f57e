"""Flow control across real workers: pause and resume, concurrency and rate limits, retry now.

Two real ``loops-webhooks worker`` processes share one real Redis; handlers record when each
run starts and ends, and the operator's controls are the real CLI.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from loops_webhooks.workers import keys
from loops_webhooks.workers.admission import PAUSED_REFRESH_SECONDS
from loops_webhooks.workers.event_store import HandlerStatus
from tests.integration.test_observability import sample, scrape
from tests.integration.test_worker import bench
from tests.integration.worker_harness import Workbench
from tests.support.processes import clean_environment
from tests.support.waiting import eventually

__all__ = ["bench"]

pytestmark = pytest.mark.timeout(120)

LOOPS_WEBHOOKS = str(Path(sys.executable).parent / "loops-webhooks")
WORKERS = 2
PAUSE_REACHES_WORKERS_SECONDS = 2 * PAUSED_REFRESH_SECONDS
"""A worker reads the paused names every second: a pause applies to it within that."""

ERP_AND_AUDIT = """
@router.on("checkout.session.completed", name="erp")
async def erp(event, ctx):
    record(ctx, "erp")

@router.on("checkout.session.completed", name="audit")
async def audit(event, ctx):
    record(ctx, "audit")
"""


def cli(bench: Workbench, *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_environment(bench.settings())
    return subprocess.run(
        [LOOPS_WEBHOOKS, *args], env=env, capture_output=True, text=True, timeout=60
    )


async def handlers_registered(bench: Workbench, *names: str) -> None:
    async def registered() -> bool:
        live = await bench.redis.hkeys(keys.LIVE_HANDLERS)  # type: ignore[misc]
        return set(names) <= {name.decode() for name in live}

    await eventually(
        registered, within=20, what=f"workers registered {names}", details=bench.worker_output
    )


def busiest(starts: list[float], *, window: float) -> int:
    """The most starts within any ``window`` seconds."""
    return max(sum(1 for other in starts if start <= other < start + window) for start in starts)


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) spans open at one moment."""
    moments = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, change in moments:
        running += change
        most = max(most, running)
    return most


async def test_the_most_runs_of_a_concurrency_limited_handler_at_once_across_two_workers_is_its_limit(  # noqa: E501
    bench: Workbench,
) -> None:
    bench.write_handlers(
        """
        @router.on("checkout.session.completed", name="erp", concurrency=2)
        async def erp(event, ctx):
            started = time.time()
            await asyncio.sleep(0.3)
            record(ctx, "ran", started=started)
        """
    )
    for _ in range(WORKERS):
        bench.start_worker(worker_concurrency=10)
    events = [await bench.submit() for _ in range(12)]

    runs = await bench.wait_for_effect("ran", count=12, within=60)

    assert sorted(run.event_id for run in runs) == sorted(events)
    assert len({run.pid for run in runs}) == WORKERS
    assert most_at_once([(run.extra["started"], run.at) for run in runs]) == 2
    assert {run.attempt for run in runs} == {1}


async def test_starts_of_a_rate_limited_handler_stay_within_its_rate_across_two_workers(
    bench: Workbench,
) -> None:
    bench.write_handlers(
        """
        @router.on("checkout.session.completed", name="mailer", rate="4/s")
        async def mailer(event, ctx):
            record(ctx, "ran")
        """
    )
    for _ in range(WORKERS):
        bench.start_worker(worker_concurrency=10)
    events = [await bench.submit() for _ in range(16)]

    runs = await bench.wait_for_effect("ran", count=16, within=60)

    assert sorted(run.event_id for run in runs) == sorted(events)
    starts = sorted(run.at for run in runs)
    # A run starts a few ms after admission let it, so windows a little under the rate's
    # second are counted: a limiter letting 8 through per second fails them all the same.
    assert busiest(starts, window=0.9) <= 4
    assert busiest(starts, window=1.9) <= 8
    assert starts[-1] - starts[0] >= 2.5
    assert {run.attempt for run in runs} == {1}


async def test_a_paused_handler_waits_without_using_an_attempt_and_resume_runs_each_event_once(
    bench: Workbench,
) -> None:
    bench.write_handlers(ERP_AND_AUDIT)
    for _ in range(WORKERS):
        bench.start_worker()
    await handlers_registered(bench, "erp", "audit")
    paused = cli(bench, "handlers", "pause", "erp", "--reason", "ERP maintenance")
    assert paused.returncode == 0, paused.stderr
    await asyncio.sleep(PAUSE_REACHES_WORKERS_SECONDS)
    events = [await bench.submit() for _ in range(6)]

    await bench.wait_for_effect("audit", count=6)

    async def all_waiting() -> bool:
        return await bench.redis.zcard(keys.handler_waiting_key("erp")) == 6

    await eventually(all_waiting, within=15, what="6 events wait for erp")
    assert bench.effects("erp") == []
    for event_id in events:
        state = (await bench.event(event_id)).handlers.get("erp")
        assert state is None or (state.attempts == 0 and state.status != HandlerStatus.DEAD)
    listed = cli(bench, "handlers", "--json")
    erp = next(h for h in orjson.loads(listed.stdout)["handlers"] if h["name"] == "erp")
    assert erp["paused"]["reason"] == "ERP maintenance"
    assert erp["paused"]["by"] == "cli"
    assert erp["waiting"] == 6
    assert "PAUSED since" in cli(bench, "handlers").stdout

    resumed = cli(bench, "handlers", "resume", "erp")
    assert resumed.returncode == 0, resumed.stderr
    runs = await bench.wait_for_effect("erp", count=6)
    for event_id in events:
        await bench.wait_for_status(event_id, "done")

    assert sorted(run.event_id for run in runs) == sorted(events)
    assert {run.attempt for run in runs} == {1}
    assert len(bench.effects("audit")) == 6
    assert await bench.redis.zcard(keys.handler_waiting_key("erp")) == 0


async def test_a_pause_holds_for_a_worker_started_after_it_from_its_first_event(
    bench: Workbench,
) -> None:
    bench.write_handlers(ERP_AND_AUDIT)
    first = bench.start_worker()
    await handlers_registered(bench, "erp")
    assert cli(bench, "handlers", "pause", "erp").returncode == 0
    first.stop()
    bench.start_worker()
    event_id = await bench.submit()

    await bench.wait_for_effect("audit")
    await asyncio.sleep(PAUSE_REACHES_WORKERS_SECONDS)

    assert bench.effects("erp") == []
    state = (await bench.event(event_id)).handlers.get("erp")
    assert state is None or state.attempts == 0


async def test_pausing_a_name_no_running_worker_has_exits_2_unless_forced(
    bench: Workbench,
) -> None:
    bench.write_handlers(
        """
        @router.on("checkout.session.completed", name="erp")
        async def erp(event, ctx):
            record(ctx, "erp")
        """
    )
    bench.start_worker()
    await handlers_registered(bench, "erp")

    refused = cli(bench, "handlers", "pause", "epr")
    forced = cli(bench, "handlers", "pause", "epr", "--force")

    assert refused.returncode == 2
    assert "no running worker has a handler named 'epr'" in refused.stderr
    assert forced.returncode == 0, forced.stderr
    assert await bench.redis.hexists(keys.PAUSED_HANDLERS, "epr")  # type: ignore[misc]


async def test_retry_now_runs_a_retry_scheduled_an_hour_ahead(bench: Workbench) -> None:
    bench.write_handlers(
        """
        @router.on("checkout.session.completed", name="erp")
        async def erp(event, ctx):
            record(ctx, "erp")
            if ctx.attempt == 1:
                raise RetryLater(3600, "ERP says come back in an hour")
        """
    )
    bench.start_worker()
    event_id = await bench.submit()
    await bench.wait_for_effect("erp")

    async def scheduled() -> bool:
        state = (await bench.event(event_id)).handlers.get("erp")
        return state is not None and state.status == HandlerStatus.RETRY

    await eventually(scheduled, within=15, what="a retry is scheduled")

    retried = cli(bench, "events", "retry-now", event_id)

    assert retried.returncode == 0, retried.stderr
    runs = await bench.wait_for_effect("erp", count=2, within=15)
    assert [run.attempt for run in runs] == [1, 2]
    await bench.wait_for_status(event_id, "done")
    nothing_left = cli(bench, "events", "retry-now", event_id)
    assert nothing_left.returncode == 1
    assert "has no retry scheduled" in nothing_left.stderr


async def test_the_worker_metrics_say_which_handler_is_paused_and_how_many_events_wait(
    bench: Workbench, free_port: Callable[[], int]
) -> None:
    bench.write_handlers(ERP_AND_AUDIT)
    metrics_port = free_port()
    bench.start_worker(metrics_port=metrics_port)
    await handlers_registered(bench, "erp")
    assert cli(bench, "handlers", "pause", "erp").returncode == 0
    await asyncio.sleep(PAUSE_REACHES_WORKERS_SECONDS)
    for _ in range(3):
        await bench.submit()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    text = ""

    async def reported() -> bool:
        nonlocal text
        text = await scrape(metrics_url)
        return sample(text, "loops_webhooks_handler_waiting_events", handler="erp") == 3

    await eventually(reported, within=30, what="3 events waiting for erp", details=lambda: text)

    assert sample(text, "loops_webhooks_handler_paused", handler="erp") == 1
    assert sample(text, "loops_webhooks_handler_paused", handler="audit") == 0
    assert sample(text, "loops_webhooks_handler_waiting_events", handler="audit") == 0
