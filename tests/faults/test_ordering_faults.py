"""Ordering per checkout session with two real workers: sessions of two or three events sent
out of ``created`` order and at once; a slow handler that records each run's start and end.
No two runs of one session overlap, the earliest-created of the events due together starts
first, ``superseded_by`` names exactly the later event already handled, and a session held by
a SIGKILLed worker comes back within the in-progress marker's lifetime."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from loops_webhooks.workers.admission import handler_flows, pause_handler, resume_handler
from loops_webhooks.workers.runner import IN_PROGRESS_MARGIN_SECONDS, JOB_MARGIN_SECONDS
from tests.faults.fault_harness import (
    COMPLETED,
    EXPIRED,
    FAILED,
    HANDLER_TIMEOUT_SECONDS,
    Harness,
    LoopsClient,
)
from tests.support.loops_sender import LoopsSender
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(150)

HANDLERS_FILE = Path(__file__).with_name("ordering_handlers.py")
HANDLER = "slow"
CREATED_AT = datetime(2025, 1, 15, 10, 30, tzinfo=UTC)
MARKER_LIFETIME_SECONDS = HANDLER_TIMEOUT_SECONDS + JOB_MARGIN_SECONDS + IN_PROGRESS_MARGIN_SECONDS
"""The workers' in-progress marker lifetime: the job's time limit and its margin."""

SESSION_TYPES = ([FAILED, COMPLETED], [FAILED, COMPLETED, EXPIRED])
"""A declined card then the next one; or that, and a late expiry."""


@dataclass(frozen=True, slots=True)
class Sent:
    event_id: str
    session: str
    created: int
    body: bytes


@dataclass(slots=True)
class Run:
    event_id: str
    attempt: int
    pid: int
    started: float
    superseded_by: str | None
    ended: float | None = None


def session_events(sender: LoopsSender, name: str, count: int, hold: float = 0.4) -> list[Sent]:
    """One session's events, created a second apart, in ``created`` order."""
    sent = []
    for index, event_type in enumerate(SESSION_TYPES[count - 2]):
        event_id = f"evt_{name}_{index}_{time.time_ns() % 10**9}"
        created = CREATED_AT + timedelta(seconds=index)
        body = orjson.dumps(
            {
                "id": event_id,
                "type": event_type,
                "created": created.isoformat().replace("+00:00", "Z"),
                "data": {
                    "id": f"cs_{name}",
                    "status": event_type.rsplit(".", 1)[1],
                    "metadata": {"holdSeconds": hold},
                },
            }
        )
        sent.append(Sent(event_id, f"cs_{name}", int(created.timestamp()), body))
    return sent


def out_of_order(events: list[Sent], turn: int) -> list[Sent]:
    """Never ``created`` order (for two or more): reversed, or the latest first."""
    if turn % 2:
        return events[::-1]
    return [events[-1], *events[:-1]]


async def start_harness(tmp_path: Path, sender: LoopsSender) -> Harness:
    shutil.copy(HANDLERS_FILE, tmp_path / HANDLERS_FILE.name)
    harness = Harness(tmp_path, sender, {"handlers": f"{HANDLERS_FILE.stem}:router"})
    await harness.start()
    return harness


async def deliver_all(client: LoopsClient, events: list[Sent]) -> dict[str, float]:
    """Send every event at once; when each was acknowledged (wall clock)."""
    acknowledged: dict[str, float] = {}

    async def deliver(sent: Sent) -> None:
        assert await client.deliver(sent.event_id, sent.body)
        acknowledged[sent.event_id] = time.time()

    await asyncio.gather(*(deliver(sent) for sent in events))
    return acknowledged


async def recorded_runs(harness: Harness) -> list[Run]:
    async with Redis.from_url(harness.effects_redis.url) as effects:
        entries = [orjson.loads(raw) for raw in await effects.lrange("runs", 0, -1)]
    runs: dict[tuple[str, int], Run] = {}
    for entry in entries:
        key = (entry["event_id"], entry["attempt"])
        if entry["phase"] == "start":
            runs[key] = Run(*key, entry["pid"], entry["at"], entry["superseded_by"])
        else:
            runs[key].ended = entry["at"]
    return sorted(runs.values(), key=lambda run: run.started)


async def all_started(harness: Harness, events: list[Sent]) -> None:
    wanted = {sent.event_id for sent in events}

    async def started() -> bool:
        return wanted <= {run.event_id for run in await recorded_runs(harness)}

    await eventually(started, within=30, what="the runs start", details=harness.describe)


async def all_ended(harness: Harness, events: list[Sent]) -> None:
    wanted = {sent.event_id for sent in events}

    async def ended() -> bool:
        harness.check_supervisor()
        done = {run.event_id for run in await recorded_runs(harness) if run.ended is not None}
        return wanted <= done

    await eventually(ended, within=60, what="every event handled", details=harness.describe)


def by_session(events: list[Sent], runs: list[Run]) -> dict[str, list[tuple[Sent, Run]]]:
    sent = {event.event_id: event for event in events}
    grouped: dict[str, list[tuple[Sent, Run]]] = defaultdict(list)
    for run in runs:
        grouped[sent[run.event_id].session].append((sent[run.event_id], run))
    return grouped


