"""The dead-letter queue: (event, handler) pairs that will not be retried on their own.

A dead letter keeps everything needed to understand and replay it: the raw event, its
headers and receipt time, the handler, the reason, the exception and a bounded traceback,
the attempt count and times. Dead letters never expire; they leave only by replay or purge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis

from loops_webhooks.workers import keys

__all__ = [
    "TRACEBACK_LIMIT",
    "DeadLetter",
    "DeadLetterReason",
    "get_dead_letter",
    "list_dead_letters",
]

TRACEBACK_LIMIT = 8192
"""Characters of traceback kept (the end, where the error is)."""


class DeadLetterReason(StrEnum):
    REJECTED = "rejected"
    MAX_ATTEMPTS = "max_attempts"
    INVALID_PAYLOAD = "invalid_payload"
    UNHANDLED = "unhandled"


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

    def summary_fields(self) -> dict[str, str | int]:
        """Every field but those the event record supplies (raw, headers, received_at, type)."""
        copied_from_event = {"raw", "headers", "received_at", "event_type"}
        return {
            name: value
            for name, value in asdict(self).items()
            if name not in copied_from_event and not isinstance(value, bytes)
        }

    def redis_fields(self) -> dict[str, str | int | bytes]:
        return dict(asdict(self))

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


async def get_dead_letter(redis: Redis, letter_id: str) -> DeadLetter | None:
    stored = await redis.hgetall(keys.dead_letter_key(letter_id))  # type: ignore[misc]
    return DeadLetter.from_redis(stored) if stored else None


async def list_dead_letters(redis: Redis, *, since_ms: int = 0) -> list[DeadLetter]:
    """Dead letters dead-lettered at or after ``since_ms``, newest first."""
    ids = await redis.zrevrangebyscore(keys.DEAD_LETTER_INDEX, "+inf", since_ms)
    async with redis.pipeline(transaction=False) as pipe:
        for letter_id in ids:
            pipe.hgetall(keys.dead_letter_key(letter_id.decode()))
        stored = await pipe.execute()
    return [DeadLetter.from_redis(entry) for entry in stored if entry]
