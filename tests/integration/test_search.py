"""Finding events by checkout session, customer and order: events posted to a real receiver,
handled by a real worker, found through the CLI, the JSON API and the dashboard's pages."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from tests.integration.dashboard_harness import TOKEN, Dashboard
from tests.integration.search_harness import Shop
from tests.integration.test_cli import run_cli
from tests.support.processes import StartLoopsWebhooks


@pytest.fixture
def dashboard(
    start_loops_webhooks: StartLoopsWebhooks, free_port: Callable[[], int], redis_url: str
) -> Dashboard:
    return Dashboard(start_loops_webhooks, free_port(), redis_url)


def ids(shop: Shop, *indexes: int) -> list[str]:
    return [shop.posted[index].event_id for index in indexes]


def cli(shop: Shop, *args: str) -> list[dict[str, object]]:
    result = run_cli(*args, "--json", env={"REDIS_URL": shop.bench.redis_url})
    assert result.returncode == 0, result.stderr
    listed: list[dict[str, object]] = orjson.loads(result.stdout)
    return listed


async def test_the_cli_finds_events_by_customer_session_and_order_newest_first(shop: Shop) -> None:
    by_customer = cli(shop, "events", "list", "--customer", "cus_a")
    assert [row["id"] for row in by_customer] == ids(shop, 4, 2, 1, 0)
    assert by_customer[-1]["session"] == "cs_1"
    assert by_customer[-1]["metadata"] == {"orderId": "ord_1"}
    assert [row["id"] for row in cli(shop, "events", "list", "--session", "cs_1")] == ids(
        shop, 1, 0
    )
    combined = cli(
        shop, "events", "list", "--customer", "cus_a", "--metadata", "orderId=ord_1",
        "--status", "dead",
    )  # fmt: skip
    assert [row["id"] for row in combined] == ids(shop, 1)
    assert cli(shop, "events", "list", "--customer", "cus_a", "--session", "cs_3") == []


async def test_the_cli_pages_a_search_with_the_cursor_it_prints(shop: Shop) -> None:
    env = {"REDIS_URL": shop.bench.redis_url}
    first = run_cli("events", "list", "--customer", "cus_a", "--limit", "3", "--json", env=env)
    cursor = first.stderr.strip().split("--cursor ")[1]
    second = run_cli(
        "events", "list", "--customer", "cus_a", "--limit", "3", "--cursor", cursor, "--json",
        env=env,
    )  # fmt: skip

    listed = [row["id"] for row in orjson.loads(first.stdout) + orjson.loads(second.stdout)]
    assert listed == ids(shop, 4, 2, 1, 0)
    assert "--cursor" not in second.stderr


async def test_dlq_list_finds_the_dead_letters_of_a_customer_or_an_order(shop: Shop) -> None:
    letters = cli(shop, "dlq", "list", "--customer", "cus_a")
    assert [letter["event_id"] for letter in letters] == ids(shop, 4, 1)
    by_order = cli(shop, "dlq", "list", "--metadata", "orderId=ord_4")
    assert [letter["event_id"] for letter in by_order] == ids(shop, 4)
    assert cli(shop, "dlq", "list", "--customer", "cus_b") == []


async def test_a_metadata_key_that_is_not_searchable_is_a_usage_error_naming_the_setting(
    shop: Shop,
) -> None:
    for command in (("events", "list"), ("dlq", "list")):
        result = run_cli(
            *command, "--metadata", "source=website", env={"REDIS_URL": shop.bench.redis_url}
        )
        assert result.returncode == 2
        assert "LOOPS_SEARCH_METADATA_KEYS" in result.stderr
        assert "'source'" in result.stderr


async def test_the_api_finds_events_and_dead_letters_by_customer_session_and_order(
    shop: Shop, dashboard: Dashboard
) -> None:
    async with dashboard.client(bearer=TOKEN) as client:
        params = {"customer": "cus_a", "metadata": "orderId:ord_2"}
        async with client.get("/api/events", params=params) as response:
            [item] = (await response.json())["items"]
        assert (item["id"], item["session"], item["customer"]) == (ids(shop, 2)[0], "cs_2", "cus_a")
        assert item["metadata"] == {"orderId": "ord_2"}
        async with client.get("/api/events", params={"session": "cs_1"}) as response:
            assert [i["id"] for i in (await response.json())["items"]] == ids(shop, 1, 0)
        async with client.get("/api/dead-letters", params={"session": "cs_1"}) as response:
            assert [i["event_id"] for i in (await response.json())["items"]] == ids(shop, 1)
        async with client.get("/api/events", params={"metadata": "source:website"}) as response:
            assert response.status == 400
            assert "LOOPS_SEARCH_METADATA_KEYS" in (await response.json())["detail"]
        async with client.get("/api/dead-letters", params={"metadata": "nope"}) as response:
            assert response.status == 400


async def test_the_search_box_finds_by_order_customer_or_session_and_opens_an_event_by_id(
    shop: Shop, dashboard: Dashboard
) -> None:
    async with dashboard.client(bearer=TOKEN) as client:
        async with client.get("/events", params={"q": "ord_3"}) as response:
            page = await response.text()
        assert ids(shop, 3)[0] in page and "cus_b" in page and "cs_3" in page
        assert ids(shop, 2)[0] not in page
        async with client.get("/events", params={"q": "cus_a"}) as response:
            page = await response.text()
        assert all(event_id in page for event_id in ids(shop, 0, 1, 2, 4))
        async with client.get(
            "/events", params={"q": ids(shop, 2)[0]}, allow_redirects=False
        ) as response:
            assert response.status == 302
            assert response.headers["Location"] == f"/events/{ids(shop, 2)[0]}"
        async with client.get("/events", params={"q": "nothing_like_it"}) as response:
            assert "No stored event has the id, session, customer or orderId" in (
                await response.text()
            )


async def test_an_event_page_links_to_the_other_events_of_its_session(
    shop: Shop, dashboard: Dashboard
) -> None:
    async with dashboard.client(bearer=TOKEN) as client:
        async with client.get(f"/events/{ids(shop, 0)[0]}") as response:
            page = await response.text()
        assert 'href="/events?session=cs_1"' in page
        async with client.get("/events", params={"session": "cs_1"}) as response:
            listed = await response.text()
        assert all(event_id in listed for event_id in ids(shop, 0, 1))
        assert ids(shop, 2)[0] not in listed
