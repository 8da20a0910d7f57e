"""``loops_webhooks.effects`` on SQLite: the key and the effect commit together, so an effect
is applied once however often its handler runs; anything but a supported connection is a
clear TypeError. PostgreSQL's drivers: tests/integration/test_effects_postgres.py."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import types
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from loops_webhooks import Router
from loops_webhooks.effects import (
    CREATE_TABLE,
    NotInTransaction,
    create_table,
    create_table_async,
    once,
    once_async,
)
from loops_webhooks.events import CheckoutSessionEvent
from loops_webhooks.handlers import HandlerContext
from loops_webhooks.handlers.context import idempotency_key
from loops_webhooks.testing import make_event, run
from tests.support.shop_databases import (
    DriverContract,
    ShopDatabase,
    SqlAlchemyAsyncShop,
    SqlAlchemyShop,
    Sqlite3Shop,
    context_for,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite3", "sqlalchemy-session", "sqlalchemy-async-session"])
async def shop(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ShopDatabase]:
    path = tmp_path / "shop.sqlite3"
    database: ShopDatabase = {
        "sqlite3": lambda: Sqlite3Shop(path),
        "sqlalchemy-session": lambda: SqlAlchemyShop(f"sqlite:///{path}"),
        "sqlalchemy-async-session": lambda: SqlAlchemyAsyncShop(f"sqlite+aiosqlite:///{path}"),
    }[request.param]()
    await database.prepare()
    yield database
    await database.close()


class TestEveryDriver(DriverContract):
    """The shared driver tests, on SQLite: sqlite3, SQLAlchemy Session and AsyncSession."""


def test_a_second_writer_waits_for_the_first_and_then_finds_its_key(tmp_path: Path) -> None:
    path = tmp_path / "shop.sqlite3"
    with closing(sqlite3.connect(path)) as setup, setup:
        create_table(setup)
    ctx = context_for()
    first = sqlite3.connect(path)
    assert once(first, ctx) is True  # uncommitted: the database's write lock is held
    second_said: list[bool] = []

    def second_writer() -> None:
        with closing(sqlite3.connect(path, timeout=30)) as conn, conn:
            second_said.append(once(conn, ctx))

    racer = threading.Thread(target=second_writer)
    racer.start()
    racer.join(0.3)
    assert racer.is_alive() and second_said == []  # it waits on the lock
    first.commit()
    racer.join(30)
    first.close()

    assert second_said == [False]


def test_create_table_can_run_again_and_is_the_documented_ddl(tmp_path: Path) -> None:
    with closing(sqlite3.connect(tmp_path / "shop.sqlite3")) as conn, conn:
        create_table(conn)
        create_table(conn)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(loops_webhooks_effects)")]

    assert columns == ["idempotency_key", "event_id", "handler", "recorded_at"]
    assert CREATE_TABLE in (REPO_ROOT / "README.md").read_text()


def test_a_sqlite3_connection_in_autocommit_mode_outside_a_transaction_is_refused(
    tmp_path: Path,
) -> None:
    with closing(sqlite3.connect(tmp_path / "shop.sqlite3", isolation_level=None)) as conn:
        create_table(conn)

        with pytest.raises(NotInTransaction, match="sqlite3"):
            once(conn, context_for())
        assert conn.execute("SELECT count(*) FROM loops_webhooks_effects").fetchone() == (0,)

        conn.execute("BEGIN")
        assert once(conn, context_for()) is True
        conn.execute("COMMIT")


def test_a_sqlalchemy_core_connection_is_supported(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'shop.sqlite3'}")
    with engine.begin() as conn:
        create_table(conn)

    with engine.begin() as conn:
        firsts = [once(conn, context_for()), once(conn, context_for())]
    engine.dispose()

    assert firsts == [True, False]


@pytest.mark.parametrize("unsupported", [object(), "sqlite:///shop.db", None])
def test_anything_but_a_supported_connection_is_a_type_error_naming_the_supported_ones(
    unsupported: object,
) -> None:
    with pytest.raises(TypeError) as raised:
        once(unsupported, context_for())

    message = str(raised.value)
    assert message.startswith("once() supports sqlite3.Connection, psycopg.Connection")
    assert "sqlalchemy.orm.Session" in message
    assert f"got {type(unsupported).__module__}.{type(unsupported).__qualname__}" in message


async def test_an_unsupported_object_is_a_type_error_for_the_async_functions_too() -> None:
    with pytest.raises(TypeError, match=r"once_async\(\) supports psycopg.AsyncConnection, "):
        await once_async(object(), context_for())
    with pytest.raises(TypeError, match=r"asyncpg\.Connection"):
        await create_table_async(object())


async def test_a_synchronous_connection_given_to_once_async_says_to_use_once(
    tmp_path: Path,
) -> None:
    with closing(sqlite3.connect(tmp_path / "shop.sqlite3")) as conn:
        with pytest.raises(TypeError, match=r"synchronous sqlite3.Connection: use once\(\)"):
            await once_async(conn, context_for())
        with pytest.raises(TypeError, match=r"use create_table\(\)"):
            await create_table_async(conn)


async def test_an_async_session_given_to_once_says_to_use_once_async(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'shop.sqlite3'}")
    async with AsyncSession(engine) as session:
        with pytest.raises(TypeError, match=r"AsyncSession: use await once_async\(\)"):
            once(session, context_for())
        with pytest.raises(TypeError, match=r"use await create_table_async\(\)"):
            create_table(session)
    await engine.dispose()


async def test_the_testing_kit_runs_a_handler_that_ships_once_with_sqlite(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shop.sqlite3"
    with closing(sqlite3.connect(path)) as conn, conn:
        create_table(conn)
        conn.execute("CREATE TABLE shipments (order_id text NOT NULL)")
    router = Router()

    @router.on("checkout.session.completed", name="shop:fulfil")
    def fulfil(event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
        with closing(sqlite3.connect(path)) as conn, conn:
            if once(conn, ctx):
                conn.execute("INSERT INTO shipments VALUES (?)", (event.data.metadata["orderId"],))

    event = make_event("checkout.session.completed", data={"metadata": {"orderId": "o_1"}})

    first = await run(router, event)
    replayed = await run(router, event, attempt=2)

    assert [r.outcome for r in first + replayed] == ["done", "done"]
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT order_id FROM shipments").fetchall() == [("o_1",)]
        assert conn.execute("SELECT idempotency_key FROM loops_webhooks_effects").fetchall() == [
            (idempotency_key(event.id, "shop:fulfil"),)
        ]


def test_importing_the_effects_module_loads_no_database_driver_nor_aiohttp_arq_or_redis() -> None:
    unwanted = {"sqlite3", "_sqlite3", "sqlalchemy", "psycopg", "asyncpg", "aiosqlite"}
    unwanted |= {"aiohttp", "arq", "redis"}
    script = (
        "import sys, loops_webhooks.effects, loops_webhooks.handlers.effects\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(unwanted)!r}))"
    )

    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"


def readme_example(title: str) -> str:
    """The first Python block after the README heading ``title``."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index(f"### {title}\n") :]
    return section[section.index("```python\n") + len("```python\n") : section.index("\n```\n")]


async def test_the_readme_example_ships_once_however_often_it_runs(tmp_path: Path) -> None:
    source = readme_example("Effects applied exactly once, in your database")
    production_url = "postgresql+asyncpg://shop@db.internal/shop"
    assert production_url in source
    path = tmp_path / "shop.sqlite3"
    shipping = types.ModuleType("myshop.shipping")
    exec(source.replace(production_url, f"sqlite+aiosqlite:///{path}"), shipping.__dict__)
    with closing(sqlite3.connect(path)) as conn, conn:
        create_table(conn)
        conn.execute("CREATE TABLE shipments (order_id text NOT NULL)")
    event = make_event("checkout.session.completed", data={"metadata": {"orderId": "o_7"}})

    results = [await run(shipping.router, event, attempt=n) for n in (1, 2, 3)]
    await shipping.engine.dispose()

    assert [r.outcome for [r] in results] == ["done", "done", "done"]
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT order_id FROM shipments").fetchall() == [("o_7",)]
