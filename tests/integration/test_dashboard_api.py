"""The dashboard's JSON API and its gate, through a real dashboard process and a real Redis.

Dead letters are made by a real worker whose handler fails, as they are in production.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from tests.integration.dashboard_harness import (
    FAILING_HANDLER,
    TOKEN,
    Dashboard,
    dashboard_client,
    failing_handlers,
    log_in,
)
from tests.integration.worker_harness import Workbench
from tests.support.processes import StartLoopsWebhooks
from tests.support.waiting import eventually

LOOPS_WEBHOOKS = str(Path(sys.executable).parent / "loops-webhooks")


@pytest.fixture
async def bench(tmp_path, redis: Redis, redis_url: str, start_loops_webhooks, loops) -> Workbench:
    return Workbench(tmp_path, redis, redis_url, start_loops_webhooks, loops)


@pytest.fixture
def dashboard(
    start_loops_webhooks: StartLoopsWebhooks, free_port: Callable[[], int], redis_url: str
) -> Dashboard:
    return Dashboard(start_loops_webhooks, free_port(), redis_url)


async def dead_letters(bench: Workbench, count: int) -> list[str]:
    """``count`` events whose notify handler is dead-lettered; their ids, oldest first."""
    failing_handlers(bench)
    bench.start_worker()
    event_ids = [await bench.submit() for _ in range(count)]
    for event_id in event_ids:
        await bench.wait_for_status(event_id, "dead")
    return event_ids


async def test_the_api_answers_401_without_a_token_and_with_a_wrong_one(
    dashboard: Dashboard,
) -> None:
    async with dashboard.client() as anonymous, anonymous.get("/api/stats") as response:
        assert response.status == 401
        assert (await response.json())["error"] == "unauthenticated"
    wrong = "not-the-token-8d1e"
    async with dashboard.client(bearer=wrong) as client, client.get("/api/events") as response:
        assert response.status == 401
        assert await response.json() == {"error": "unauthenticated", "detail": "wrong token"}
    async with dashboard.client(bearer=TOKEN) as client, client.get("/api/stats") as response:
        assert response.status == 200
    output = dashboard.process.output()
    assert "dashboard request unauthenticated" in output
    assert wrong not in output and TOKEN not in output


async def test_a_wrong_token_on_the_login_form_is_401_and_sets_no_cookie(
    dashboard: Dashboard,
) -> None:
    async with dashboard.client() as client:
        async with client.post("/login", data={"token": "guess"}) as response:
            assert response.status == 401
            assert "not the dashboard" in await response.text()
        assert not client.cookie_jar.filter_cookies(dashboard.base_url)
    assert "dashboard login refused" in dashboard.process.output()


async def test_the_session_cookie_is_httponly_and_strict_and_secure_behind_https(
    dashboard: Dashboard,
) -> None:
    async with dashboard.client() as client:
        for headers, secure in (({}, False), ({"X-Forwarded-Proto": "https"}, True)):
            async with client.post(
                "/login", data={"token": TOKEN}, headers=headers, allow_redirects=False
            ) as response:
                assert response.status == 303
                cookie = response.headers["Set-Cookie"]
            assert "HttpOnly" in cookie
            assert "SameSite=Strict" in cookie
            assert ("Secure" in cookie) is secure


async def test_a_cookie_post_without_the_csrf_token_is_403_and_with_it_goes_through(
    bench: Workbench, dashboard: Dashboard
) -> None:
    await dead_letters(bench, 1)
    body = {"filter": {}, "dry_run": True}
    async with dashboard.client() as client:
        csrf = await log_in(client)
        async with client.post("/api/dead-letters/replay", json=body) as response:
            assert response.status == 403
            assert (await response.json())["error"] == "csrf"
        async with client.post(
            "/api/dead-letters/replay", json=body, headers={"X-CSRF-Token": "forged"}
        ) as response:
            assert response.status == 403
        async with client.post(
            "/api/dead-letters/replay", json=body, headers={"X-CSRF-Token": csrf}
        ) as response:
            assert response.status == 200
            assert await response.json() == {"dry_run": True, "matched": 1}


async def test_read_only_mode_refuses_replay_and_purge_with_403(
    bench: Workbench,
    start_loops_webhooks: StartLoopsWebhooks,
    free_port: Callable[[], int],
    redis_url: str,
) -> None:
    await dead_letters(bench, 1)
    dashboard = Dashboard(start_loops_webhooks, free_port(), redis_url, read_only=True)
    async with dashboard.client(bearer=TOKEN) as client:
        for action in ("replay", "purge"):
            async with client.post(f"/api/dead-letters/{action}", json={"filter": {}}) as response:
                assert response.status == 403
                assert (await response.json())["error"] == "read_only"
        async with client.get("/api/dead-letters") as response:
            assert len((await response.json())["items"]) == 1


async def test_events_and_dead_letters_page_through_more_than_one_page_newest_first(
    bench: Workbench, dashboard: Dashboard
) -> None:
    event_ids = await dead_letters(bench, 5)
    async with dashboard.client(bearer=TOKEN) as client:
        for path, key in (("/api/events", "id"), ("/api/dead-letters", "event_id")):
            seen: list[str] = []
            pages = 0
            cursor: str | None = None
            while True:
                params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
                async with client.get(path, params=params) as response:
                    assert response.status == 200
                    page = await response.json()
                pages += 1
                seen += [item[key] for item in page["items"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert pages == 3
            assert sorted(seen) == sorted(event_ids)  # each once, none missing
            if path == "/api/events":  # by receipt; letters go by when each was dead-lettered
                assert seen == list(reversed(event_ids))


async def test_filters_and_one_event_and_one_dead_letter_as_json(
    bench: Workbench, dashboard: Dashboard
) -> None:
    [event_id] = await dead_letters(bench, 1)
    async with dashboard.client(bearer=TOKEN) as client:
        async with client.get("/api/events", params={"status": "done"}) as response:
            assert (await response.json())["items"] == []
        async with client.get("/api/events", params={"status": "dead"}) as response:
            [item] = (await response.json())["items"]
        assert {"id", "type", "status", "received_at"} <= set(item)
        assert item["handler_statuses"] == {FAILING_HANDLER: "dead", "shop_handlers:fulfil": "done"}
        async with client.get(f"/api/events/{event_id}") as response:
            event = await response.json()
        assert event["handlers"][FAILING_HANDLER]["status"] == "dead"
        assert event["handlers"]["shop_handlers:fulfil"]["status"] == "done"
        [letter_id] = event["dead_letters"]
        async with client.get(
            "/api/dead-letters", params={"handler": FAILING_HANDLER, "reason": "max_attempts"}
        ) as response:
            [summary] = (await response.json())["items"]
        assert {"id", "event_id", "handler", "reason", "dead_lettered_at"} <= set(summary)
        async with client.get(f"/api/dead-letters/{letter_id}") as response:
            letter = await response.json()
        assert "mail server said no" in letter["traceback"]
        assert event_id in letter["raw"]


async def test_bad_requests_are_400_and_unknown_ids_404_in_one_error_shape(
    dashboard: Dashboard,
) -> None:
    async with dashboard.client(bearer=TOKEN) as client:
        for path, params, status in (
            ("/api/events", {"limit": "0"}, 400),
            ("/api/events", {"status": "lost"}, 400),
            ("/api/events", {"cursor": "%%%"}, 400),
            ("/api/dead-letters", {"since": "yesterday"}, 400),
            ("/api/events/evt_nope", {}, 404),
            ("/api/dead-letters/evt_nope:shop", {}, 404),
        ):
            async with client.get(path, params=params) as response:
                assert response.status == status, path
                assert set(await response.json()) == {"error", "detail"}
        for body in ({}, {"ids": []}, {"ids": ["a"], "filter": {}}, {"filter": {"colour": "x"}}):
            async with client.post("/api/dead-letters/replay", json=body) as response:
                assert response.status == 400, body
        async with client.post("/api/dead-letters/purge", json={"ids": ["x:y"]}) as response:
            assert response.status == 404


async def test_a_replay_or_purge_filter_takes_every_field_the_dead_letter_list_takes(
    bench: Workbench, dashboard: Dashboard
) -> None:
    await dead_letters(bench, 2)
    where = {"session": "cs_none", "customer": "c_none", "metadata": ["orderId:none"]}
    async with dashboard.client(bearer=TOKEN) as client:
        for action in ("replay", "purge"):
            async with client.post(
                f"/api/dead-letters/{action}", json={"filter": where, "dry_run": True}
            ) as response:
                assert response.status == 200, await response.text()
                assert (await response.json())["matched"] == 0
        async with client.post(
            "/api/dead-letters/replay", json={"filter": {"since": "1h"}, "dry_run": True}
        ) as response:
            assert (await response.json())["matched"] == 2
        async with client.get("/dead-letters", params=where) as response:
            page = await response.text()
    # the page's filter form keeps them, and so does "every dead letter that matches"
    assert '<input type="hidden" name="customer" value="c_none">' in page
    assert '<input type="hidden" name="metadata" value="orderId:none">' in page
    assert "&#34;metadata&#34;:[&#34;orderId:none&#34;]" in page  # data-filter, as JSON


async def test_a_bearer_replay_by_filter_counts_first_then_replays_and_is_logged(
    bench: Workbench, dashboard: Dashboard
) -> None:
    event_ids = await dead_letters(bench, 3)
    (bench.directory / "broken").unlink()
    body = {"filter": {"handler": FAILING_HANDLER}}
    async with dashboard.client(bearer=TOKEN) as client:
        async with client.post(
            "/api/dead-letters/replay", json={**body, "dry_run": True}
        ) as response:
            assert await response.json() == {"dry_run": True, "matched": 3}
        async with client.post("/api/dead-letters/replay", json=body) as response:
            answer = await response.json()
        assert (answer["replayed"], answer["skipped"], answer["gone"]) == (3, 0, 0)
    for event_id in event_ids:
        await bench.wait_for_status(event_id, "done")
    assert len(bench.effects("notified")) == 3
    assert "dead letters replayed" in dashboard.process.output()


async def test_purge_by_ids_deletes_those_letters_and_is_logged(
    bench: Workbench, dashboard: Dashboard, redis: Redis
) -> None:
    await dead_letters(bench, 2)
    async with dashboard.client(bearer=TOKEN) as client:
        async with client.get("/api/dead-letters") as response:
            first, second = (await response.json())["items"]
        async with client.post("/api/dead-letters/purge", json={"ids": [first["id"]]}) as response:
            assert await response.json() == {"dry_run": False, "matched": 1, "purged": 1}
        async with client.get("/api/dead-letters") as response:
            assert [item["id"] for item in (await response.json())["items"]] == [second["id"]]

    async def logged() -> bool:
        return first["id"] in dashboard.process.output()

    await eventually(logged, within=5, what="the purge is logged with the letter it deleted")


def test_the_dashboard_without_a_token_exits_2_saying_how_to_set_one(
    tmp_path: Path, redis_url: str
) -> None:
    result = subprocess.run(
        [LOOPS_WEBHOOKS, "dashboard"],
        env={"REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "LOOPS_DASHBOARD_TOKEN is not set" in result.stderr


def test_no_auth_is_refused_on_a_host_that_is_not_loopback(tmp_path: Path, redis_url: str) -> None:
    result = subprocess.run(
        [LOOPS_WEBHOOKS, "dashboard", "--no-auth", "--host", "0.0.0.0"],
        env={"REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--no-auth is accepted on a loopback host only" in result.stderr


async def test_no_auth_on_loopback_starts_with_a_warning_and_still_wants_csrf_on_posts(
    start_loops_webhooks: StartLoopsWebhooks, free_port: Callable[[], int], redis_url: str
) -> None:
    dashboard = Dashboard(
        start_loops_webhooks, free_port(), redis_url, token=None, extra=("--no-auth",)
    )
    async with dashboard.client() as client:
        async with client.get("/api/stats") as response:
            assert response.status == 200
        async with client.post("/api/dead-letters/purge", json={"filter": {}}) as response:
            assert response.status == 403
    assert "dashboard without authentication" in dashboard.process.output()


async def test_dev_starts_the_dashboard_too_and_prints_its_url_with_a_token_that_logs_in(
    start_loops_webhooks: StartLoopsWebhooks, free_port: Callable[[], int], redis_url: str
) -> None:
    port, dashboard_port = free_port(), free_port()
    env = {"REDIS_URL": redis_url, "LOOPS_WEBHOOK_SECRET": "whsec_x", "LOOPS_METRICS_PORT": "0"}
    dev = start_loops_webhooks(
        "dev", "--port", str(port), "--dashboard-port", str(dashboard_port), env=env, port=port
    )
    url = f"http://127.0.0.1:{dashboard_port}/"

    async def printed() -> bool:
        return f"dashboard at {url} (token for this session: " in dev.output()

    await eventually(printed, within=10, what="dev prints the dashboard's URL and token")
    token = dev.output().split("(token for this session: ", 1)[1].split(")", 1)[0]

    async def logs_in() -> bool:
        try:
            async with dashboard_client(url.rstrip("/")) as client:
                await log_in(client, token)
        except aiohttp.ClientConnectionError:
            return False
        return True

    await eventually(logs_in, within=15, what="the printed token logs in to the dashboard")
