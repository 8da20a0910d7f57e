-- Deletes one dead letter for good. Once none of its event's letters is left, a dead event
-- record expires like a finished one; until then a replay still needs it, to skip the
-- handlers that succeeded.
--
-- KEYS[1] letter             the dead letter's hash
-- KEYS[2] dead_letter_index  sorted set of dead-letter ids
-- KEYS[3] event              the event's hash
-- KEYS[4] event_letters      set of the event's dead-letter ids
-- KEYS[5] reason_counts      hash of the number of dead letters per reason
-- ARGV[1] letter_id
-- ARGV[2] dedupe_ttl_ms      how long a finished event's id is still remembered
-- Returns 1 purged, 0 already gone.
local letter, dead_letter_index, event, event_letters = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local reason_counts = KEYS[5]
local letter_id, dedupe_ttl_ms = ARGV[1], ARGV[2]

if not remove_dead_letter(letter, dead_letter_index, reason_counts, event_letters,
                          letter_id) then
  return 0
end
if redis.call('SCARD', event_letters) > 0 then return 1 end
if redis.call('HGET', event, 'status') == 'dead' and redis.call('TTL', event) < 0 then
  redis.call('PEXPIRE', event, dedupe_ttl_ms)
end
return 1
