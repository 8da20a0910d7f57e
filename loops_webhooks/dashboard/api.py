"""The JSON API under ``/api/``, the one the pages' buttons call: lists are
``{"items": [...], "next_cursor": ...}`` pages, errors ``{"error": ..., "detail": ...}``.

Times are ISO 8601 in UTC with milliseconds. Replay and purge take ``{"ids": [...]}`` or
``{"filter": {...}}`` (``{}`` is every dead letter) and ``"dry_run"``; they answer counts,
and each one that changes something is logged with the ids it touched. A handler's pause
(``{"reason": ..., "force": ...}``, both optional) and resume, and an event's retry-now,
follow the same read-only rule and are logged with how the caller was authenticated.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from aiohttp import web

from loops_webhooks.dashboard import queries
from loops_webhooks.dashboard.app_keys import IDENTITY, OPERATOR_API, READ_ONLY
from loops_webhooks.dashboard.auth import Credential
from loops_webhooks.dashboard.errors import BadRequest, Conflict, Forbidden, json_response
from loops_webhooks.workers.admission import HandlerPause
from loops_webhooks.workers.dead_letters import DeadLetter
from loops_webhooks.workers.event_store import HandlerState, StoredEvent
from loops_webhooks.workers.operator_api import DeadLetterFilter, EventSummary, HandlerOverview
from loops_webhooks.workers.search import BusinessKeys

__all__ = ["add_routes", "handler_item", "iso_time", "pretty_body"]

log = structlog.get_logger(logger_name="loops_webhooks.dashboard")

MAX_IDS = 10_000
MAX_REASON_LENGTH = 500


def iso_time(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def pretty_body(raw: bytes) -> str:
    """The raw body indented if it is JSON, else as text (undecodable bytes as U+FFFD)."""
    try:
        return orjson.dumps(orjson.loads(raw), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace")


def _event_item(event: EventSummary) -> dict[str, Any]:
    found_by = event.business_keys
    return {
        "id": event.id,
        "type": event.type,
        "status": event.status,
        "received_at": iso_time(event.received_at_ms),
        "finished_at": iso_time(event.finished_at_ms),
        "outcome": event.outcome,
        "session": found_by.session_id,
        "customer": found_by.customer_id,
        "metadata": found_by.metadata,
        "erased_at": iso_time(event.erased_at_ms),
        "handler_statuses": dict(event.handlers),
    }


def _handler_state(state: HandlerState) -> dict[str, Any]:
    return {
        "status": state.status,
        "attempts": state.attempts,
        "first_attempt_at": iso_time(state.first_attempt_at),
        "last_attempt_at": iso_time(state.last_attempt_at),
        "next_attempt_at": iso_time(state.next_attempt_at),
        "last_error": state.last_error,
        "duration_ms": state.duration_ms,
    }


def _event(event: StoredEvent, letters: list[DeadLetter]) -> dict[str, Any]:
    found_by = BusinessKeys.of(event.search_terms)
    return {
        "id": event.event_id,
        "session": found_by.session_id,
        "customer": found_by.customer_id,
        "metadata": found_by.metadata,
        "type": event.event_type,
        "status": event.status,
        "outcome": event.outcome,
        "received_at": iso_time(event.received_at_ms),
        "finished_at": iso_time(event.finished_at_ms),
        "handlers": {name: _handler_state(state) for name, state in event.handlers.items()},
        "before_replays": {
            name: [_handler_state(state) for state in states]
            for name, states in event.history.items()
        },
        "dead_letters": [letter.id for letter in letters],
        "erased_at": iso_time(event.erased_at_ms),
        "headers": event.headers,
        "raw": event.raw.decode(errors="replace"),
    }


def _letter(letter: DeadLetter, *, full: bool) -> dict[str, Any]:
    data: dict[str, Any] = asdict(letter)
    for name in ("first_attempt_at", "last_attempt_at", "dead_lettered_at", "received_at"):
        data[name] = iso_time(data[name])
    data["erased_at"] = iso_time(letter.erased_at)
    data.pop("raw")
    data.pop("headers")
    data.pop("traceback")
    if full:
        data["traceback"] = letter.traceback
        data["headers"] = orjson.loads(letter.headers or "{}")
        data["raw"] = letter.raw.decode(errors="replace")
    return data


async def stats(request: web.Request) -> web.Response:
    return json_response(asdict(await request.app[OPERATOR_API].stats()))


async def list_events(request: web.Request) -> web.Response:
    page = await request.app[OPERATOR_API].list_events(
        queries.event_filter(request.query),
        limit=queries.limit_of(request.query),
        cursor=request.query.get("cursor") or None,
    )
    return json_response(
        {"items": [_event_item(e) for e in page.items], "next_cursor": page.next_cursor}
    )


async def get_event(request: web.Request) -> web.Response:
    api = request.app[OPERATOR_API]
    event_id = request.match_info["event_id"]
    event = await api.get_event(event_id)
    return json_response(_event(event, await api.dead_letters_of_event(event_id)))


async def list_dead_letters(request: web.Request) -> web.Response:
    page = await request.app[OPERATOR_API].list_dead_letters(
        queries.dead_letter_filter(request.query),
        limit=queries.limit_of(request.query),
        cursor=request.query.get("cursor") or None,
    )
    return json_response(
        {
            "items": [_letter(letter, full=False) for letter in page.items],
            "next_cursor": page.next_cursor,
        }
    )


async def get_dead_letter(request: web.Request) -> web.Response:
    letter = await request.app[OPERATOR_API].get_dead_letter(request.match_info["letter_id"])
    return json_response(_letter(letter, full=True))


async def _body_object(request: web.Request, known: set[str]) -> dict[str, Any]:
    """A JSON object body of ``known`` fields only; an empty body is ``{}``."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"the body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = set(body) - known
    if unknown:
        expected = ", ".join(sorted(known)) or "none"
        raise BadRequest(f"unknown field(s) {sorted(unknown)}: expected {expected}")
    return body


