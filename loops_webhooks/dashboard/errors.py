"""The dashboard's errors, each mapped to one HTTP status and error code, here only."""

from __future__ import annotations

import orjson
from aiohttp import web

from loops_webhooks.workers.admission import HandlerNotLive
from loops_webhooks.workers.connection import REDIS_FAILURES
from loops_webhooks.workers.operator_api import InvalidCursor, NotFound, UnsearchableKey

__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "ForeignHost",
    "TooManyWrongTokens",
    "Unauthenticated",
    "WrongToken",
    "api_error",
    "json_response",
    "status_for",
]


class BadRequest(ValueError):
    """A query parameter or JSON body the API cannot use; the message says which and why."""


class Unauthenticated(Exception):
    """No credentials, or a wrong token. The message never holds the token."""


class WrongToken(Unauthenticated):
    """A token was presented and it is not the dashboard's: a guess, counted per client."""


class TooManyWrongTokens(Exception):
    """This client sent too many wrong tokens lately; ``retry_after`` seconds until it may
    try again."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many wrong tokens from this address; try again in {retry_after} s")
        self.retry_after = retry_after


class ForeignHost(Exception):
    """A ``--no-auth`` dashboard was asked for by a Host that is not this machine's loopback
    (a DNS-rebinding page would send its own name)."""


class Forbidden(Exception):
    """Authenticated, but not allowed: a missing CSRF token, or read-only mode."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class Conflict(Exception):
    """The request is sound but the state does not allow it (no retry scheduled, ...)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


def status_for(error: Exception) -> tuple[int, str, str] | None:
    """(status, error code, detail) for one of the errors the dashboard answers, else None."""
    if isinstance(error, BadRequest | InvalidCursor | UnsearchableKey):
        return 400, "bad_request", str(error)
    if isinstance(error, Unauthenticated):
        return 401, "unauthenticated", str(error)
    if isinstance(error, Forbidden):
        return 403, error.code, str(error)
    if isinstance(error, ForeignHost):
        return 421, "misdirected_request", str(error)
    if isinstance(error, TooManyWrongTokens):
        return 429, "too_many_wrong_tokens", str(error)
    if isinstance(error, NotFound):
        return 404, "not_found", str(error.args[0])
    if isinstance(error, HandlerNotLive):
        return (
            404,
            "unknown_handler",
            f"no running worker has a handler named {error.args[0]!r}; "
            'send {"force": true} to pause it anyway',
        )
    if isinstance(error, Conflict):
        return 409, error.code, str(error)
    if isinstance(error, REDIS_FAILURES):
        return 503, "redis_unavailable", "Redis did not answer; try again shortly"
    return None


def json_response(data: object, *, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def api_error(status: int, code: str, detail: str) -> web.Response:
    """The receiver's error shape here too: ``{"error": code, "detail": detail}``."""
    return json_response({"error": code, "detail": detail}, status=status)
