"""Replay and purge of dead letters: the operator's way back from a failure.

Replaying one dead letter is a single Lua script (``lua/replay.lua``): it makes the event
pending again with fresh attempts for the dead-lettered handler (for every handler with
``force``), enqueues its job, and only then deletes the dead letter. Interrupted at any
point, nothing is lost: either the whole move happened or none of it did.
"""

from __future__ import annotations

import time
from enum import StrEnum

from redis.asyncio import Redis

from loops_webhooks.workers import keys
from loops_webhooks.workers.dead_letters import DeadLetter, DeadLetterReason
from loops_webhooks.workers.intake import JOB_TTL_MS, job_payload
from loops_webhooks.workers.scripts import register_script

__all__ = ["ReplayResult", "purge_dead_letter", "replay_dead_letter", "replay_refused"]

ERASED_MEANWHILE = 2


class ReplayResult(StrEnum):
    REPLAYED = "replayed"
    NO_EVENT = "no_event"
    """The letter holds no event to replay: a signed body that was not a usable event."""
    ERASED = "erased"
    """The letter's personal data was erased: there is no body left to run a handler on."""
    NEEDS_FORCE = "needs_force"
    """An ``invalid_payload`` letter replayed without ``force``: its event is stored, but it
    did not fit the handler's model and would fail the same way again until the model is
    fixed; ``force`` replays it."""
    GONE = "gone"
    """The letter was replayed or purged since it was read, or dead-lettered anew (another
    replay running at the same time got there first): nothing done, nothing failed."""


def replay_refused(letter: DeadLetter, *, force: bool) -> ReplayResult | None:
    """Why ``letter`` is not replayed (ERASED, NO_EVENT or NEEDS_FORCE), or None if it is: the
    one decision that both a replay and its dry run make."""
    if letter.erased_at:
        return ReplayResult.ERASED
    if not letter.event_id:
        return ReplayResult.NO_EVENT
    if letter.reason == DeadLetterReason.INVALID_PAYLOAD and not force:
        return ReplayResult.NEEDS_FORCE
    return None


async def replay_dead_letter(
    redis: Redis,
    letter: DeadLetter,
    *,
    queue_name: str,
    history_limit: int,
    force: bool = False,
) -> ReplayResult:
    """Put one dead letter's event back on the queue, as it was when ``letter`` was read.

    The handler states it replaces join the event's history, of which the newest
    ``history_limit`` per handler are kept (``LOOPS_REPLAY_HISTORY_LIMIT``).

    ERASED if its personal data was erased (nothing is left to replay). NO_EVENT if it holds
    no stored event (a body the receiver could not parse); NEEDS_FORCE if its payload did not
    fit a handler's model (``invalid_payload``) and ``force`` is not given: replaying that is
    useful only after the model was fixed. GONE if the letter is gone or was dead-lettered
    anew since it was read: another replay (or a purge) took it, and replaying it again
    would run its handler one more round.
    """
    refused = replay_refused(letter, force=force)
    if refused is not None:
        return refused
    now_ms = int(time.time() * 1000)
    job_id = keys.job_id_for_event(letter.event_id)
    replayed = await register_script(redis, "replay")(
        keys=[
            keys.dead_letter_key(letter.id),
            keys.DEAD_LETTER_INDEX,
            keys.event_key(letter.event_id),
            keys.event_dead_letters_key(letter.event_id),
            keys.PENDING_EVENTS,
            keys.EVENT_INDEX,
            queue_name,
            keys.arq_job_key(job_id),
            keys.DEAD_LETTER_REASON_COUNTS,
        ],
        args=[
            letter.id,
            letter.event_id,
            letter.handler,
            "1" if force else "0",
            now_ms,
            job_id,
            job_payload(letter.event_id, letter.event_type, now_ms),
            JOB_TTL_MS,
            keys.HANDLER_FIELD_PREFIX,
            keys.HANDLER_HISTORY_FIELD_PREFIX,
            letter.dead_lettered_at,
            history_limit,
        ],
    )
    if replayed == ERASED_MEANWHILE:
        return ReplayResult.ERASED
    return ReplayResult.REPLAYED if replayed else ReplayResult.GONE


async def purge_dead_letter(redis: Redis, letter: DeadLetter, *, dedupe_ttl_seconds: int) -> bool:
    """Delete a dead letter for good; False if it was already gone."""
    purged = await register_script(redis, "purge")(
        keys=[
            keys.dead_letter_key(letter.id),
            keys.DEAD_LETTER_INDEX,
            keys.event_key(letter.event_id),
            keys.event_dead_letters_key(letter.event_id),
            keys.DEAD_LETTER_REASON_COUNTS,
        ],
        args=[letter.id, dedupe_ttl_seconds * 1000],
    )
    return bool(purged)
