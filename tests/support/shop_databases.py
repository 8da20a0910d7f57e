"""A shop's database behind each driver ``loops_webhooks.effects`` supports, written the way
a shop writes it: one transaction that records the key with ``once`` and ships on True.

The effect, a row in ``shipments``, is not idempotent by itself (no unique constraint), so a
second application shows as a second row. Each class opens its own connections with its own
driver; the unit (SQLite) and integration (PostgreSQL) suites run ``DriverContract`` on each.
"""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from contextlib import closing
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from loops_webhooks import HandlerContext
from loops_webhooks.effects import create_table, create_table_async, once, once_async
from loops_webhooks.testing import make_context, make_event

__all__ = [
    "SHIPMENTS",
    "AsyncpgShop",
    "DriverContract",
    "EffectFailed",
    "PsycopgAsyncShop",
    "PsycopgShop",
    "ShopDatabase",
    "SqlAlchemyAsyncShop",
    "SqlAlchemyShop",
    "Sqlite3Shop",
    "context_for",
]

SHIPMENTS = "CREATE TABLE IF NOT EXISTS shipments (event_id text NOT NULL, handler text NOT NULL)"
"""The effect's table: no unique constraint, so only ``once`` keeps a shipment single."""

SHIP = "INSERT INTO shipments (event_id, handler) VALUES ({}, {})"
READ_SHIPMENTS = "SELECT event_id, handler FROM shipments ORDER BY event_id, handler"
READ_KEYS = (
    "SELECT idempotency_key, event_id, handler FROM loops_webhooks_effects ORDER BY idempotency_key"
)


class EffectFailed(Exception):
    """Raised inside the transaction after the effect, as a crash would end it: rollback."""


class ShopDatabase(ABC):
    """One driver's way to prepare the tables, ship once per key, and read back."""

    @abstractmethod
    async def prepare(self) -> None:
        """Create ``loops_webhooks_effects`` (with ``create_table``) and ``shipments``."""

    @abstractmethod
    async def ship(self, ctx: HandlerContext, *, fail: bool = False) -> bool:
        """One transaction: ``once``, the shipment only if it said True, commit (or, with
        ``fail``, raise ``EffectFailed`` after the shipment: rollback). Returns ``once``'s."""

    @abstractmethod
    async def rows(self, query: str) -> list[tuple[Any, ...]]:
        """The rows of ``query``, read on a connection of its own."""

    async def shipments(self) -> list[tuple[str, str]]:
        return [(row[0], row[1]) for row in await self.rows(READ_SHIPMENTS)]

    async def recorded(self) -> list[tuple[str, str, str]]:
        """The rows of ``loops_webhooks_effects``: (key, event id, handler)."""
        return [(row[0], row[1], row[2]) for row in await self.rows(READ_KEYS)]

    @abstractmethod
    async def close(self) -> None:
        """Release what the class holds (engines, pools)."""


def _fail_if(fail: bool) -> None:
    if fail:
        raise EffectFailed("crashed after the effect, before the commit")


class Sqlite3Shop(ShopDatabase):
    def __init__(self, path: Path) -> None:
        self.path = path

    async def prepare(self) -> None:
        with closing(sqlite3.connect(self.path)) as conn, conn:
            create_table(conn)
            conn.execute(SHIPMENTS)

    async def ship(self, ctx: HandlerContext, *, fail: bool = False) -> bool:
        # `with conn` commits, or rolls back on an exception; closing() closes.
        with closing(sqlite3.connect(self.path)) as conn, conn:
            first = once(conn, ctx)
            if first:
                conn.execute(SHIP.format("?", "?"), (ctx.event_id, ctx.handler))
            _fail_if(fail)
        return first

    async def rows(self, query: str) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.path)) as conn:
            return list(conn.execute(query))

    async def close(self) -> None:
        """Nothing held: each call opens and closes its own connection."""


