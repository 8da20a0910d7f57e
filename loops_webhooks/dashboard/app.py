"""The dashboard's application factory: synchronous, no I/O; Redis is opened in a cleanup context.

Two middlewares: the outer one answers every error in one shape (JSON under ``/api/``, an
HTML page elsewhere) and logs one line per request; the inner one is the gate: who is asking
(``auth.Gate``), and whether a state-changing request carries its CSRF token.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web

from loops_webhooks.dashboard import api, pages
from loops_webhooks.dashboard.app_keys import (
    GATE,
    IDENTITY,
    OPERATOR_API,
    READ_ONLY,
    REDIS_URL,
    SETTINGS,
)
from loops_webhooks.dashboard.auth import CSRF_HEADER, Gate
from loops_webhooks.dashboard.errors import Forbidden, Unauthenticated, api_error, status_for
from loops_webhooks.settings import Settings
from loops_webhooks.workers.connection import open_redis
from loops_webhooks.workers.operator_api import OperatorApi

__all__ = ["create_app"]

log = structlog.get_logger(logger_name="loops_webhooks.dashboard")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HERE = Path(__file__).parent
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_PATHS = frozenset({"/login"})
REDIS_TIMEOUT_SECONDS = 10.0


def create_app(settings: Settings, redis_url: str, *, token: str | None) -> web.Application:
    """The dashboard; ``token=None`` lets everyone in (``--no-auth``: the CLI allows it on a
    loopback host only). ``LOOPS_DASHBOARD_READ_ONLY`` refuses replay and purge."""
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
    app.cleanup_ctx.append(_redis_context)
    pages.add_routes(app)
    api.add_routes(app)
    app.router.add_static("/static/", HERE / "static")
    return app


def _time(ms: int | None) -> str:
    if not ms:
        return "\u2013"
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


async def _page_context(request: web.Request) -> dict[str, object]:
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
        redis, queue_name=settings.queue_name, dedupe_ttl_seconds=settings.dedupe_ttl_seconds
    )
    yield
    await redis.aclose()


def _is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


@web.middleware
async def _gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS or request.path.startswith("/static/"):
        return await handler(request)
    identity = request.app[GATE].identify(request)
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
        elif known[0] == 401:
            log.warning(
                "dashboard request unauthenticated",
                reason=known[2],
                method=request.method,
                path=request.path,
                remote=request.remote,
            )
        response = _error(request, *known)
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
    context = {"status": status, "code": code, "detail": detail}
    return aiohttp_jinja2.render_template("error.html", request, context, status=status)
