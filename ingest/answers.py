"""How every request leaves the receiver: one JSON answer, one log line, one count.

Every error leaves as ``{"error", "detail"}`` JSON with its one status code; every request
leaves one log line with its outcome and duration; webhook requests (and 405s) are counted by
outcome. The views call ``answered`` themselves, or are wrapped in ``accounted``, rather than
going through an aiohttp middleware: a middleware adds two coroutine frames to every request
(its own and aiohttp's ``_fix_request_current_app``), a measurable share of the webhook path.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from loops_webhooks.ingest.errors import error_response, response_for
from loops_webhooks.ingest.metrics import RECEIVER_METRICS
from loops_webhooks.logs import CanonicalLine

__all__ = ["View", "accounted", "answer_for_error", "answered", "method_not_allowed", "not_found"]

log = structlog.get_logger(logger_name="loops_webhooks.ingest")
request_line = CanonicalLine("loops_webhooks.ingest")

View = Callable[[web.Request], Awaitable[web.StreamResponse]]

NO_EVENT: tuple[str | None, str | None] = (None, None)


def answered(
    request: web.Request,
    response: web.StreamResponse,
    started: float,
    outcome: str | None,
    event: tuple[str | None, str | None] = NO_EVENT,
) -> None:
    """Count the request under ``outcome`` (None: not a webhook outcome) and write its line.

    ``started`` is ``time.perf_counter()`` when the view began; ``event`` the stored event's
    (id, type), if any.
    """
    duration = time.perf_counter() - started
    if outcome is not None:
        RECEIVER_METRICS.request_answered(outcome, duration)
    request_line.info(
        "request",
        {
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "outcome": outcome,
            "duration_ms": round(duration * 1000, 2),
            "event_id": event[0],
            "event_type": event[1],
        },
    )


def answer_for_error(error: Exception) -> tuple[web.Response, str | None]:
    """The JSON response and the outcome for an exception a view raised; a redirect (an
    HTTPException below 400) is raised again, for aiohttp to send as it is."""
    if isinstance(error, web.HTTPException):
        if error.status < 400:
            raise error
        code = error.reason.lower().replace(" ", "_")
        return error_response(error.status, code, error.reason), None
    known = response_for(error)
    if known is not None:
        return known
    log.exception("unexpected error", exc_info=error)
    return error_response(
        500, "internal_error", "unexpected error; see the receiver's log"
    ), "error"


def accounted(view: View, outcome: str | None = None) -> View:
    """``view``, answering its errors in JSON and leaving its line (counted under
    ``outcome``, if given)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        result = outcome
        try:
            response = await view(request)
        except Exception as error:
            response, result = answer_for_error(error)
        answered(request, response, started, result)
        return response

    return answer


def method_not_allowed(allowed: str) -> View:
    """405 in JSON, naming the allowed method; counted as ``method_not_allowed``."""

    async def refuse(request: web.Request) -> web.StreamResponse:
        response = error_response(405, "method_not_allowed", "Method Not Allowed")
        response.headers["Allow"] = allowed
        return response

    return accounted(refuse, "method_not_allowed")


async def _not_found(request: web.Request) -> web.StreamResponse:
    return error_response(404, "not_found", "Not Found")


not_found = accounted(_not_found)
"""404 in JSON for every path the receiver does not serve."""
