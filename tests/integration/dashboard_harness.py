"""What the dashboard tests share: a real ``loops-webhooks dashboard`` process on loopback, a
worker whose one handler fails while a flag file exists, and an HTTP client for both.

The handler module is written by ``worker_harness.Workbench``; events enter through the
receiver's producer API and become dead letters the way they do in production.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import aiohttp

from tests.integration.worker_harness import Workbench
from tests.support.processes import StartLoopsWebhooks

__all__ = [
    "FAILING_HANDLER",
    "TOKEN",
    "Dashboard",
    "dashboard_client",
    "failing_handlers",
    "log_in",
]

TOKEN = "dashboard-test-token-3f9a1c7e-5b20d84e6a"
FAILING_HANDLER = "shop_handlers:notify"

HANDLERS = """
BROKEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "broken")


@router.on("checkout.session.completed", name="shop_handlers:fulfil")
async def fulfil(event, ctx: HandlerContext) -> None:
    record(ctx, "fulfilled")


@router.on("checkout.session.completed", name="shop_handlers:notify", max_attempts=1)
async def notify(event, ctx: HandlerContext) -> None:
    if os.path.exists(BROKEN):
        raise RuntimeError("mail server said no")
    record(ctx, "notified")
"""


def failing_handlers(bench: Workbench) -> Path:
    """Write the handlers; returns the flag file whose presence breaks ``notify`` (present)."""
    bench.write_handlers(HANDLERS)
    flag = bench.directory / "broken"
    flag.touch()
    return flag


def dashboard_client(base_url: str, *, bearer: str | None = None) -> aiohttp.ClientSession:
    """A client that keeps cookies of 127.0.0.1 (aiohttp's default jar drops them)."""
    headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else None
    return aiohttp.ClientSession(
        base_url, headers=headers, cookie_jar=aiohttp.CookieJar(unsafe=True)
    )


async def log_in(client: aiohttp.ClientSession, token: str = TOKEN) -> str:
    """Log in through the form; returns the CSRF token the pages carry."""
    async with client.post("/login", data={"token": token}) as response:
        assert response.status == 200, await response.text()
        page = await response.text()
    marker = '<meta name="csrf-token" content="'
    start = page.index(marker) + len(marker)
    return page[start : page.index('"', start)]


class Dashboard:
    """A running dashboard process and how to reach it."""

    def __init__(
        self,
        start_loops_webhooks: StartLoopsWebhooks,
        port: int,
        redis_url: str,
        *,
        read_only: bool = False,
        token: str | None = TOKEN,
        extra: tuple[str, ...] = (),
        settings: Mapping[str, str] | None = None,
    ) -> None:
        env = {"REDIS_URL": redis_url, "LOOPS_LOG_FORMAT": "json", **(settings or {})}
        if token is not None:
            env["LOOPS_DASHBOARD_TOKEN"] = token
        if read_only:
            env["LOOPS_DASHBOARD_READ_ONLY"] = "true"
        self.process = start_loops_webhooks(
            "dashboard", "--port", str(port), *extra, env=env, port=port
        )
        self.base_url = f"http://127.0.0.1:{port}"

    def client(self, *, bearer: str | None = None) -> aiohttp.ClientSession:
        return dashboard_client(self.base_url, bearer=bearer)
