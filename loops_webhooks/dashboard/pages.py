"""The dashboard's pages, rendered on the server from the operator API (aiohttp-jinja2).

Reading needs no script at all; the replay, purge, pause, resume, retry-now and logout
buttons call the JSON API with a few lines of ``static/dashboard.js``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
import orjson
import structlog
from aiohttp import web
from yarl import URL

from loops_webhooks.dashboard import queries
from loops_webhooks.dashboard.api import pretty_body
from loops_webhooks.dashboard.app_keys import (
    GATE,
    IDENTITY,
    OPERATOR_API,
    REVOKED_SESSIONS,
    SETTINGS,
    TOKEN_GUESSES,
)
from loops_webhooks.dashboard.auth import SESSION_COOKIE, SESSION_MAX_AGE_SECONDS
from loops_webhooks.dashboard.chart import OUTCOMES, outcome_chart
from loops_webhooks.dashboard.errors import TooManyWrongTokens
from loops_webhooks.workers.dead_letters import DeadLetterReason
from loops_webhooks.workers.event_store import EventStatus, HandlerStatus
from loops_webhooks.workers.operator_api import NotFound
from loops_webhooks.workers.search import BusinessKeys

__all__ = ["add_routes", "is_https"]

log = structlog.get_logger(logger_name="loops_webhooks.dashboard")

OVERVIEW_REFRESH_SECONDS = 10


def is_https(request: web.Request) -> bool:
    """Whether the browser reached us over https, itself or through a TLS-ending proxy."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def _local_path(target: str) -> str:
    """Where to go after logging in: a path of this site only, never another site.

    Anything with a control character or a backslash is refused outright: URL parsers drop
    tabs and newlines, so ``/<tab>/evil.example`` would leave as ``//evil.example``.
    """
    if any(ord(char) < 0x20 or char in "\\\x7f" for char in target):
        return "/"
    url = URL(target)
    if url.is_absolute() or url.scheme or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def _next_page(request: web.Request, cursor: str | None) -> str | None:
    if cursor is None:
        return None
    return str(request.rel_url.update_query(cursor=cursor))


def _first_page(request: web.Request) -> str | None:
    if "cursor" not in request.query:
        return None
    return str(request.rel_url.without_query_params("cursor"))


async def overview(request: web.Request) -> web.Response:
    stats = await request.app[OPERATOR_API].stats()
    context = {
        "stats": stats,
        "chart": outcome_chart(stats.per_minute),
        "outcomes": OUTCOMES,
        "refresh_seconds": OVERVIEW_REFRESH_SECONDS,
    }
    return aiohttp_jinja2.render_template("overview.html", request, context)


async def events(request: web.Request) -> web.Response:
    """The events, filtered; the search box's value (``q``) opens the event of that id, or
    lists the events of that session, customer or searchable metadata value."""
    api = request.app[OPERATOR_API]
    wanted = request.query.get("q", "").strip()
    if wanted and "cursor" not in request.query:
        try:
            await api.get_event(wanted)
        except NotFound:
            pass
        else:
            raise web.HTTPFound(f"/events/{quote(wanted, safe='')}")
    page = await api.list_events(
        queries.event_filter(request.query),
        limit=queries.limit_of(request.query),
        cursor=request.query.get("cursor") or None,
    )
    context = {
        "page": page,
        "query": request.query,
        "statuses": list(EventStatus),
        "searched": wanted,
        "metadata_keys": request.app[SETTINGS].search_metadata_keys,
        "next_page": _next_page(request, page.next_cursor),
        "first_page": _first_page(request),
    }
    return aiohttp_jinja2.render_template("events.html", request, context)


async def event(request: web.Request) -> web.Response:
    api = request.app[OPERATOR_API]
    event_id = request.match_info["event_id"]
    stored = await api.get_event(event_id)
    context = {
        "event": stored,
        "found_by": BusinessKeys.of(stored.search_terms),
        "letters": await api.dead_letters_of_event(event_id),
        "body": pretty_body(stored.raw),
        "retry_scheduled": stored.status == EventStatus.PENDING
        and any(state.status == HandlerStatus.RETRY for state in stored.handlers.values()),
    }
    return aiohttp_jinja2.render_template("event.html", request, context)