def assert_one_at_a_time(session: str, runs: list[tuple[Sent, Run]]) -> None:
    for (before, first), (after, second) in itertools.pairwise(runs):
        assert first.ended is not None and first.ended <= second.started, (
            f"{session}: {after.event_id} started while {before.event_id} ran"
        )


def assert_superseded_exactly(session: str, runs: list[tuple[Sent, Run]]) -> None:
    """A run's ``superseded_by``: the latest-created event of its session, created after
    it, whose run had ended (and so was recorded done) before it started."""
    for sent, run in runs:
        finished_later = [
            other
            for other, earlier_run in runs
            if other.created > sent.created
            and earlier_run.ended is not None
            and earlier_run.ended <= run.started
        ]
        expected = max(finished_later, key=lambda other: other.created, default=None)
        assert run.superseded_by == (expected.event_id if expected else None), (
            f"{session}: {sent.event_id} got superseded_by={run.superseded_by}"
        )


def assert_earliest_due_first(
    session: str, runs: list[tuple[Sent, Run]], acknowledged: dict[str, float]
) -> None:
    """After each run, the next to start is the earliest-created of the events that had been
    acknowledged (so were stored and due) before that run ended and had not started yet."""
    for index in range(len(runs) - 1):
        ended = runs[index][1].ended
        assert ended is not None
        not_started = [sent for sent, _ in runs[index + 1 :]]
        due = [sent for sent in not_started if acknowledged[sent.event_id] < ended]
        chosen = runs[index + 1][0]
        assert all(chosen.created <= sent.created for sent in due), (
            f"{session}: {chosen.event_id} started before an earlier-created due event"
        )


async def test_a_sessions_events_run_one_at_a_time_earliest_created_first_on_two_workers(
    tmp_path: Path, loops: LoopsSender
) -> None:
    harness = await start_harness(tmp_path, loops)
    try:
        async with aiohttp.ClientSession() as http, Redis.from_url(harness.redis.url) as store:
            client = LoopsClient(http, harness.receiver_url, harness.sender)
            # Due together: sent while the handler is paused, all released by one resume.
            paused = [session_events(loops, f"paused{n}", 2 + n % 2) for n in range(4)]
            await pause_handler(store, HANDLER, reason="test", by="cli", force=True)
            sent_paused = [e for n, events in enumerate(paused) for e in out_of_order(events, n)]
            acknowledged = await deliver_all(client, sent_paused)

            async def all_held() -> bool:
                flows = await handler_flows(store, [HANDLER])
                return flows[HANDLER].waiting == len(sent_paused)

            await eventually(all_held, within=30, what="every paused run waits")
            await resume_handler(store, HANDLER, queue_name="loops:queue")
            # The latest-created first; the rest, out of order, at once while it runs.
            busy = [session_events(loops, f"busy{n}", 2 + n % 2) for n in range(6)]
            latest = [events[-1] for events in busy]
            acknowledged |= await deliver_all(client, latest)
            await all_started(harness, latest)
            rest = [e for n, events in enumerate(busy) for e in out_of_order(events[:-1], n)]
            acknowledged |= await deliver_all(client, rest)
            everything = sent_paused + latest + rest
            await all_ended(harness, everything)
            runs = await recorded_runs(harness)
    finally:
        await harness.stop()

    sessions = by_session(everything, runs)
    assert len(runs) == len(everything), "an event ran more than once"
    assert len({run.pid for run in runs}) == 2, "both workers ran events"
    for session, session_runs in sessions.items():
        assert_one_at_a_time(session, session_runs)
        assert_superseded_exactly(session, session_runs)
        assert_earliest_due_first(session, session_runs, acknowledged)
    for events in paused:
        order = [sent.event_id for sent, _ in sessions[events[0].session]]
        assert order == [sent.event_id for sent in events], "due together: created order"
    superseded = sum(run.superseded_by is not None for run in runs)
    assert superseded == sum(len(events) - 1 for events in busy)
    print(f"[faults] ordering: {len(runs)} runs, {len(sessions)} sessions, {superseded} superseded")


async def test_a_session_held_by_a_sigkilled_worker_comes_back_within_the_marker_lifetime(
    tmp_path: Path, loops: LoopsSender
) -> None:
    harness = await start_harness(tmp_path, loops)
    assert harness.supervisor is not None
    workers = harness.supervisor.workers
    try:
        async with aiohttp.ClientSession() as http:
            client = LoopsClient(http, harness.receiver_url, harness.sender)
            first, later = session_events(loops, "killed", 2, hold=1.5)
            await deliver_all(client, [first])
            await all_started(harness, [first])
            await deliver_all(client, [later])
            holder = (await recorded_runs(harness))[0].pid
            [slot] = [n for n, w in enumerate(workers) if w.process and w.process.pid == holder]
            harness.kill_worker(slot)
            killed_at = time.time()
            await all_ended(harness, [first, later])
            runs = await recorded_runs(harness)
    finally:
        await harness.stop()

    killed_run, rerun, later_run = runs
    assert (killed_run.event_id, killed_run.ended) == (first.event_id, None)
    assert (rerun.event_id, rerun.attempt) == (first.event_id, 2)
    assert later_run.event_id == later.event_id
    assert rerun.ended is not None and rerun.ended <= later_run.started
    assert later_run.started - killed_at < MARKER_LIFETIME_SECONDS + 1.5 + 5.0
    assert (rerun.superseded_by, later_run.superseded_by) == (None, None)
