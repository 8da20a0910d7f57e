"""The handlers of the exactly-once fault test (copied into the test's directory): a shipment
that is NOT idempotent by itself, made once per (event, handler) by ``loops_webhooks.effects``.

``ship_postgres`` (async, an asyncpg pool) and ``ship_sqlite`` (plain def, sqlite3) each
insert a row into their database's ``shipments``, which has no unique constraint, in the
transaction where ``once`` records the key. Both pause inside the transaction (a kill there
rolls the key and the shipment back) and after the commit (a kill there re-runs a handler
whose effect is committed: ``once`` must say False). Every run is logged in PostgreSQL's
``runs``, outside the effect's transaction, when it starts and when its transaction
committed (with what ``once`` said), so the test sees that both kinds of re-run happened.

Environment: ``EFFECTS_POSTGRES_HOST``, ``EFFECTS_POSTGRES_DATABASE``, ``EFFECTS_SQLITE_PATH``.
"""

import asyncio
import os
import random
import sqlite3
import time
from contextlib import closing

import asyncpg
import psycopg

from loops_webhooks.effects import once, once_async
from loops_webhooks.handlers import HandlerContext, Router
from loops_webhooks.handlers.events import CheckoutSessionEvent

router = Router()
POSTGRES_HOST = os.environ["EFFECTS_POSTGRES_HOST"]
POSTGRES_DATABASE = os.environ["EFFECTS_POSTGRES_DATABASE"]
SQLITE_PATH = os.environ["EFFECTS_SQLITE_PATH"]
CONNINFO = f"host={POSTGRES_HOST} user=postgres dbname={POSTGRES_DATABASE}"

SHIP = "INSERT INTO shipments (event_id, handler) VALUES ({}, {})"
LOG_RUN = "INSERT INTO runs (event_id, handler, stage) VALUES ({}, {}, {})"

_pool = None


async def pool():
    global _pool
    if _pool is None:
        _pool = await asyncpg.create_pool(
            host=POSTGRES_HOST, user="postgres", database=POSTGRES_DATABASE, max_size=10
        )
    return _pool


def stage(first):
    return "shipped" if first else "found the key"


@router.on("checkout.session.completed", name="ship_postgres")
async def ship_postgres(event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
    async with (await pool()).acquire() as conn:
        await conn.execute(LOG_RUN.format("$1", "$2", "$3"), ctx.event_id, ctx.handler, "started")
        async with conn.transaction():
            first = await once_async(conn, ctx)
            if first:
                await conn.execute(SHIP.format("$1", "$2"), ctx.event_id, ctx.handler)
            await asyncio.sleep(random.uniform(0, 0.05))  # a kill now: all rolled back
        await conn.execute(
            LOG_RUN.format("$1", "$2", "$3"), ctx.event_id, ctx.handler, stage(first)
        )
    await asyncio.sleep(random.uniform(0, 0.05))  # committed, done not yet recorded


@router.on("checkout.session.completed", name="ship_sqlite")
def ship_sqlite(event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
    log_values = (ctx.event_id, ctx.handler)
    with psycopg.connect(CONNINFO, autocommit=True) as log:
        log.execute(LOG_RUN.format("%s", "%s", "%s"), (*log_values, "started"))
        with closing(sqlite3.connect(SQLITE_PATH, timeout=60)) as conn, conn:
            first = once(conn, ctx)
            if first:
                conn.execute(SHIP.format("?", "?"), (ctx.event_id, ctx.handler))
            # a kill now: all rolled back (short: SQLite has one writer at a time)
            time.sleep(random.uniform(0, 0.005))
        log.execute(LOG_RUN.format("%s", "%s", "%s"), (*log_values, stage(first)))
    time.sleep(random.uniform(0, 0.05))  # committed, done not yet recorded
