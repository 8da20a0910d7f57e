"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright, against a real dashboard process, a real worker and a real Redis.

Without ``/usr/bin/chromium`` (or Playwright) the test is skipped, saying why, so the README's
test command needs no system package; CI sets ``LOOPS_REQUIRE_BROWSER=1``, which turns that
skip into a failure. The data is what a shop's looks like: handler names such as
``myshop.webhooks:award_loyalty_points``, long event ids (up to the 255 characters the receiver
accepts, some one long hex run), an error message of several hundred
characters with a URL in it. Each page visited is measured at a desktop's and a phone's width
(no page may be wider than its window) and saved as a screenshot in
``tests/results/screenshots/`` (git-ignored), to be looked at.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from redis.asyncio import Redis

from tests.integration.dashboard_harness import TOKEN, Dashboard
from tests.integration.search_harness import Shop
from tests.integration.worker_harness import Workbench
from tests.support.processes import StartLoopsWebhooks

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
VIEWPORTS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}

AWARD = "myshop.webhooks:award_loyalty_points"
EMAIL = "myshop.webhooks:send_order_confirmation_email"
PARTNER_URL = (
    "https://loyalty-api.partner-platform.example.com/v3/programmes/prg_7QdX2mJ9sK4L/members/"
    "mbr_0f5e8c1a9b7d4e2f/transactions?idempotency_key=evt_01JF8ZQ4N6X2W3V7K9M5B1C0D8"
    "&amount_minor=12990&currency=EUR&channel=webshop&trace=4bf92f3577b34da6a3ce929d0e0e4736"
)
HANDLERS = f"""
BROKEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "broken")


@router.on("checkout.session.completed", name="{AWARD}", max_attempts=1)
async def award_loyalty_points(event, ctx: HandlerContext) -> None:
    if os.path.exists(BROKEN):
        raise RuntimeError(
            "the loyalty partner refused the award after 3 tries: POST {PARTNER_URL} answered "
            "503 Service Unavailable with body "
            '{{"error":"upstream_timeout","detail":"member ledger shard eu-west-1c did not '
            'answer within 2500 ms; retry later","request_id":"req_8c1b0f6a2e9d4c7b"}}'
        )
    record(ctx, "awarded")


@router.on("checkout.session.completed", name="{EMAIL}")
async def send_order_confirmation_email(event, ctx: HandlerContext) -> None:
    record(ctx, "emailed")
"""


def long_event_id(number: int) -> str:
    return f"evt_01JF8ZQ4N6X2W3V7K9M5B1C0D8_checkout_session_completed_{number:04d}_7f3a9c2e"


def hex_event_id(length: int) -> str:
    """An id of ``length`` characters (the receiver accepts up to 255) with no seam to wrap
    at after ``evt_``: one long hex run."""
    digits = "0f5e8c1a9b7d4e2f" * 16
    return "evt_" + digits[: length - 4]


LONGEST_ID = hex_event_id(255)
HEX_ID = hex_event_id(89)


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


class Widths:
    """Measures the page at each viewport and screenshots it; remembers pages too wide."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.too_wide: list[str] = []

    async def check(self, name: str) -> None:
        for label, size in VIEWPORTS.items():
            await self.page.set_viewport_size(size)
            scroll, inner = await self.page.evaluate(
                "[document.documentElement.scrollWidth, window.innerWidth]"
            )
            if scroll > inner:
                self.too_wide.append(f"{name} at {label}: {scroll} px in a {inner} px window")
            await screenshot(self.page, f"{name}-{label}")
        await self.page.set_viewport_size(VIEWPORTS["desktop"])


async def test_an_operator_logs_in_opens_a_dead_letter_replays_it_and_sees_the_event_handled(
    browser_page: Any,
    bench: Workbench,
    start_loops_webhooks: StartLoopsWebhooks,
    free_port: Callable[[], int],
    redis_url: str,
) -> None:
    page = browser_page
    console: list[str] = []
    page.on(
        "console",
        lambda message: (
            message.type in ("error", "warning")
            and console.append(f"{message.type}: {message.text}")
        ),
    )
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    widths = Widths(page)
    bench.write_handlers(HANDLERS)
    broken = bench.directory / "broken"
    broken.touch()
    bench.start_worker()
    for other_id in (LONGEST_ID, HEX_ID, long_event_id(2)):
        await bench.submit(event_id=other_id)
    event_id = await bench.submit(event_id=long_event_id(3))
    await bench.wait_for_status(event_id, "dead")
    dashboard = Dashboard(start_loops_webhooks, free_port(), redis_url)

    await page.goto(dashboard.base_url + "/")
    await page.wait_for_url(re.compile(r"/login\?next="))
    await widths.check("01-login")
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_selector("text=Handler outcomes per minute")
    assert page.url == dashboard.base_url + "/"
    await widths.check("02-overview")

    await page.click("nav >> text=Events")
    await page.wait_for_selector(f"text={event_id}")
    outcome = page.locator("table.list tbody tr", has_text=event_id).locator("td.outcome")
    assert await outcome.locator("li", has_text="award_loyalty_points").inner_text() == (
        "award_loyalty_points dead"
    )
    assert await outcome.locator("li", has_text="send_order_confirmation_email").inner_text() == (
        "send_order_confirmation_email done"
    )
    await widths.check("03-events")

    await page.click("nav >> text=Dead letters")
    await page.wait_for_selector("table.list tbody tr >> nth=3")
    await widths.check("04-dead-letters")

    row = page.locator("table.list tbody tr", has_text=event_id)
    await row.locator("a").first.click()
    await page.wait_for_selector("text=the loyalty partner refused the award")
    await widths.check("05-dead-letter")

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
    await widths.check("08-event-handled")
    handlers = page.locator("#handlers tbody")
    assert await handlers.locator("tr:not(.earlier)").count() == 2
    assert await handlers.locator("tr.earlier", has_text="before a replay").count() == 1
    assert len(bench.effects("awarded")) == 1
    assert console == []  # no script error, no Content-Security-Policy violation

    await page.goto(dashboard.base_url + "/events/" + long_event_id(9999))
    await page.wait_for_selector("text=not found")
    await widths.check("09-not-found")
    assert [line for line in console if "404 (Not Found)" not in line] == []

    await page.goto(dashboard.base_url + "/events/" + LONGEST_ID)
    await page.locator("h1 .status-dead").wait_for()
    await widths.check("10-event-longest-id")
    await page.goto(dashboard.base_url + "/dead-letters/" + quote(f"{LONGEST_ID}:{AWARD}"))
    await page.wait_for_selector("text=the loyalty partner refused the award")
    await widths.check("11-dead-letter-longest-id")

    assert widths.too_wide == [], "\n".join(widths.too_wide)


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
