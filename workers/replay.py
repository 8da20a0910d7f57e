"""Replay and purge of dead letters: the operator's way back from a failure.

Replaying one dead letter is a single Lua script: it makes the event pending again with fresh
attempts for the dead-lettered handler (for every handler with ``force``), enqueues its job,
and only then deletes the dead letter. Interrupted at any point, nothing is lost: either the
whole move happened or none of it did.
"""

from __future__ import annotations

import time
from enum import StrEnum

from redis.asyncio import Redis

from loops_webhooks.workers import keys
from loops_webhooks.workers.dead_letters import DeadLetter, DeadLetterReason
from loops_webhooks.workers.intake import JOB_TTL_MS, job_payload

__all__ = ["ReplayResult", "purge_dead_letter", "replay_dead_letter"]


class ReplayResult(StrEnum):
    REPLAYED = "replayed"
    SKIPPED = "skipped"
    MISSING = "missing"


_REPLAY = """
-- KEYS: dead letter, dead-letter index, event, pending, queue, job key
-- ARGV: letter id, event id, handler, force, now, job id, job payload, job ttl,
--   the letter's dead_lettered_at as read (another replay took it if that changed)
if redis.call('HGET', KEYS[1], 'dead_lettered_at') ~= ARGV[9] then return 0 end
if redis.call('EXISTS', KEYS[3]) == 0 then
  local letter = redis.call('HMGET', KEYS[1], 'raw', 'headers', 'received_at', 'event_type')
  redis.call('HSET', KEYS[3], 'id', ARGV[2], 'raw', letter[1], 'headers', letter[2],
             'received_at', letter[3], 'type', letter[4])
end
if ARGV[4] == '1' then
  for _, field in ipairs(redis.call('HKEYS', KEYS[3])) do
    if string.sub(field, 1, 8) == 'handler:' then redis.call('HDEL', KEYS[3], field) end
  end
elseif ARGV[3] ~= '' then
  redis.call('HDEL', KEYS[3], 'handler:' .. ARGV[3])
end
redis.call('HSET', KEYS[3], 'status', 'pending')
redis.call('HDEL', KEYS[3], 'finished_at', 'outcome')
redis.call('PERSIST', KEYS[3])
redis.call('ZADD', KEYS[4], 'NX', ARGV[5], ARGV[2])
if redis.call('EXISTS', KEYS[6]) == 0 then
  redis.call('SET', KEYS[6], ARGV[7], 'PX', ARGV[8])
end
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[6])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

_PURGE = """
-- KEYS: dead letter, dead-letter index, event
-- ARGV: letter id, dedupe ttl ms, event id, dead-letter key prefix
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[3], 'status') ~= 'dead' or redis.call('TTL', KEYS[3]) >= 0 then
  return 1
end
-- the record stays while another dead letter of the event may still be replayed
if redis.call('EXISTS', ARGV[4] .. ARGV[3] .. ':') == 1 then return 1 end
local fields = redis.call('HGETALL', KEYS[3])
for i = 1, #fields, 2 do
  local name = fields[i]
  if string.sub(name, 1, 8) == 'handler:' and cjson.decode(fields[i + 1]).status == 'dead'
     and redis.call('EXISTS', ARGV[4] .. ARGV[3] .. ':' .. string.sub(name, 9)) == 1 then
    return 1
  end
end
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return 1
"""


async def replay_dead_letter(
    redis: Redis, letter: DeadLetter, *, queue_name: str, force: bool = False
) -> ReplayResult:
    """Put one dead letter's event back on the queue, as it was when ``letter`` was read.

    SKIPPED if it holds no stored event (a body the receiver could not parse), or if its
    payload did not fit a handler's model (``invalid_payload``) and ``force`` is not given:
    replaying that is useful only after the model was fixed. MISSING if the letter is gone
    or was dead-lettered anew since it was read: another replay (or a purge) took it, and
    replaying it again would run its handler one more round.
    """
    if not letter.event_id:
        return ReplayResult.SKIPPED
    if letter.reason == DeadLetterReason.INVALID_PAYLOAD and not force:
        return ReplayResult.SKIPPED
    now_ms = int(time.time() * 1000)
    job_id = keys.job_id_for_event(letter.event_id)
    replayed = await redis.register_script(_REPLAY)(
        keys=[
            keys.dead_letter_key(letter.id),
            keys.DEAD_LETTER_INDEX,
            keys.event_key(letter.event_id),
            keys.PENDING_EVENTS,
            queue_name,
            keys.arq_job_key(job_id),
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
            letter.dead_lettered_at,
        ],
    )
    return ReplayResult.REPLAYED if replayed else ReplayResult.MISSING


async def purge_dead_letter(redis: Redis, letter: DeadLetter, *, dedupe_ttl_seconds: int) -> bool:
    """Delete a dead letter for good. Once no other dead letter of its event is left, the
    event record expires like a finished one (until then a replay still needs it to skip
    the handlers that succeeded)."""
    purged = await redis.register_script(_PURGE)(
        keys=[
            keys.dead_letter_key(letter.id),
            keys.DEAD_LETTER_INDEX,
            keys.event_key(letter.event_id),
        ],
        args=[letter.id, dedupe_ttl_seconds * 1000, letter.event_id, keys.dead_letter_key("")],
    )
    return bool(purged)