class SqlAlchemyShop(ShopDatabase):
    """A SQLAlchemy 2 ``Session`` (``postgresql+psycopg://`` or ``sqlite://`` URLs)."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)

    async def prepare(self) -> None:
        with Session(self.engine) as session, session.begin():
            create_table(session)
            session.execute(text(SHIPMENTS))

    async def ship(self, ctx: HandlerContext, *, fail: bool = False) -> bool:
        with Session(self.engine) as session, session.begin():
            first = once(session, ctx)
            if first:
                session.execute(
                    text(SHIP.format(":e", ":h")), {"e": ctx.event_id, "h": ctx.handler}
                )
            _fail_if(fail)
        return first

    async def rows(self, query: str) -> list[tuple[Any, ...]]:
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(query))]

    async def close(self) -> None:
        self.engine.dispose()


class SqlAlchemyAsyncShop(ShopDatabase):
    """A SQLAlchemy 2 ``AsyncSession`` (``postgresql+asyncpg://``, ``sqlite+aiosqlite://``)."""

    def __init__(self, url: str) -> None:
        self.engine = create_async_engine(url)

    async def prepare(self) -> None:
        async with AsyncSession(self.engine) as session, session.begin():
            await create_table_async(session)
            await session.execute(text(SHIPMENTS))

    async def ship(self, ctx: HandlerContext, *, fail: bool = False) -> bool:
        async with AsyncSession(self.engine) as session, session.begin():
            first = await once_async(session, ctx)
            if first:
                await session.execute(
                    text(SHIP.format(":e", ":h")), {"e": ctx.event_id, "h": ctx.handler}
                )
            _fail_if(fail)
        return first

    async def rows(self, query: str) -> list[tuple[Any, ...]]:
        async with self.engine.connect() as conn:
            return [tuple(row) for row in await conn.execute(text(query))]

    async def close(self) -> None:
        await self.engine.dispose()


class PsycopgShop(ShopDatabase):
    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo

    async def prepare(self) -> None:
        with psycopg.connect(self.conninfo) as conn:
            create_table(conn)
            conn.execute(SHIPMENTS)

    async def ship(self, ctx: HandlerContext, *, fail: bool = False) -> bool:
        with psycopg.connect(self.conninfo) as conn:  # commits, or rolls back on an exception
            first = once(conn, ctx)
            if first:
                conn.execute(SHIP.format("%s", "%s"), (ctx.event_id, ctx.handler))
            _fail_if(fail)
        return first

    async def rows(self, query: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.conninfo) as conn:
            return list(conn.execute(query))

    async def close(self) -> None:
        """Nothing held: each call opens and closes its own connection."""


class PsycopgAsyncShop(ShopDatabase):
    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo

    async def prepare(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.conninfo) as conn:
            await create_table_async(conn)
            await conn.execute(SHIPMENTS)

    async def ship(self, ctx: HandlerContext, *, fail: bool = False) -> bool:
        async with await psycopg.AsyncConnection.connect(self.conninfo) as conn:
            first = await once_async(conn, ctx)
            if first:
                await conn.execute(SHIP.format("%s", "%s"), (ctx.event_id, ctx.handler))
            _fail_if(fail)
        return first

    async def rows(self, query: str) -> list[tuple[Any, ...]]:
        async with await psycopg.AsyncConnection.connect(self.conninfo) as conn:
            return list(await (await conn.execute(query)).fetchall())

    async def close(self) -> None:
        """Nothing held: each call opens and closes its own connection."""


class AsyncpgShop(ShopDatabase):
    """asyncpg through a pool, as a shop would run it (its connections are proxies)."""

    def __init__(self, host: str, database: str) -> None:
        self.host = host
        self.database = database
        self.pool: asyncpg.Pool | None = None

    async def _pool(self) -> asyncpg.Pool:
        if self.pool is None:
            self.pool = await asyncpg.create_pool(
                host=self.host, user="postgres", database=self.database, min_size=1, max_size=4
            )
        return self.pool

    async def prepare(self) -> None:
        async with (await self._pool()).acquire() as conn:
            await create_table_async(conn)
            await conn.execute(SHIPMENTS)

    async def ship(self, ctx: HandlerContext, *, fail: bool = False) -> bool:
        async with (await self._pool()).acquire() as conn, conn.transaction():
            first = await once_async(conn, ctx)
            if first:
                await conn.execute(SHIP.format("$1", "$2"), ctx.event_id, ctx.handler)
            _fail_if(fail)
        return first

    async def rows(self, query: str) -> list[tuple[Any, ...]]:
        async with (await self._pool()).acquire() as conn:
            return [tuple(record) for record in await conn.fetch(query)]

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()


def context_for(handler: str = "shop:fulfil", event_id: str = "evt_1") -> HandlerContext:
    """The context the worker passes ``handler`` for a completed checkout ``event_id``."""
    return make_context(make_event("checkout.session.completed", id=event_id), handler=handler)


class DriverContract:
    """What every supported driver must show. A suite subclasses it as ``Test...`` and gives a
    parametrized ``shop`` fixture; pytest then runs these tests once per driver there."""

    async def test_the_first_run_ships_and_every_rerun_finds_the_key_and_does_not(
        self, shop: ShopDatabase
    ) -> None:
        ctx = context_for()

        firsts = [await shop.ship(ctx) for _ in range(3)]

        seen = (firsts, await shop.shipments(), await shop.recorded())
        key = (ctx.idempotency_key, "evt_1", "shop:fulfil")
        assert seen == ([True, False, False], [("evt_1", "shop:fulfil")], [key]), seen

    async def test_a_run_that_rolls_back_records_no_key_so_the_next_run_ships(
        self, shop: ShopDatabase
    ) -> None:
        ctx = context_for()

        with pytest.raises(EffectFailed):
            await shop.ship(ctx, fail=True)
        rolled_back = (await shop.shipments(), await shop.recorded())
        assert rolled_back == ([], []), rolled_back

        next_run = (await shop.ship(ctx), await shop.shipments())
        assert next_run == (True, [("evt_1", "shop:fulfil")]), next_run

    async def test_each_event_and_handler_pair_has_its_own_key(self, shop: ShopDatabase) -> None:
        contexts = [context_for("shop:fulfil", "evt_1"), context_for("shop:audit", "evt_1")]
        contexts.append(context_for("shop:fulfil", "evt_2"))

        firsts = [await shop.ship(ctx) for ctx in contexts]

        seen = (firsts, len(await shop.shipments()))
        assert seen == ([True, True, True], 3), seen
