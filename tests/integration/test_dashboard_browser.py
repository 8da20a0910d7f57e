"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright, against a real dashboard process, a real worker and a real Redis.

Without ``/usr/bin/chromium`` (or Playwright) the test is skipped, saying why, so the README's
test command needs no system package; CI sets ``LOOPS_REQUIRE_BROWSER=1``, which turns that
skip into a failure. Each page visited is saved as a screenshot in
``tests/results/screenshots/`` (git-ignored), to be looked at.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.integration.conftest import StartLoopsWebhooks
from tests.integration.dashboard_harness import TOKEN, Dashboard, failing_handlers
from tests.integration.search_harness import Shop
from tests.integration.worker_harness import Workbench

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "results" / "screenshots"
WAIT_MS = 15_000


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture
async def browser_page() -> AsyncIterator[Any]:
    missing = _missing()
    if missing is not None:
        if os.environ.get("LOOPS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"LOOPS_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(f"browser test needs a real Chromium: {missing}")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(WAIT_MS)
            yield page
        finally:
            await browser.close()


@pytest.fixture
async def bench(tmp_path, redis: Redis, redis_url: str, start_loops_webhooks, loops) -> Workbench:
    return Workbench(tmp_path, redis, redis_url, start_loops_webhooks, loops)


async def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def test_an_operator_logs_in_opens_a_dead_letter_replays_it_and_sees_the_event_handled(
    browser_page: Any,
    bench: Workbench,
    start_loops_webhooks: StartLoopsWebhooks,
    free_port: Callable[[], int],
    redis_url: str,
) -> None:
    page = browser_page
    broken = failing_handlers(bench)
    bench.start_worker()
    for _ in range(3):
        await bench.submit()
    event_id = await bench.submit()
    await bench.wait_for_status(event_id, "dead")
    dashboard = Dashboard(start_loops_webhooks, free_port(), redis_url)

    await page.goto(dashboard.base_url + "/")
    await page.wait_for_url(re.compile(r"/login\?next="))
    await screenshot(page, "01-login")
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_selector("text=Handler outcomes per minute")
    assert page.url == dashboard.base_url + "/"
    await screenshot(page, "02-overview")

    await page.click("nav >> text=Events")
    await page.wait_for_selector(f"text={event_id}")
    await screenshot(page, "03-events")

    await page.click("nav >> text=Dead letters")
    await page.wait_for_selector("table.list tbody tr >> nth=3")
    await screenshot(page, "04-dead-letters")

    row = page.locator("table.list tbody tr", has_text=event_id)
    await row.locator("a").first.click()
    await page.wait_for_selector("text=mail server said no")
    await screenshot(page, "05-dead-letter")

    broken.unlink()
    await page.click("button[data-action=replay]")
    confirm = page.locator("[data-confirm]")
    await confirm.get_by_text("1 dead letter will be replayed").wait_for()
    await screenshot(page, "06-replay-confirm")
    await confirm.locator("button[data-confirm-action=replay]").click()
    await confirm.get_by_text("Replayed 1, skipped 0, already gone 0.").wait_for()
    await screenshot(page, "07-replayed")

    await confirm.get_by_text("Open the event").click()
    await page.wait_for_url(f"**/events/{event_id}")
    await page.locator("h1 .status-done").wait_for()  # the page refreshes while pending
    await screenshot(page, "08-event-handled")
    handlers = page.locator("#handlers tbody")
    assert await handlers.locator("tr:not(.earlier)").count() == 2
    assert await handlers.locator("tr.earlier", has_text="before a replay").count() == 1
    assert len(bench.effects("notified")) == 1


async def test_an_operator_finds_an_order_in_the_search_box_and_walks_to_its_sessions_events(
    browser_page: Any,
    shop: Shop,
    redis_url: str,
    start_loops_webhooks: StartLoopsWebhooks,
    free_port: Callable[[], int],
) -> None:
    page = browser_page
    first, second = shop.posted[0].event_id, shop.posted[1].event_id
    dashboard = Dashboard(start_loops_webhooks, free_port(), redis_url)
    await page.goto(dashboard.base_url + "/events")
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")

    search = page.get_by_role("searchbox")
    await search.fill("ord_1")
    await search.press("Enter")
    rows = page.locator("table.list tbody tr")
    await rows.filter(has_text=first).wait_for()
    await screenshot(page, "11-search-order")
    assert await rows.count() == 2
    assert await rows.filter(has_text="cus_a").count() == 2
    assert await rows.filter(has_text="cs_1").count() == 2

    await page.get_by_role("searchbox").fill("cus_b")
    await page.get_by_role("button", name="Find").click()
    await rows.filter(has_text=shop.posted[3].event_id).wait_for()
    assert await rows.count() == 1

    await page.get_by_role("searchbox").fill(second)
    await page.get_by_role("searchbox").press("Enter")
    await page.wait_for_url(f"**/events/{second}")
    await screenshot(page, "12-search-event-id")
    await page.click("#session-events")
    await rows.filter(has_text=first).wait_for()
    await screenshot(page, "13-session-events")
    assert sorted(
        [await row.locator("td").first.inner_text() for row in await rows.all()]
    ) == sorted([first, second])
