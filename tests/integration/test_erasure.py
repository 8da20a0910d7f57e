"""``events erase --customer``: a customer's personal data erased from a real Redis, shown as
erased by the CLI and the dashboard, and replays of what was erased refused."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from urllib.parse import quote

import orjson
from redis.asyncio import Redis

from loops_webhooks.workers import keys
from tests.integration.dashboard_harness import TOKEN, Dashboard
from tests.integration.search_harness import Shop
from tests.integration.test_cli import run_cli
from tests.support.processes import StartLoopsWebhooks


def erase(shop: Shop, *extra: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"REDIS_URL": shop.bench.redis_url, "LOOPS_LOG_FORMAT": "json"}
    return run_cli("events", "erase", "--customer", "cus_a", *extra, env=env, stdin=stdin)


async def test_erasing_a_customer_empties_their_bodies_headers_and_search_entries_only(
    shop: Shop, redis: Redis
) -> None:
    result = erase(shop, "--yes")

    assert result.returncode == 0, result.stderr
    assert "erased 4 event(s) and 2 dead letter(s)" in result.stdout
    assert "customer data erased" in result.stderr and "cus_a" not in result.stderr
    erased = [posted for posted in shop.posted if posted.customer == "cus_a"]
    for posted in erased:
        record = await redis.hgetall(keys.event_key(posted.event_id))
        assert (record[b"raw"], record[b"headers"]) == (b"", b"{}")
        assert await redis.hget(keys.SEARCH_TERMS, posted.event_id) == b""
        assert record[b"erased_at"] and record[b"status"] in (b"done", b"dead")
        assert record[b"type"] and record[b"received_at"]
    for letter_id in await redis.zrange(keys.DEAD_LETTER_INDEX, 0, -1):
        letter = await redis.hgetall(keys.dead_letter_key(letter_id.decode()))
        assert (letter[b"raw"], letter[b"headers"]) == (b"", b"{}") and letter[b"erased_at"]
    for term in ("customer:cus_a", "session:cs_1", "metadata:orderId=ord_4"):
        assert not await redis.exists(keys.search_key(term))
    kept = shop.posted[3]
    assert (await redis.hget(keys.event_key(kept.event_id), "raw")).startswith(b"{")
    assert await redis.zrange(keys.search_key("customer:cus_b"), 0, -1) == [kept.event_id.encode()]


async def test_erased_events_show_as_erased_in_the_cli(shop: Shop) -> None:
    assert erase(shop, "--yes").returncode == 0
    env = {"REDIS_URL": shop.bench.redis_url}

    listed = orjson.loads(run_cli("events", "list", "--json", env=env).stdout)
    shown = run_cli("events", "show", shop.posted[0].event_id, env=env)
    letter = run_cli("dlq", "show", shop.posted[1].event_id, env=env)

    assert {row["id"]: row["erased"] for row in listed} == {
        posted.event_id: posted.customer == "cus_a" for posted in shop.posted
    }
    assert "erased" in shown.stdout and "raw body and headers are gone" in shown.stdout
    assert "erased:" in letter.stdout


async def test_erase_asks_first_and_refuses_with_exit_2_when_no_one_can_answer(
    shop: Shop, redis: Redis
) -> None:
    unanswered = erase(shop)
    declined = erase(shop, stdin="n\n")
    assert (unanswered.returncode, declined.returncode) == (2, 1)
    assert "--yes" in unanswered.stderr
    assert await redis.hget(keys.event_key(shop.posted[0].event_id), "erased_at") is None

    confirmed = erase(shop, stdin="y\n")

    assert confirmed.returncode == 0
    assert "erase the raw bodies and headers of 4 event(s)" in confirmed.stdout
    assert await redis.hget(keys.event_key(shop.posted[0].event_id), "erased_at") is not None


async def test_replaying_an_erased_dead_letter_is_refused_saying_why(
    shop: Shop, redis: Redis, start_loops_webhooks: StartLoopsWebhooks, free_port: Callable[[], int]
) -> None:
    assert erase(shop, "--yes").returncode == 0

    replay = run_cli("dlq", "replay", "--all", env={"REDIS_URL": shop.bench.redis_url})

    assert replay.returncode == 0
    assert "refused 2: their personal data was erased" in replay.stdout
    assert await redis.zcard(keys.DEAD_LETTER_INDEX) == 2
    assert await redis.hget(keys.event_key(shop.posted[1].event_id), "status") == b"dead"
    dashboard = Dashboard(start_loops_webhooks, free_port(), shop.bench.redis_url)
    async with dashboard.client(bearer=TOKEN) as client:
        async with client.post("/api/dead-letters/replay", json={"filter": {}}) as response:
            answer = await response.json()
        assert (answer["replayed"], answer["erased"]) == (0, 2)
        async with client.get(f"/events/{shop.posted[1].event_id}") as response:
            event_page = await response.text()
        assert 'class="erased"' in event_page and 'id="erased"' in event_page
        letter_id = (await redis.zrange(keys.DEAD_LETTER_INDEX, 0, 0))[0].decode()
        async with client.get(f"/dead-letters/{quote(letter_id, safe='')}") as response:
            letter_page = await response.text()
        assert "cannot be replayed" in letter_page and 'data-action="replay"' not in letter_page
