"""Exactly-once effects in the shop's own database: record a handler's idempotency key in the
same transaction as the effect, so a re-run finds the key and skips the effect.

A handler runs at least once (a kill mid-handler, a timeout, a forced replay run it again),
so an effect that is not idempotent by itself is applied once only if the record that it was
applied commits with it. ``once`` inserts ``ctx.idempotency_key`` into the table
``loops_webhooks_effects`` inside the caller's open transaction and says whether this was the
first time; ``if once(conn, ctx): apply(conn)`` then commits the key and the effect together
or neither. A concurrent transaction inserting the same key waits on the primary key until
the first one ends (PostgreSQL; SQLite lets one writer at a time), then sees the conflict.

The drivers stay the shop's: nothing here imports one. A connection's driver is recognised by
its class among the modules already loaded, since whoever holds a connection has loaded its
driver. Also importable as ``loops_webhooks.effects``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loops_webhooks.handlers.context import HandlerContext

__all__ = [
    "CREATE_TABLE",
    "TABLE",
    "NotInTransaction",
    "create_table",
    "create_table_async",
    "once",
    "once_async",
]

TABLE = "loops_webhooks_effects"

CREATE_TABLE = f"""\
CREATE TABLE IF NOT EXISTS {TABLE} (
    idempotency_key text PRIMARY KEY,
    event_id text NOT NULL,
    handler text NOT NULL,
    recorded_at timestamp with time zone NOT NULL DEFAULT CURRENT_TIMESTAMP
)"""
"""The table's DDL, for PostgreSQL and SQLite alike (and for migration tools)."""

_INSERT = (
    f"INSERT INTO {TABLE} (idempotency_key, event_id, handler) VALUES ({{}}, {{}}, {{}}) "
    "ON CONFLICT (idempotency_key) DO NOTHING"
)


class NotInTransaction(RuntimeError):
    """The connection would commit the key on its own (autocommit, no transaction open): the
    key and the effect would not commit together, so a kill between them loses the effect."""


@dataclass(frozen=True, slots=True)
class _Driver:
    """A supported connection class, found by module and name among the loaded modules."""

    module: str
    name: str
    is_async: bool
    record: Callable[[Any, HandlerContext], Any]
    """Insert the key; return (or, async, resolve to) whether it was new."""
    execute: Callable[[Any, str], Any]

    @property
    def label(self) -> str:
        return f"{self.module}.{self.name}"

    def matches(self, conn: object) -> bool:
        loaded = sys.modules.get(self.module)
        cls = getattr(loaded, self.name, None)
        return isinstance(cls, type) and isinstance(conn, cls)


def _params(ctx: HandlerContext) -> tuple[str, str, str]:
    return ctx.idempotency_key, ctx.event_id, ctx.handler


def _not_in_transaction(driver: str, hint: str) -> NotInTransaction:
    return NotInTransaction(
        f"this {driver} connection is in autocommit mode with no transaction open, so the "
        f"key would commit without the effect; {hint}"
    )


def _sqlite3_record(conn: Any, ctx: HandlerContext) -> bool:
    # Python 3.12+ has `autocommit` (-1: the legacy control, where isolation_level None
    # means autocommit); before it, isolation_level alone decides.
    autocommit = getattr(conn, "autocommit", -1)
    alone = autocommit is True or (autocommit == -1 and conn.isolation_level is None)
    if alone and not conn.in_transaction:
        raise _not_in_transaction("sqlite3", 'run conn.execute("BEGIN") first')
    cursor = conn.execute(_INSERT.format("?", "?", "?"), _params(ctx))
    return bool(cursor.rowcount == 1)


def _psycopg_check(conn: Any) -> None:
    idle = sys.modules["psycopg"].pq.TransactionStatus.IDLE
    if conn.autocommit and conn.info.transaction_status == idle:
        raise _not_in_transaction("psycopg", "open one with conn.transaction()")


def _psycopg_record(conn: Any, ctx: HandlerContext) -> bool:
    _psycopg_check(conn)
    cursor = conn.execute(_INSERT.format("%s", "%s", "%s"), _params(ctx))
    return bool(cursor.rowcount == 1)


async def _psycopg_record_async(conn: Any, ctx: HandlerContext) -> bool:
    _psycopg_check(conn)
    cursor = await conn.execute(_INSERT.format("%s", "%s", "%s"), _params(ctx))
    return bool(cursor.rowcount == 1)


def _sync_execute(conn: Any, statement: str) -> None:
    conn.execute(statement)


async def _async_execute(conn: Any, statement: str) -> None:
    await conn.execute(statement)


