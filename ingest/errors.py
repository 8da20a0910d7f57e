"""The receiver's errors, each mapped to one HTTP status and one error code, here only."""

from __future__ import annotations

import orjson
from aiohttp import web

from loops_webhooks.ingest.signature import InvalidSignature

__all__ = [
    "BodyTimeout",
    "InvalidBody",
    "InvalidPayload",
    "PayloadTooLarge",
    "ReceiverBusy",
    "ReceiverUnavailable",
    "error_response",
    "json_response",
    "response_for",
]

RETRY_AFTER_SECONDS = 5


class PayloadTooLarge(Exception):
    """The body is over ``LOOPS_MAX_BODY_BYTES``; it was refused without being read whole."""


class InvalidBody(Exception):
    """The body could not be read as sent (e.g. a broken chunked encoding); nothing to verify."""


class InvalidPayload(Exception):
    """A correctly signed body that is not a usable event; it was kept as a dead letter."""


class ReceiverUnavailable(Exception):
    """Redis could not acknowledge the event in time; nothing was promised, Loops retries."""


class BodyTimeout(Exception):
    """The body did not arrive whole within ``LOOPS_READ_TIMEOUT_SECONDS``: a stalled client."""


class ReceiverBusy(Exception):
    """``LOOPS_MAX_CONCURRENT_BODIES`` bodies were being read for the whole read timeout."""


_STATUS_CODE_OUTCOME: dict[type[Exception], tuple[int, str, str]] = {
    InvalidSignature: (401, "invalid_signature", "invalid_signature"),
    PayloadTooLarge: (413, "payload_too_large", "too_large"),
    InvalidPayload: (400, "invalid_payload", "invalid_payload"),
    InvalidBody: (400, "invalid_body", "invalid_body"),
    ReceiverUnavailable: (503, "unavailable", "unavailable"),
    BodyTimeout: (408, "request_timeout", "body_timeout"),
    ReceiverBusy: (503, "busy", "busy"),
}


def json_response(
    data: object, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response, serialised with orjson (several times faster than the json module)."""
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def error_response(status: int, code: str, detail: str) -> web.Response:
    """The one shape of every error body: ``{"error": code, "detail": detail}``."""
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
    return json_response({"error": code, "detail": detail}, status=status, headers=headers)


def response_for(error: Exception) -> tuple[web.Response, str] | None:
    """The response and metrics outcome for one of the receiver's errors, else None."""
    for error_type, (status, code, outcome) in _STATUS_CODE_OUTCOME.items():
        if isinstance(error, error_type):
            return error_response(status, code, str(error)), outcome
    return None
