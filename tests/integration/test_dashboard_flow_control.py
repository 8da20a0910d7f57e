"""Pausing and resuming a handler and running an event's retries now from the dashboard:
its JSON API through a real dashboard process, and its buttons in a real browser whose page
allows scripts only from the dashboard itself (``default-src 'self'``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from loops_webhooks.workers import keys
from loops_webhooks.workers.event_store import HandlerStatus
from tests.integration.dashboard_harness import TOKEN, Dashboard
from tests.integration.test_dashboard_api import bench, dashboard
from tests.integration.test_dashboard_browser import browser_page, screenshot
from tests.integration.test_flow_control import PAUSE_REACHES_WORKERS_SECONDS
from tests.integration.worker_harness import Workbench
from tests.support.processes import StartLoopsWebhooks
from tests.support.waiting import eventually

__all__ = ["bench", "browser_page", "dashboard"]

HANDLERS = """
@router.on("checkout.session.completed", name="erp")
async def erp(event, ctx):
    record(ctx, "erp")
    if ctx.attempt == 1:
        raise RetryLater(3600, "ERP says come back in an hour")
"""


@pytest.fixture
async def erp_running(bench: Workbench) -> Workbench:
    """A worker running the ``erp`` handler, registered."""
    bench.write_handlers(HANDLERS)
    bench.start_worker()
    await registered(bench, "erp")
    return bench


def log_lines(output: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in output.splitlines() if line.startswith("{")]


async def registered(bench: Workbench, name: str) -> None:
    async def live() -> bool:
        return bool(await bench.redis.hexists(keys.LIVE_HANDLERS, name))  # type: ignore[misc]

    await eventually(live, within=20, what=f"a worker registered {name}")


async def retry_scheduled(bench: Workbench, event_id: str) -> None:
    async def scheduled() -> bool:
        state = (await bench.event(event_id)).handlers.get("erp")
        return state is not None and state.status == HandlerStatus.RETRY

    await eventually(scheduled, within=15, what="a retry an hour ahead is scheduled")


async def test_a_bearer_pauses_and_resumes_a_handler_through_the_api_and_each_is_logged(
    erp_running: Workbench, dashboard: Dashboard
) -> None:
    async with dashboard.client(bearer=TOKEN) as client:
        async with client.post(
            "/api/handlers/erp/pause", json={"reason": "ERP maintenance"}
        ) as response:
            assert response.status == 200
            paused = await response.json()
        async with client.get("/api/handlers") as response:
            (listed,) = (await response.json())["items"]
        async with client.post("/api/handlers/erp/resume") as response:
            resumed = await response.json()

    assert paused["paused"]["reason"] == "ERP maintenance"
    assert paused["paused"]["by"] == "token"
    assert listed["name"] == "erp"
    assert listed["registered"] is True
    assert listed["paused"]["reason"] == "ERP maintenance"
    assert resumed == {"name": "erp", "was_paused": True, "queued": 0}
    logged = log_lines(dashboard.process.output())
    assert {
        (line["event"], line["handler"], line["by"], line["credential"])
        for line in logged
        if line["event"] in ("handler paused", "handler resumed")
    } == {
        ("handler paused", "erp", "token", "bearer"),
        ("handler resumed", "erp", "token", "bearer"),
    }


async def test_pausing_an_unknown_name_is_404_unless_forced_and_bad_bodies_are_400(
    erp_running: Workbench, dashboard: Dashboard
) -> None:
    async with dashboard.client(bearer=TOKEN) as client:
        async with client.post("/api/handlers/epr/pause") as response:
            assert response.status == 404
            assert (await response.json())["error"] == "unknown_handler"
        for body in ({"force": "yes"}, {"reason": 5}, {"why": "x"}, [1]):
            async with client.post("/api/handlers/erp/pause", json=body) as response:
                assert response.status == 400, body
        async with client.post("/api/handlers/epr/pause", json={"force": True}) as response:
            assert response.status == 200
        async with client.post("/api/events/evt_nope/retry-now") as response:
            assert response.status == 404


async def test_read_only_mode_refuses_pause_resume_and_retry_now_with_403(
    bench: Workbench,
    start_loops_webhooks: StartLoopsWebhooks,
    free_port: Callable[[], int],
    redis_url: str,
) -> None:
    dashboard = Dashboard(start_loops_webhooks, free_port(), redis_url, read_only=True)
    event_id = await bench.submit()
    async with dashboard.client(bearer=TOKEN) as client:
        for path in (
            "/api/handlers/erp/pause",
            "/api/handlers/erp/resume",
            f"/api/events/{event_id}/retry-now",
        ):
            async with client.post(path) as response:
                assert response.status == 403, path
                assert (await response.json())["error"] == "read_only"
    assert not await bench.redis.hexists(keys.PAUSED_HANDLERS, "erp")  # type: ignore[misc]


async def test_retry_now_through_the_api_runs_the_retry_and_is_409_when_none_is_scheduled(
    bench: Workbench, dashboard: Dashboard
) -> None:
    bench.write_handlers(HANDLERS)
    bench.start_worker()
    event_id = await bench.submit()
    await retry_scheduled(bench, event_id)
    async with dashboard.client(bearer=TOKEN) as client:
        async with client.post(f"/api/events/{event_id}/retry-now") as response:
            assert await response.json() == {"event_id": event_id, "retries": 1}
        await bench.wait_for_status(event_id, "done")
        async with client.post(f"/api/events/{event_id}/retry-now") as response:
            assert response.status == 409
            assert (await response.json())["error"] == "nothing_scheduled"
    assert [run.attempt for run in bench.effects("erp")] == [1, 2]


async def only_scripts_from_self(page: Any) -> None:
    """Every answer carries ``Content-Security-Policy: default-src 'self'``: an inline
    script or handler would not run."""

    async def with_policy(route: Any) -> None:
        response = await route.fetch()
        headers = {**response.headers, "content-security-policy": "default-src 'self'"}
        await route.fulfill(response=response, headers=headers)

    await page.route("**/*", with_policy)


async def test_an_operator_pauses_and_resumes_a_handler_and_runs_a_retry_now_with_the_buttons(
    browser_page: Any, erp_running: Workbench, dashboard: Dashboard
) -> None:
    bench = erp_running
    page = browser_page
    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    await only_scripts_from_self(page)
    await page.goto(dashboard.base_url + "/login")
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_selector("text=Handler outcomes per minute")

    await page.click("nav >> text=Handlers")
    row = page.locator("tr[data-handler=erp]")
    await row.locator("[data-reason]").fill("ERP maintenance")
    await row.locator("button[data-handler-action=pause]").click()
    await row.get_by_text("Paused.").wait_for()
    await asyncio.sleep(PAUSE_REACHES_WORKERS_SECONDS)
    assert await bench.redis.hexists(keys.PAUSED_HANDLERS, "erp")  # type: ignore[misc]
    event_id = await bench.submit()

    async def waiting() -> bool:
        return await bench.redis.zcard(keys.handler_waiting_key("erp")) == 1

    await eventually(waiting, within=15, what="the event waits for the paused handler")
    await page.reload()
    await row.get_by_text("ERP maintenance").wait_for()
    await screenshot(page, "flow-01-paused")
    await row.locator("button[data-handler-action=resume]").click()
    await row.get_by_text("Resumed: 1 waiting event queued.").wait_for()
    await retry_scheduled(bench, event_id)

    await page.goto(f"{dashboard.base_url}/events/{event_id}")
    await page.click("button[data-retry-now-button]")
    await bench.wait_for_status(event_id, "done")
    await screenshot(page, "flow-02-retried")

    assert [run.attempt for run in bench.effects("erp")] == [1, 2]
    assert errors == []