async def _asyncpg_record(conn: Any, ctx: HandlerContext) -> bool:
    if not conn.is_in_transaction():
        raise _not_in_transaction("asyncpg", "open one with `async with conn.transaction():`")
    status = await conn.execute(_INSERT.format("$1", "$2", "$3"), *_params(ctx))
    return bool(status == "INSERT 0 1")


def _sqlalchemy_statement(ctx: HandlerContext) -> tuple[Any, dict[str, str]]:
    """A Session or Connection always runs in a transaction (it begins one itself)."""
    statement = sys.modules["sqlalchemy"].text(
        _INSERT.format(":idempotency_key", ":event_id", ":handler")
    )
    return statement, {
        "idempotency_key": ctx.idempotency_key,
        "event_id": ctx.event_id,
        "handler": ctx.handler,
    }


def _sqlalchemy_record(conn: Any, ctx: HandlerContext) -> bool:
    result = conn.execute(*_sqlalchemy_statement(ctx))
    return bool(result.rowcount == 1)


async def _sqlalchemy_record_async(conn: Any, ctx: HandlerContext) -> bool:
    result = await conn.execute(*_sqlalchemy_statement(ctx))
    return bool(result.rowcount == 1)


def _sqlalchemy_execute(conn: Any, statement: str) -> None:
    conn.execute(sys.modules["sqlalchemy"].text(statement))


async def _sqlalchemy_execute_async(conn: Any, statement: str) -> None:
    await conn.execute(sys.modules["sqlalchemy"].text(statement))


_DRIVERS = (
    _Driver("sqlite3", "Connection", False, _sqlite3_record, _sync_execute),
    _Driver("psycopg", "Connection", False, _psycopg_record, _sync_execute),
    _Driver("sqlalchemy.orm", "Session", False, _sqlalchemy_record, _sqlalchemy_execute),
    _Driver("sqlalchemy.engine", "Connection", False, _sqlalchemy_record, _sqlalchemy_execute),
    _Driver("psycopg", "AsyncConnection", True, _psycopg_record_async, _async_execute),
    _Driver("asyncpg", "Connection", True, _asyncpg_record, _async_execute),
    _Driver("asyncpg.pool", "PoolConnectionProxy", True, _asyncpg_record, _async_execute),
    _Driver(
        "sqlalchemy.ext.asyncio",
        "AsyncSession",
        True,
        _sqlalchemy_record_async,
        _sqlalchemy_execute_async,
    ),
    _Driver(
        "sqlalchemy.ext.asyncio",
        "AsyncConnection",
        True,
        _sqlalchemy_record_async,
        _sqlalchemy_execute_async,
    ),
)


def _driver_for(conn: object, *, want_async: bool, function: str) -> _Driver:
    for driver in _DRIVERS:
        if not driver.matches(conn):
            continue
        if driver.is_async == want_async:
            return driver
        base = function.removesuffix("_async")
        other = f"await {base}_async()" if driver.is_async else f"{base}()"
        kind = "an asynchronous" if driver.is_async else "a synchronous"
        raise TypeError(f"{function}() got {kind} {driver.label}: use {other}")
    names = ", ".join(driver.label for driver in _DRIVERS if driver.is_async == want_async)
    raise TypeError(
        f"{function}() supports {names}; got {type(conn).__module__}.{type(conn).__qualname__}"
    )


def once(conn: object, ctx: HandlerContext) -> bool:
    """Record ``ctx.idempotency_key`` in the open transaction of ``conn``; True the first time,
    False when it is already recorded (committed by an earlier run of this handler for this
    event). Apply the effect only on True, on the same connection, and commit both together.

    ``conn``: a ``sqlite3.Connection``, a ``psycopg.Connection``, or a SQLAlchemy 2 ``Session``
    or ``Connection``. Raises ``TypeError`` for anything else (or an asynchronous one), and
    ``NotInTransaction`` where the insert would commit on its own.
    """
    driver = _driver_for(conn, want_async=False, function="once")
    return bool(driver.record(conn, ctx))


async def once_async(conn: object, ctx: HandlerContext) -> bool:
    """``once`` for an asynchronous connection: a ``psycopg.AsyncConnection``, an ``asyncpg``
    connection (or a pool's), or a SQLAlchemy 2 ``AsyncSession`` or ``AsyncConnection``."""
    driver = _driver_for(conn, want_async=True, function="once_async")
    return bool(await driver.record(conn, ctx))


def create_table(conn: object) -> None:
    """Run ``CREATE_TABLE`` (``IF NOT EXISTS``) on ``conn``; commit as you commit the rest."""
    _driver_for(conn, want_async=False, function="create_table").execute(conn, CREATE_TABLE)


async def create_table_async(conn: object) -> None:
    """``create_table`` for an asynchronous connection."""
    driver = _driver_for(conn, want_async=True, function="create_table_async")
    await driver.execute(conn, CREATE_TABLE)
