"""``loops_webhooks.effects`` on a real PostgreSQL server (started by the tests, see
``tests/support/postgres.py``) through each driver it supports; and two transactions racing
on one key, where exactly one gets True."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import psycopg
import pytest

from loops_webhooks.effects import NotInTransaction, create_table, once, once_async
from tests.support.postgres import PostgresServer, running_postgres
from tests.support.shop_databases import (
    AsyncpgShop,
    DriverContract,
    PsycopgAsyncShop,
    PsycopgShop,
    ShopDatabase,
    SqlAlchemyAsyncShop,
    SqlAlchemyShop,
    context_for,
)

RACERS = 8


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def database(postgres: PostgresServer) -> str:
    """A fresh database of the test's own, with the effects table."""
    name = postgres.create_database(f"shop_{uuid.uuid4().hex[:12]}")
    with psycopg.connect(postgres.conninfo(name)) as conn:
        create_table(conn)
    return name


@pytest.fixture(
    params=[
        "psycopg",
        "psycopg-async",
        "asyncpg-pool",
        "sqlalchemy-session-psycopg",
        "sqlalchemy-async-session-asyncpg",
    ]
)
async def shop(
    request: pytest.FixtureRequest, postgres: PostgresServer, database: str
) -> AsyncIterator[ShopDatabase]:
    shop_database: ShopDatabase = {
        "psycopg": lambda: PsycopgShop(postgres.conninfo(database)),
        "psycopg-async": lambda: PsycopgAsyncShop(postgres.conninfo(database)),
        "asyncpg-pool": lambda: AsyncpgShop(postgres.host, database),
        "sqlalchemy-session-psycopg": lambda: SqlAlchemyShop(
            postgres.sqlalchemy_url("postgresql+psycopg", database)
        ),
        "sqlalchemy-async-session-asyncpg": lambda: SqlAlchemyAsyncShop(
            postgres.sqlalchemy_url("postgresql+asyncpg", database)
        ),
    }[request.param]()
    await shop_database.prepare()
    yield shop_database
    await shop_database.close()


class TestEveryDriver(DriverContract):
    """The shared driver tests, on PostgreSQL: psycopg, asyncpg, SQLAlchemy."""


@pytest.mark.parametrize(("first_ends", "second_gets"), [("commit", False), ("rollback", True)])
def test_a_second_transaction_waits_for_the_first_and_gets_what_its_end_leaves(
    postgres: PostgresServer, database: str, first_ends: str, second_gets: bool
) -> None:
    ctx = context_for()
    said: list[bool] = []
    with psycopg.connect(postgres.conninfo(database)) as first:
        assert once(first, ctx) is True

        def second_transaction() -> None:
            with psycopg.connect(postgres.conninfo(database)) as second:
                said.append(once(second, ctx))

        racer = threading.Thread(target=second_transaction)
        racer.start()
        racer.join(0.5)
        assert racer.is_alive() and said == []  # blocked on the first one's key
        getattr(first, first_ends)()
        racer.join(30)

    assert said == [second_gets]


def test_racing_transactions_on_one_key_give_exactly_one_true(
    postgres: PostgresServer, database: str
) -> None:
    ctx = context_for()
    start = threading.Barrier(RACERS)
    said: list[bool] = []

    def racer() -> None:
        with psycopg.connect(postgres.conninfo(database)) as conn:
            start.wait()
            said.append(once(conn, ctx))

    threads = [threading.Thread(target=racer) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(said) == [False] * (RACERS - 1) + [True]


async def test_racing_asyncpg_transactions_on_one_key_give_exactly_one_true(
    postgres: PostgresServer, database: str
) -> None:
    ctx = context_for()
    connections = [
        await asyncpg.connect(host=postgres.host, user="postgres", database=database)
        for _ in range(RACERS)
    ]

    async def racer(conn: asyncpg.Connection) -> bool:
        async with conn.transaction():
            first = await once_async(conn, ctx)
            await asyncio.sleep(0.05)  # hold the key a moment: the others must wait on it
            return first

    try:
        said = await asyncio.gather(*(racer(conn) for conn in connections))
    finally:
        await asyncio.gather(*(conn.close() for conn in connections))

    assert sorted(said) == [False] * (RACERS - 1) + [True]


def test_under_repeatable_read_the_second_transaction_fails_with_a_serialization_error(
    postgres: PostgresServer, database: str
) -> None:
    ctx = context_for()
    first = psycopg.connect(postgres.conninfo(database))
    second = psycopg.connect(postgres.conninfo(database))
    second.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    try:
        second.execute("SELECT 1")  # its snapshot is taken now, before the first commits
        assert once(first, ctx) is True
        first.commit()

        with pytest.raises(psycopg.errors.SerializationFailure):
            once(second, ctx)
    finally:
        first.close()
        second.close()


def test_a_psycopg_connection_in_autocommit_mode_needs_a_transaction_block(
    postgres: PostgresServer, database: str
) -> None:
    with psycopg.connect(postgres.conninfo(database), autocommit=True) as conn:
        with pytest.raises(NotInTransaction, match=r"conn\.transaction\(\)"):
            once(conn, context_for())
        assert conn.execute("SELECT count(*) FROM loops_webhooks_effects").fetchone() == (0,)

        with conn.transaction():
            assert once(conn, context_for()) is True


async def test_an_asyncpg_connection_outside_a_transaction_is_refused(
    postgres: PostgresServer, database: str
) -> None:
    conn = await asyncpg.connect(host=postgres.host, user="postgres", database=database)
    try:
        with pytest.raises(NotInTransaction, match="asyncpg"):
            await once_async(conn, context_for())
        assert await conn.fetchval("SELECT count(*) FROM loops_webhooks_effects") == 0
    finally:
        await conn.close()


async def test_an_asyncpg_connection_given_to_once_says_to_use_once_async(
    postgres: PostgresServer, database: str
) -> None:
    conn = await asyncpg.connect(host=postgres.host, user="postgres", database=database)
    try:
        with pytest.raises(TypeError, match=r"asynchronous asyncpg\.Connection: use await"):
            once(conn, context_for())
    finally:
        await conn.close()
