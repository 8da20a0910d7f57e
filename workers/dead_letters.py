"""The dead-letter queue: (event, handler) pairs that will not be retried on their own.

A dead letter keeps everything needed to understand and replay it: the raw event, its
headers and receipt time, the handler, the reason, the exception and a bounded traceback,
the attempt count and times. Dead letters leave only by replay or purge (an operator's, or
the reconciler's once ``LOOPS_DEAD_LETTER_RETENTION_DAYS`` passed).

`DeadLetterReason` is defined with the verdicts in ``loops_webhooks.handlers.outcomes`` (the
lowest layer that names reasons) and exported from here to the layers that may not import
``handlers`` (the receiver, the dashboard).

This module owns a letter's making and its writing: `build_dead_letter` is the one way a
letter is made (the dispatcher's and the receiver's), and `encode_dead_letter` the one way
it reaches a script; the scripts that store or remove letters atomically with other writes
do so through the one Lua library ``lua/dead_letter.lua``, which keeps the index and the
per-reason counts in step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from redis.asyncio import Redis

from loops_webhooks.handlers.outcomes import DeadLetterReason
from loops_webhooks.workers import error_text, keys
from loops_webhooks.workers.scripts import length_prefixed

__all__ = [
    "TRACEBACK_LIMIT",
    "DeadLetter",
    "DeadLetterReason",
    "build_dead_letter",
    "encode_dead_letter",
    "get_dead_letter",
]

TRACEBACK_LIMIT = 8192
"""Characters of traceback kept (the end, where the error is)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    reason: str
    event_id: str = ""
    event_type: str = ""
    handler: str = ""
    error_type: str = ""
    error_message: str = ""
    traceback: str = ""
    attempts: int = 0
    first_attempt_at: int = 0
    last_attempt_at: int = 0
    dead_lettered_at: int = 0
    received_at: int = 0
    raw: bytes = b""
    headers: str = "{}"
    erased_at: int = 0
    """When its personal data (raw body, headers) was erased; 0: never."""

    @classmethod
    def from_redis(cls, stored: Mapping[bytes, bytes]) -> DeadLetter:
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = stored.get(field.name.encode())
            if raw is None:
                continue
            if field.type == "int":
                values[field.name] = int(raw)
            elif field.type == "bytes":
                values[field.name] = raw
            else:
                values[field.name] = raw.decode(errors="replace")
        return cls(**values)


def build_dead_letter(
    reason: DeadLetterReason,
    *,
    now_ms: int,
    letter_id: str | None = None,
    event_id: str = "",
    handler: str = "",
    error: BaseException | None = None,
    error_type: str = "",
    error_message: str = "",
    attempts: int = 0,
    first_attempt_at: int = 0,
    last_attempt_at: int = 0,
    received_at: int = 0,
    raw: bytes = b"",
    headers: str = "{}",
) -> DeadLetter:
    """The one way a dead letter is made, by the dispatcher and the receiver alike.

    With ``error``, its type, message and the end of its traceback are kept (bounded);
    otherwise ``error_type`` and ``error_message`` say what went wrong. The id defaults to
    the (event, handler) pair's, so dead-lettering a pair again replaces its letter.
    """
    trace = ""
    if error is not None:
        error_type = type(error).__name__
        error_message = error_text.error_message(error)
        if error.__traceback__ is not None:
            trace = error_text.error_traceback(error)[-TRACEBACK_LIMIT:]
    return DeadLetter(
        id=letter_id if letter_id is not None else keys.dead_letter_id(event_id, handler),
        reason=reason,
        event_id=event_id,
        handler=handler,
        error_type=error_type,
        error_message=error_message[:2000],
        traceback=trace,
        attempts=attempts,
        first_attempt_at=first_attempt_at,
        last_attempt_at=last_attempt_at,
        dead_lettered_at=now_ms,
        received_at=received_at,
        raw=raw,
        headers=headers,
    )


_DEFAULTS = DeadLetter(id="", reason="")


def encode_dead_letter(letter: DeadLetter) -> bytes:
    """The letter as one script argument, which ``lua/dead_letter.lua`` decodes: each field's
    name and value written ``<length>:<bytes>``. A field at its default is left out (it reads
    back as the default), so a letter of a stored event carries no copy of the event: the
    script copies the raw body, headers, receipt time and type from the event's record in
    the same step."""
    values: list[bytes | str | int] = []
    for name, value in asdict(letter).items():
        if value != getattr(_DEFAULTS, name):
            values += [name, value]
    return length_prefixed(values)


async def get_dead_letter(redis: Redis, letter_id: str) -> DeadLetter | None:
    stored = await redis.hgetall(keys.dead_letter_key(letter_id))  # type: ignore[misc]
    return DeadLetter.from_redis(stored) if stored else None