async def handlers(request: web.Request) -> web.Response:
    overviews = await request.app[OPERATOR_API].handlers()
    context = {"handlers": overviews}
    return aiohttp_jinja2.render_template("handlers.html", request, context)


async def dead_letters(request: web.Request) -> web.Response:
    where = queries.dead_letter_filter(request.query)
    page = await request.app[OPERATOR_API].list_dead_letters(
        where, limit=queries.limit_of(request.query), cursor=request.query.get("cursor") or None
    )
    selected_filter: dict[str, str | list[str]] = {
        name: request.query[name]
        for name in queries.DEAD_LETTER_FILTER_FIELDS
        if name != "metadata" and request.query.get(name, "").strip()
    }
    if metadata := [pair for pair in request.query.getall("metadata", []) if pair.strip()]:
        selected_filter["metadata"] = metadata
    context = {
        "page": page,
        "query": request.query,
        "reasons": list(DeadLetterReason),
        "filter_json": orjson.dumps(selected_filter).decode(),
        "filtered": bool(selected_filter),
        "next_page": _next_page(request, page.next_cursor),
        "first_page": _first_page(request),
    }
    return aiohttp_jinja2.render_template("dead_letters.html", request, context)


async def dead_letter(request: web.Request) -> web.Response:
    letter = await request.app[OPERATOR_API].get_dead_letter(request.match_info["letter_id"])
    context = {
        "letter": letter,
        "headers": orjson.loads(letter.headers or "{}"),
        "body": pretty_body(letter.raw),
    }
    return aiohttp_jinja2.render_template("dead_letter.html", request, context)


async def login_form(request: web.Request) -> web.Response:
    if request.app[GATE].open:
        raise web.HTTPFound("/")
    context: dict[str, Any] = {"next": _local_path(request.query.get("next", "/")), "error": None}
    return aiohttp_jinja2.render_template("login.html", request, context)


async def login(request: web.Request) -> web.Response:
    gate = request.app[GATE]
    if gate.open:
        raise web.HTTPSeeOther("/")
    form = await request.post()
    token = form.get("token")
    target = _local_path(str(form.get("next", "/")))
    guesses = request.app[TOKEN_GUESSES]
    try:
        if not isinstance(token, str) or not gate.token_matches(token.strip()):
            reason = "wrong token" if token else "no token"
            log.warning("dashboard login refused", reason=reason, remote=request.remote)
            await guesses.wrong(request)
            context = {"next": target, "error": "That token is not the dashboard's token."}
            return aiohttp_jinja2.render_template("login.html", request, context, status=401)
        await guesses.check(request)
    except TooManyWrongTokens as refused:
        log.warning("dashboard login refused: too many wrong tokens", remote=request.remote)
        wait = f"try again in {refused.retry_after} s"
        context = {"next": target, "error": f"Too many wrong tokens from your address; {wait}."}
        page = aiohttp_jinja2.render_template("login.html", request, context, status=429)
        page.headers["Retry-After"] = str(refused.retry_after)
        return page
    log.info("dashboard login", remote=request.remote)
    response = web.HTTPSeeOther(target)
    response.set_cookie(
        SESSION_COOKIE,
        gate.new_session(),
        max_age=SESSION_MAX_AGE_SECONDS,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=is_https(request),
    )
    raise response


async def logout(request: web.Request) -> web.Response:
    """Revokes the session, so its cookie no longer works even if it was copied."""
    identity = request.get(IDENTITY)
    if identity is not None and identity.session is not None:
        await request.app[REVOKED_SESSIONS].revoke(identity.session)
    response = web.Response(status=204)
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", overview)
    app.router.add_get("/events", events)
    app.router.add_get("/events/{event_id}", event)
    app.router.add_get("/dead-letters", dead_letters)
    app.router.add_get("/handlers", handlers)
    app.router.add_get("/dead-letters/{letter_id:.+}", dead_letter)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
