"""The dashboard's application factory: synchronous, no I/O; Redis is opened in a cleanup context.

Two middlewares: the outer one answers every error in one shape (JSON under ``/api/``, an
HTML page elsewhere) and logs one line per request; the inner one is the gate: who is asking
(``auth.Gate``, less logged-out sessions and clients shut out for guessing), and whether a
state-changing request carries its CSRF token. Every response the app prepares, errors and
assets included, carries ``SECURITY_HEADERS``.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web
from markupsafe import Markup, escape

from loops_webhooks.dashboard import api, pages
from loops_webhooks.dashboard.app_keys import (
    GATE,
    IDENTITY,
    OPERATOR_API,
    READ_ONLY,
    REDIS_URL,
    REVOKED_SESSIONS,
    SETTINGS,
    TOKEN_GUESSES,
)
from loops_webhooks.dashboard.auth import CSRF_HEADER, Credential, Gate
from loops_webhooks.dashboard.errors import (
    Forbidden,
    ForeignHost,
    TooManyWrongTokens,
    Unauthenticated,
    WrongToken,
    api_error,
    status_for,
)
from loops_webhooks.dashboard.revoked_sessions import RevokedSessions
from loops_webhooks.dashboard.token_guesses import TokenGuesses
from loops_webhooks.settings import Settings
from loops_webhooks.workers.connection import open_redis
from loops_webhooks.workers.operator_api import OperatorApi

__all__ = ["SECURITY_HEADERS", "create_app"]

log = structlog.get_logger(logger_name="loops_webhooks.dashboard")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HERE = Path(__file__).parent
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_PATHS = frozenset({"/login"})
REDIS_TIMEOUT_SECONDS = 10.0

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
"""No framing (clickjacking), no script or style but our own files, no sniffing, no URL sent
to other sites, nothing kept in caches: the pages show payloads and personal data."""


def create_app(settings: Settings, redis_url: str, *, token: str | None) -> web.Application:
    """The dashboard; ``token=None`` lets everyone in (``--no-auth``: the CLI allows it on a
    loopback host only). ``LOOPS_DASHBOARD_READ_ONLY`` refuses replay, purge, pause,
    resume and retry now."""
    app = web.Application(middlewares=[_answer_and_log, _gate])
    app[SETTINGS] = settings
    app[REDIS_URL] = redis_url
    app[GATE] = Gate(token)
    app[READ_ONLY] = settings.dashboard_read_only
    environment = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        context_processors=[_page_context],
        undefined=jinja2.StrictUndefined,
    )
    environment.filters["time"] = _time
    environment.filters["path"] = lambda value: quote(str(value), safe="")
    environment.filters["function_name"] = _function_name
    environment.filters["breakable"] = _breakable
    app.cleanup_ctx.append(_redis_context)
    app.on_response_prepare.append(_add_security_headers)
    pages.add_routes(app)
    api.add_routes(app)
    app.router.add_static("/static/", HERE / "static")
    return app


def _time(ms: int | None) -> str:
    if not ms:
        return "\u2013"
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


SEAMS = re.compile(r"(?<=[._:/?&=,-])")


def _breakable(value: object) -> Markup:
    """Escaped text with a line-break opportunity (``<wbr>``) after each ``. _ : / ? & = , -``,
    so long ids, handler names and URLs wrap at their seams; the CSS breaks anywhere else
    only if a piece is still wider than its column."""
    return Markup("<wbr>").join(escape(piece) for piece in SEAMS.split(str(value)))


def _function_name(handler: str) -> str:
    """``myshop.webhooks:award_points`` as ``award_points``, for narrow columns (the full
    name is in the element's title)."""
    return handler.rpartition(":")[2] or handler


async def _page_context(request: web.Request) -> dict[str, object]:
    return _page_values(request)


def _page_values(request: web.Request) -> dict[str, object]:
    """What ``base.html`` needs; the error page passes it itself, since an error raised before
    aiohttp-jinja2's context middleware ran (by the gate) leaves no context behind."""
    identity = request.get(IDENTITY)
    return {
        "csrf_token": identity.csrf_token if identity is not None else "",
        "read_only": request.app[READ_ONLY],
        "open_access": request.app[GATE].open,
        "path": request.path,
    }


async def _redis_context(app: web.Application) -> AsyncIterator[None]:
    redis = open_redis(
        app[REDIS_URL],
        sentinel_password=app[SETTINGS].sentinel_password,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        health_check_interval=30,
    )
    settings = app[SETTINGS]
    app[OPERATOR_API] = OperatorApi(
        redis,
        queue_name=settings.queue_name,
        dedupe_ttl_seconds=settings.dedupe_ttl_seconds,
        replay_history_limit=settings.replay_history_limit,
        search_metadata_keys=settings.search_metadata_keys,
    )
    app[TOKEN_GUESSES] = TokenGuesses(redis, settings.trusted_proxies)
    app[REVOKED_SESSIONS] = RevokedSessions(redis)
    yield
    await redis.aclose()


def _is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


async def _add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


def _is_loopback_host(host: str) -> bool:
    """Whether a Host header names this machine's loopback: ``localhost``, 127.0.0.0/8 or
    ``[::1]``, with any port."""
    if host.startswith("["):
        name, bracket, _ = host[1:].partition("]")
        if not bracket:
            return False
    else:
        name = host.rpartition(":")[0] if ":" in host else host
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@web.middleware
async def _gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    gate = request.app[GATE]
    if gate.open and not _is_loopback_host(request.headers.get("Host", "")):
        raise ForeignHost(
            "this dashboard runs without authentication (--no-auth) and answers only requests "
            "for a loopback host (localhost, 127.0.0.1, [::1]); open it by one of those names"
        )
    if request.path in PUBLIC_PATHS or request.path.startswith("/static/"):
        return await handler(request)
    try:
        identity = gate.identify(request)
    except WrongToken:
        await request.app[TOKEN_GUESSES].wrong(request)
        raise
    if identity is not None and identity.credential is Credential.BEARER:
        await request.app[TOKEN_GUESSES].check(request)
    if (
        identity is not None
        and identity.session is not None
        and await request.app[REVOKED_SESSIONS].is_revoked(identity.session)
    ):
        identity = None  # logged out: as if it sent no cookie
    if identity is None:
        if _is_api(request) or request.method not in SAFE_METHODS:
            raise Unauthenticated(
                "log in, or send the token as 'Authorization: Bearer <LOOPS_DASHBOARD_TOKEN>'"
            )
        raise web.HTTPFound("/login?next=" + quote(request.path_qs, safe=""))
    if (
        request.method not in SAFE_METHODS
        and identity.needs_csrf
        and not request.app[GATE].csrf_matches(identity, request)
    ):
        raise Forbidden(
            "csrf",
            f"a state-changing request from the page must send its CSRF token in {CSRF_HEADER}",
        )
    request[IDENTITY] = identity
    return await handler(request)


@web.middleware
async def _answer_and_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as http_error:
        if http_error.status < 400:
            _log_request(request, http_error.status, started)
            raise
        code = http_error.reason.lower().replace(" ", "_")
        response = _error(request, http_error.status, code, http_error.reason)
    except Exception as error:
        known = status_for(error)
        if known is None:
            log.exception("unexpected error", path=request.path)
            known = (500, "internal_error", "unexpected error; see the dashboard's log")
        elif known[0] == 503:
            log.warning("redis unavailable", path=request.path, error=type(error).__name__)
        elif known[0] == 429:
            log.warning(
                "dashboard token refused: too many wrong tokens from this client",
                method=request.method,
                path=request.path,
                remote=request.remote,
            )
        elif known[0] == 401:
            log.warning(
                "dashboard request unauthenticated",
                reason=known[2],
                method=request.method,
                path=request.path,
                remote=request.remote,
            )
        response = _error(request, *known)
        if isinstance(error, TooManyWrongTokens):
            response.headers["Retry-After"] = str(error.retry_after)
    _log_request(request, response.status, started)
    return response


def _log_request(request: web.Request, status: int, started: float) -> None:
    log.info(
        "request",
        method=request.method,
        path=request.path,
        status=status,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
    )


def _error(request: web.Request, status: int, code: str, detail: str) -> web.Response:
    if _is_api(request) or request.method not in SAFE_METHODS:
        return api_error(status, code, detail)
    context = {**_page_values(request), "status": status, "code": code, "detail": detail}
    return aiohttp_jinja2.render_template("error.html", request, context, status=status)
