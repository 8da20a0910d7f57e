"""Exactly once under SIGKILL: a shipment that is not idempotent by itself, made through
``loops_webhooks.effects`` in a real PostgreSQL and in SQLite, while the workers running it
are killed again and again mid-handler, ends with one shipment per (event, handler)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import orjson
import psycopg
import pytest
from redis.asyncio import Redis

from loops_webhooks.effects import create_table
from loops_webhooks.workers import keys
from tests.faults.fault_harness import Harness, LoopsClient, event_plan
from tests.support.loops_sender import LoopsSender
from tests.support.postgres import PostgresServer, running_postgres

pytestmark = pytest.mark.timeout(240)

EFFECT_HANDLERS = Path(__file__).with_name("effect_handlers.py")
HANDLERS = ("ship_postgres", "ship_sqlite")
EVENTS = 2000
RATE = 100
KILL_EVERY_SECONDS = 1.5
SHIPMENTS = "CREATE TABLE shipments (event_id text NOT NULL, handler text NOT NULL)"
RUNS = "CREATE TABLE runs (event_id text NOT NULL, handler text NOT NULL, stage text NOT NULL)"
SHIPPED_PER_PAIR = "SELECT event_id, handler, count(*) FROM shipments GROUP BY event_id, handler"


@dataclass(frozen=True, slots=True)
class ShopDatabases:
    postgres: PostgresServer
    postgres_database: str
    sqlite_path: Path

    def shipped_per_pair(self) -> Counter[tuple[str, str]]:
        with psycopg.connect(self.postgres.conninfo(self.postgres_database)) as conn:
            rows = list(conn.execute(SHIPPED_PER_PAIR))
        with closing(sqlite3.connect(self.sqlite_path)) as conn:
            rows += list(conn.execute(SHIPPED_PER_PAIR))
        return Counter({(event_id, handler): count for event_id, handler, count in rows})

    def runs_per_stage(self) -> Counter[str]:
        with psycopg.connect(self.postgres.conninfo(self.postgres_database)) as conn:
            rows = conn.execute("SELECT stage, count(*) FROM runs GROUP BY stage").fetchall()
        return Counter(dict(rows))


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def databases(postgres: PostgresServer, tmp_path: Path) -> ShopDatabases:
    """The shop's two databases: the effects table and shipments (no unique constraint);
    the runs log in PostgreSQL."""
    name = postgres.create_database(f"shop_{uuid.uuid4().hex[:12]}")
    with psycopg.connect(postgres.conninfo(name)) as conn:
        create_table(conn)
        conn.execute(SHIPMENTS)
        conn.execute(RUNS)
    sqlite_path = tmp_path / "shop.sqlite3"
    with closing(sqlite3.connect(sqlite_path)) as conn, conn:
        conn.execute("PRAGMA journal_mode=WAL")  # readers do not wait on the writer
        create_table(conn)
        conn.execute(SHIPMENTS)
    return ShopDatabases(postgres, name, sqlite_path)


@pytest.fixture
async def harness(
    tmp_path: Path, loops: LoopsSender, databases: ShopDatabases
) -> AsyncIterator[Harness]:
    world = Harness(
        tmp_path,
        loops,
        # The kills, not the handlers, fail these attempts: enough of them that no pair is
        # dead-lettered for having been in flight at too many kills.
        settings={"max_attempts": "50"},
        handlers=EFFECT_HANDLERS,
        handlers_env={
            "EFFECTS_POSTGRES_HOST": databases.postgres.host,
            "EFFECTS_POSTGRES_DATABASE": databases.postgres_database,
            "EFFECTS_SQLITE_PATH": str(databases.sqlite_path),
        },
    )
    try:
        await world.start()
        yield world
    finally:
        await world.stop()


async def kill_workers_until(harness: Harness, done: asyncio.Task[None]) -> None:
    """SIGKILL the two workers in turn every ``KILL_EVERY_SECONDS`` until ``done`` ends."""
    kill = 0
    while not (await asyncio.wait({done}, timeout=KILL_EVERY_SECONDS))[0]:
        harness.kill_worker(kill % 2)
        kill += 1


async def handler_states(harness: Harness, event_ids: list[str]) -> Counter[str]:
    """How each (event, handler) pair ended in the event store: "done", "dead", ..."""
    async with Redis.from_url(harness.store_url()) as store, store.pipeline() as pipe:
        for event_id in event_ids:
            pipe.hgetall(keys.event_key(event_id))
        records = await pipe.execute()
    states: Counter[str] = Counter()
    for record in records:
        for handler in HANDLERS:
            raw = record.get(f"handler:{handler}".encode())
            states[orjson.loads(raw)["status"] if raw else "never run"] += 1
    return states


async def test_workers_sigkilled_mid_handler_leave_exactly_one_shipment_per_event_and_handler(
    harness: Harness, client: LoopsClient, databases: ShopDatabases
) -> None:
    plan = event_plan(harness.sender, "ship", EVENTS)
    stream = asyncio.create_task(client.stream(plan, rate=RATE))
    await kill_workers_until(harness, stream)
    await stream
    await harness.settle(within=90)

    acknowledged = sorted(client.acknowledged)
    states = await handler_states(harness, acknowledged)
    shipped = databases.shipped_per_pair()
    runs = databases.runs_per_stage()
    assert harness.supervisor is not None
    summary = (
        f"[faults] effects: {harness.seconds:.1f}s | {len(acknowledged)} of {client.sent} "
        f"events acknowledged | handler states {dict(states)} | worker kills "
        f"{harness.supervisor.kills} | runs {dict(runs)} | shipments {sum(shipped.values())}"
    )
    print(summary)

    assert len(acknowledged) == client.sent == EVENTS, summary
    assert states == Counter({"done": EVENTS * len(HANDLERS)}), summary
    expected = Counter({(e, handler): 1 for e in acknowledged for handler in HANDLERS})
    doubled = {pair: count for pair, count in shipped.items() if count != 1}
    assert doubled == {}, summary
    assert shipped == expected, summary
    # The kills did hit handlers: runs cut short, and re-runs that found their key committed.
    assert harness.supervisor.kills >= 8, summary
    assert runs["started"] > runs["shipped"] + runs["found the key"], summary
    assert runs["found the key"] > 0, summary