async def _selection(request: web.Request) -> tuple[list[str], DeadLetterFilter | None, bool]:
    """(ids, filter, dry_run) of a replay or purge body; exactly one of ids and filter."""
    body = await _body_object(request, {"ids", "filter", "dry_run"})
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise BadRequest("dry_run: must be true or false")
    if ("ids" in body) == ("filter" in body):
        raise BadRequest('give exactly one of "ids" (a list of dead letter ids) and "filter"')
    if "ids" in body:
        ids = body["ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise BadRequest("ids: must be a non-empty list of dead letter ids (strings)")
        if len(ids) > MAX_IDS:
            raise BadRequest(f"ids: at most {MAX_IDS} at once; use a filter for more")
        return list(dict.fromkeys(ids)), None, dry_run
    where = body["filter"]
    if not isinstance(where, dict):
        raise BadRequest('filter: must be an object, e.g. {"handler": "...", "since": "2h"}')
    unknown = set(where) - set(queries.DEAD_LETTER_FILTER_FIELDS)
    if unknown:
        fields = ", ".join(queries.DEAD_LETTER_FILTER_FIELDS)
        raise BadRequest(f"filter: unknown field(s) {sorted(unknown)}; known: {fields}")
    return [], queries.dead_letter_filter(where), dry_run


async def _count(request: web.Request, ids: list[str], where: DeadLetterFilter | None) -> int:
    """What a dry run answers: how many letters the selection holds (NotFound for a named
    letter that is not stored, so the page says so before anyone confirms)."""
    api = request.app[OPERATOR_API]
    if ids:
        return len(await api.select_dead_letters(ids))
    return await api.count_dead_letters(where or DeadLetterFilter())


async def _selected(
    request: web.Request, action: str
) -> web.Response | tuple[list[DeadLetter], DeadLetterFilter | None]:
    """The letters a replay or purge request selects, or, for a dry run, the answer that
    counts them (allowed in read-only mode: it changes nothing)."""
    ids, where, dry_run = await _selection(request)
    if dry_run:
        return json_response({"dry_run": True, "matched": await _count(request, ids, where)})
    _refuse_if_read_only(request, action)
    return await request.app[OPERATOR_API].select_dead_letters(ids, where), where


def _refuse_if_read_only(request: web.Request, action: str) -> None:
    if request.app[READ_ONLY]:
        raise Forbidden(
            "read_only", f"this dashboard is read-only (LOOPS_DASHBOARD_READ_ONLY): no {action}"
        )


def _who(request: web.Request) -> dict[str, Any]:
    identity = request.get(IDENTITY)
    return {
        "credential": identity.credential if identity else None,
        "remote": request.remote,
    }


async def replay(request: web.Request) -> web.Response:
    selected = await _selected(request, "replay")
    if isinstance(selected, web.Response):
        return selected
    letters, where = selected
    report = await request.app[OPERATOR_API].replay_dead_letters(letters)
    log.info(
        "dead letters replayed",
        filter=asdict(where) if where else None,
        replayed=report.replayed,
        skipped=report.skipped,
        gone=report.gone,
        erased=report.erased,
        **_who(request),
    )
    return json_response(
        {
            "dry_run": False,
            "matched": len(letters),
            "replayed": len(report.replayed),
            "skipped": len(report.skipped),
            "gone": len(report.gone),
            "erased": len(report.erased),
            "event_ids": sorted({letter.event_id for letter in letters if letter.event_id}),
        }
    )


async def purge(request: web.Request) -> web.Response:
    selected = await _selected(request, "purge")
    if isinstance(selected, web.Response):
        return selected
    letters, where = selected
    purged = await request.app[OPERATOR_API].purge_dead_letters(letters)
    log.info(
        "dead letters purged",
        filter=asdict(where) if where else None,
        purged=[letter.id for letter in letters],
        count=purged,
        **_who(request),
    )
    return json_response({"dry_run": False, "matched": len(letters), "purged": purged})


def _pause_item(pause: HandlerPause | None) -> dict[str, Any] | None:
    if pause is None:
        return None
    return {"since": iso_time(pause.since_ms), "reason": pause.reason, "by": pause.by}


def handler_item(overview: HandlerOverview) -> dict[str, Any]:
    live = overview.live
    return {
        "name": overview.flow.name,
        "registered": live is not None,
        "concurrency": live.concurrency if live else None,
        "rate": live.rate if live else None,
        "paused": _pause_item(overview.flow.paused),
        "waiting": overview.flow.waiting,
    }


async def list_handlers(request: web.Request) -> web.Response:
    overviews = await request.app[OPERATOR_API].handlers()
    return json_response({"items": [handler_item(o) for o in overviews], "next_cursor": None})


def _authenticated_by(request: web.Request) -> str:
    """How a control was authenticated, as the pause state records it."""
    identity = request.get(IDENTITY)
    return "no-auth" if identity is None or identity.credential is Credential.NONE else "token"


async def pause_handler(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await _body_object(request, {"reason", "force"})
    reason, force = body.get("reason"), body.get("force", False)
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_LENGTH):
        raise BadRequest(f"reason: must be a string of at most {MAX_REASON_LENGTH} characters")
    if not isinstance(force, bool):
        raise BadRequest("force: must be true or false")
    _refuse_if_read_only(request, "pause")
    by = _authenticated_by(request)
    pause, made = await request.app[OPERATOR_API].pause_handler(
        name, reason=reason or None, by=by, force=force
    )
    if made:
        log.info("handler paused", handler=name, reason=pause.reason, by=by, **_who(request))
    return json_response({"name": name, "paused": _pause_item(pause), "already_paused": not made})


async def resume_handler(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await _body_object(request, set())
    _refuse_if_read_only(request, "resume")
    resumed = await request.app[OPERATOR_API].resume_handler(name)
    log.info(
        "handler resumed",
        handler=name,
        was_paused=resumed.was_paused,
        moved=resumed.moved,
        by=_authenticated_by(request),
        **_who(request),
    )
    return json_response({"name": name, "was_paused": resumed.was_paused, "queued": resumed.moved})


async def retry_now(request: web.Request) -> web.Response:
    event_id = request.match_info["event_id"]
    await _body_object(request, set())
    _refuse_if_read_only(request, "retry")
    made_due = await request.app[OPERATOR_API].retry_now(event_id)
    if not made_due:
        raise Conflict("nothing_scheduled", f"event {event_id!r} has no retry scheduled")
    log.info(
        "retries made due now",
        event_id=event_id,
        retries=made_due,
        by=_authenticated_by(request),
        **_who(request),
    )
    return json_response({"event_id": event_id, "retries": made_due})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/stats", stats)
    app.router.add_get("/api/events", list_events)
    app.router.add_get("/api/events/{event_id}", get_event)
    app.router.add_post("/api/events/{event_id}/retry-now", retry_now)
    app.router.add_get("/api/handlers", list_handlers)
    app.router.add_post("/api/handlers/{name}/pause", pause_handler)
    app.router.add_post("/api/handlers/{name}/resume", resume_handler)
    app.router.add_get("/api/dead-letters", list_dead_letters)
    app.router.add_post("/api/dead-letters/replay", replay)
    app.router.add_post("/api/dead-letters/purge", purge)
    app.router.add_get("/api/dead-letters/{letter_id:.+}", get_dead_letter)
