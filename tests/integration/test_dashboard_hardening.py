"""The dashboard against guessing, framing, foreign hosts and copied cookies: a real dashboard
process on loopback, a real Redis, real HTTP."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from loops_webhooks.dashboard.app import SECURITY_HEADERS
from loops_webhooks.dashboard.auth import SESSION_COOKIE
from loops_webhooks.dashboard.token_guesses import LIMIT, WINDOW_SECONDS
from loops_webhooks.workers.keys import dashboard_wrong_tokens_key
from tests.integration.dashboard_harness import TOKEN, Dashboard, log_in
from tests.support.processes import StartLoopsWebhooks

LOOPS_WEBHOOKS = str(Path(sys.executable).parent / "loops-webhooks")
SHORT_TOKEN = "x" * 31
MAKE_ONE = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


@pytest.fixture
def dashboard(
    start_loops_webhooks: StartLoopsWebhooks, free_port: Callable[[], int], redis_url: str
) -> Dashboard:
    return Dashboard(start_loops_webhooks, free_port(), redis_url)


def run(
    command: str, tmp_path: Path, redis_url: str, token: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LOOPS_WEBHOOKS, command],
        env={"REDIS_URL": redis_url, "LOOPS_DASHBOARD_TOKEN": token, "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("command", ["dashboard", "dev"])
def test_a_token_shorter_than_32_characters_stops_the_command_with_exit_2_saying_how_to_make_one(
    command: str, tmp_path: Path, redis_url: str
) -> None:
    result = run(command, tmp_path, redis_url, SHORT_TOKEN)

    assert result.returncode == 2, result.stderr
    assert "LOOPS_DASHBOARD_TOKEN is too short (31 characters)" in result.stderr
    assert MAKE_ONE in result.stderr
    assert SHORT_TOKEN not in result.stderr + result.stdout


async def test_every_answer_carries_the_security_headers(dashboard: Dashboard) -> None:
    async with dashboard.client() as anonymous, dashboard.client(bearer=TOKEN) as bearer:
        answers = [
            await anonymous.get("/login"),
            await anonymous.get("/", allow_redirects=False),
            await anonymous.post("/login", data={"token": "wrong"}),
            await anonymous.get("/static/dashboard.css"),
            await anonymous.get("/static/dashboard.js"),
            await anonymous.get("/api/stats"),
            await bearer.get("/api/stats"),
            await bearer.get("/api/events/evt_nope"),
            await bearer.get("/api/events", params={"limit": "0"}),
            await bearer.get("/no-such-page"),
            await bearer.get("/events/evt_nope"),
            await bearer.post("/api/dead-letters/replay", data=b"not json"),
        ]
        await log_in(anonymous)
        answers += [await anonymous.get(path) for path in ("/", "/events", "/dead-letters")]
    statuses = [answer.status for answer in answers]
    for answer in answers:
        answer.release()

    assert statuses == [200, 302, 401, 200, 200, 401, 200, 404, 400, 404, 404, 400, 200, 200, 200]
    for answer in answers:
        shown = {name: answer.headers.get(name) for name in SECURITY_HEADERS}
        assert shown == SECURITY_HEADERS, answer.url
    policy = SECURITY_HEADERS["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy


async def test_after_ten_wrong_tokens_a_client_gets_429_with_retry_after_until_its_minute_ends(
    dashboard: Dashboard, redis: Redis
) -> None:
    async with dashboard.client() as browser:
        await log_in(browser)  # a session from before the guessing
        for _ in range(3 * LIMIT):  # right tokens are not counted
            async with dashboard.client(bearer=TOKEN) as right, right.get("/api/stats") as ok:
                assert ok.status == 200
        for guess in range(LIMIT):
            async with (
                dashboard.client(bearer=f"guess-{guess}") as wrong,
                wrong.get("/api/stats") as refused,
            ):
                assert refused.status == 401
        async with browser.post("/login", data={"token": "guess-10"}) as form:
            assert form.status == 429
            assert 0 < int(form.headers["Retry-After"]) <= WINDOW_SECONDS
            assert "Too many wrong tokens" in await form.text()
        async with dashboard.client(bearer=TOKEN) as right, right.get("/api/stats") as shut_out:
            assert shut_out.status == 429
            assert 0 < int(shut_out.headers["Retry-After"]) <= WINDOW_SECONDS
            assert (await shut_out.json())["error"] == "too_many_wrong_tokens"
        async with dashboard.client() as other, other.post("/login", data={"token": TOKEN}) as form:
            assert form.status == 429  # the right token too, on the form
        async with browser.get("/api/stats") as by_cookie:
            assert by_cookie.status == 200  # a session is not a guess

        # The minute passes: the window's counter expires (shortened here, not waited for).
        assert await redis.pexpire(dashboard_wrong_tokens_key("127.0.0.1"), 1)
        await asyncio.sleep(0.05)
        async with dashboard.client(bearer=TOKEN) as right, right.get("/api/stats") as again:
            assert again.status == 200
        async with dashboard.client(bearer="guess-11") as wrong, wrong.get("/api/stats") as anew:
            assert anew.status == 401
    assert "too many wrong tokens" in dashboard.process.output()


async def test_behind_a_trusted_proxy_wrong_tokens_are_counted_per_forwarded_address(
    start_loops_webhooks: StartLoopsWebhooks, free_port: Callable[[], int], redis_url: str
) -> None:
    proxied = Dashboard(
        start_loops_webhooks,
        free_port(),
        redis_url,
        settings={"LOOPS_DASHBOARD_TRUSTED_PROXIES": "10.1.0.0/16, 127.0.0.1"},
    )

    def forwarded(address: str) -> dict[str, str]:
        return {"X-Forwarded-For": f"{address}, 10.1.2.3"}

    async with proxied.client(bearer="wrong-token") as wrong:
        for _ in range(LIMIT):
            async with wrong.get("/api/stats", headers=forwarded("203.0.113.7")) as refused:
                assert refused.status == 401
        async with wrong.get("/api/stats", headers=forwarded("203.0.113.7")) as shut_out:
            assert shut_out.status == 429
    async with proxied.client(bearer=TOKEN) as right:
        async with right.get("/api/stats", headers=forwarded("203.0.113.7")) as shut_out:
            assert shut_out.status == 429
        async with right.get("/api/stats", headers=forwarded("203.0.113.8")) as other:
            assert other.status == 200
        spoofed = {"X-Forwarded-For": "203.0.113.8, 203.0.113.7, 10.1.2.3"}
        async with right.get("/api/stats", headers=spoofed) as still_shut_out:
            assert still_shut_out.status == 429  # only what the trusted proxies added counts


async def test_without_trusted_proxies_x_forwarded_for_is_ignored(dashboard: Dashboard) -> None:
    async with dashboard.client(bearer="wrong-token") as wrong:
        for guess in range(LIMIT):
            headers = {"X-Forwarded-For": f"203.0.113.{guess}"}
            async with wrong.get("/api/stats", headers=headers) as refused:
                assert refused.status == 401
    async with dashboard.client(bearer=TOKEN) as right:
        headers = {"X-Forwarded-For": "198.51.100.1"}
        async with right.get("/api/stats", headers=headers) as shut_out:
            assert shut_out.status == 429


async def test_a_no_auth_dashboard_answers_only_requests_for_a_loopback_host(
    start_loops_webhooks: StartLoopsWebhooks, free_port: Callable[[], int], redis_url: str
) -> None:
    port = free_port()
    open_dashboard = Dashboard(
        start_loops_webhooks, port, redis_url, token=None, extra=("--no-auth",)
    )
    async with open_dashboard.client() as client:
        for host in ("localhost", f"localhost:{port}", "127.0.0.1", "127.1.2.3:80", "[::1]:8081"):
            async with client.get("/api/stats", headers={"Host": host}) as answer:
                assert answer.status == 200, host
        for host in (
            "evil.example",
            f"evil.example:{port}",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "10.0.0.1",
            "[::2]",
        ):
            for path in ("/api/stats", "/", "/static/dashboard.js"):
                async with client.get(path, headers={"Host": host}) as refused:
                    assert refused.status == 421, (host, path)
                    assert refused.headers["X-Frame-Options"] == "DENY"
                    assert "loopback" in await refused.text()
        async with client.get("/api/stats", headers={"Host": "evil.example"}) as refused:
            assert (await refused.json())["error"] == "misdirected_request"
        async with client.get("/", headers={"Host": "evil.example"}) as page:
            assert '<meta name="csrf-token" content="">' in await page.text()


async def test_a_session_cookie_used_after_its_logout_is_401(dashboard: Dashboard) -> None:
    async with dashboard.client() as browser:
        csrf = await log_in(browser)
        [cookie] = [c for c in browser.cookie_jar if c.key == SESSION_COOKIE]
        copied = {"Cookie": f"{SESSION_COOKIE}={cookie.value}"}
        async with aiohttp.ClientSession(dashboard.base_url, headers=copied) as thief:
            async with thief.get("/api/stats") as before:
                assert before.status == 200
            async with browser.post("/logout", headers={"X-CSRF-Token": csrf}) as logout:
                assert logout.status == 204
            async with thief.get("/api/stats") as after:
                assert after.status == 401
            async with thief.get("/dead-letters", allow_redirects=False) as page:
                assert page.status == 302
                assert page.headers["Location"].startswith("/login")
        await log_in(browser)  # a new session works
        async with browser.get("/api/stats") as fresh:
            assert fresh.status == 200


async def test_while_redis_is_unreachable_login_pages_and_the_api_answer_503_not_500(
    start_loops_webhooks: StartLoopsWebhooks, free_port: Callable[[], int]
) -> None:
    nothing_listens = f"redis://127.0.0.1:{free_port()}/0"
    dashboard = Dashboard(start_loops_webhooks, free_port(), nothing_listens)
    async with dashboard.client() as anonymous, dashboard.client(bearer=TOKEN) as bearer:
        async with anonymous.post("/login", data={"token": TOKEN}) as login:
            login_status = login.status
        async with bearer.get("/api/stats") as stats:
            stats_status, stats_body = stats.status, await stats.json()
        async with bearer.get("/events") as page:
            page_status = page.status

    assert (login_status, stats_status, page_status) == (503, 503, 503)
    assert stats_body["error"] == "redis_unavailable"
