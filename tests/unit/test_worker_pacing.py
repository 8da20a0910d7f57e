"""The worker's pacing between polls: a full worker polls again as soon as a batch of its slots
has freed, a worker with room waits its poll interval for new jobs to come due."""

from __future__ import annotations

import asyncio

from loops_webhooks.handlers.examples import router
from loops_webhooks.settings import Settings
from loops_webhooks.workers.runner import EventWorker, build_worker

AN_HOUR = 3600.0


async def worker_running(jobs: int, *, concurrency: int, poll_interval: float) -> EventWorker:
    """A worker (never connected) whose ``jobs`` slots are taken as ``start_jobs`` takes them."""
    settings = Settings(
        webhook_secret="whsec_x",
        worker_concurrency=concurrency,
        poll_interval_seconds=poll_interval,
    )
    worker = build_worker(settings, "redis://127.0.0.1:1", router)
    assert isinstance(worker, EventWorker)
    for _ in range(jobs):
        await worker.sem.acquire()
        worker.job_counter += 1
    return worker


async def settle() -> None:
    """Let every ready callback run (a woken waiter needs a few turns of the loop)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_full_worker_polls_again_once_a_quarter_of_its_slots_are_free() -> None:
    worker = await worker_running(8, concurrency=8, poll_interval=AN_HOUR)
    waiting = asyncio.create_task(worker._until_next_poll())
    await settle()

    worker._release_sem_dec_counter_on_complete()  # one job of eight ends: 1 free
    await settle()
    assert not waiting.done()

    worker._release_sem_dec_counter_on_complete()  # 2 free: a quarter
    await settle()
    assert waiting.done()


async def test_a_worker_with_room_waits_its_poll_interval_however_many_jobs_end() -> None:
    worker = await worker_running(7, concurrency=8, poll_interval=AN_HOUR)
    waiting = asyncio.create_task(worker._until_next_poll())
    for _ in range(7):
        worker._release_sem_dec_counter_on_complete()
    await settle()

    assert not waiting.done()
    waiting.cancel()


async def test_a_full_worker_whose_jobs_all_run_on_still_polls_after_its_interval() -> None:
    worker = await worker_running(4, concurrency=4, poll_interval=0.01)

    await asyncio.wait_for(worker._until_next_poll(), timeout=5)

    assert worker.job_counter == 4


async def test_a_worker_of_one_slot_polls_again_as_soon_as_its_job_ends() -> None:
    worker = await worker_running(1, concurrency=1, poll_interval=AN_HOUR)
    waiting = asyncio.create_task(worker._until_next_poll())
    await settle()

    worker._release_sem_dec_counter_on_complete()
    await settle()

    assert waiting.done()
