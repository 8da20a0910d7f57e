"""What the README says a forced replay does to an effect recorded with ``once``, through the
real ``loops-webhooks dev`` and ``dlq replay --force``: the handler runs again and does not
apply its effect again; after its row is deleted, the next forced replay applies it."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from loops_webhooks.effects import create_table
from tests.integration.test_cli import dead_letter_ids, event_status, run_cli, wait_until
from tests.support.loops_sender import WEBHOOK_SECRET
from tests.support.processes import StartLoopsWebhooks

EVENT_ID = "evt_effects_replay"
LETTER = f"{EVENT_ID}:notify"

HANDLERS_MODULE = """
import os
import sqlite3
from contextlib import closing

from loops_webhooks.effects import once
from loops_webhooks.handlers import HandlerContext, Router
from loops_webhooks.handlers.events import CheckoutSessionEvent

router = Router()
SHOP = os.environ["SHOP_DATABASE"]


@router.on("checkout.session.completed", name="ship")
def ship(event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
    with closing(sqlite3.connect(SHOP, timeout=30)) as conn:
        with conn:
            conn.execute("INSERT INTO runs VALUES (?)", (event.id,))
        with conn:
            if once(conn, ctx):
                conn.execute("INSERT INTO shipments VALUES (?)", (event.id,))


@router.on("checkout.session.completed", name="notify", max_attempts=1)
async def notify(event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
    raise RuntimeError("the mail server is down, so the event keeps a dead letter")
"""


def count(database: Path, table: str) -> int:
    with closing(sqlite3.connect(database)) as conn:
        (rows,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(rows)


def test_a_forced_replay_reruns_the_handler_without_applying_its_effect_until_its_row_is_deleted(
    tmp_path: Path,
    redis_url: str,
    start_loops_webhooks: StartLoopsWebhooks,
    free_port: Callable[[], int],
) -> None:
    database = tmp_path / "shop.sqlite3"
    with closing(sqlite3.connect(database)) as conn, conn:
        create_table(conn)
        conn.execute("CREATE TABLE runs (event_id text NOT NULL)")
        conn.execute("CREATE TABLE shipments (event_id text NOT NULL)")
    (tmp_path / "shop_handlers.py").write_text(HANDLERS_MODULE)
    env = {
        "REDIS_URL": redis_url,
        "LOOPS_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "LOOPS_HANDLERS": "shop_handlers:router",
        "LOOPS_METRICS_PORT": "0",
        "PYTHONPATH": str(tmp_path),
        "SHOP_DATABASE": str(database),
    }
    port = free_port()
    start_loops_webhooks(
        "dev", "--port", str(port), "--dashboard-port", str(free_port()), env=env, port=port
    )

    def handled_after_runs(runs: int) -> Callable[[], bool]:
        return lambda: (
            count(database, "runs") == runs
            and event_status(redis_url, EVENT_ID) == "dead"
            and dead_letter_ids(redis_url) == [LETTER]
        )

    url = f"http://127.0.0.1:{port}/webhooks/loops"
    sent = run_cli("send", "checkout.session.completed", "--url", url, "--id", EVENT_ID, env=env)
    assert sent.returncode == 0, sent.stderr
    wait_until(handled_after_runs(1), "ship done, notify dead-lettered")
    assert count(database, "shipments") == 1

    forced = run_cli("dlq", "replay", LETTER, "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    wait_until(handled_after_runs(2), "ship run again by the forced replay")
    assert count(database, "shipments") == 1

    with closing(sqlite3.connect(database)) as conn, conn:
        conn.execute(
            "DELETE FROM loops_webhooks_effects WHERE event_id = ? AND handler = ?",
            (EVENT_ID, "ship"),
        )
    forced = run_cli("dlq", "replay", LETTER, "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    wait_until(handled_after_runs(3), "ship run again after its row was deleted")
    assert count(database, "shipments") == 2
