-- Erases the personal data of one finished event and of its dead letters: raw bodies and
-- kept headers emptied, search entries removed; ids, types, times and outcomes stay, marked
-- with the time of the erasure. A pending event is left alone: a handler may still need it.
--
-- KEYS[1] event          the event's hash
-- KEYS[2] event_letters  set of the event's dead-letter ids
-- KEYS[3] search_terms   hash of each indexed event's search terms
-- ARGV[1] event_id
-- ARGV[2] search_prefix  a search index is this and a term
-- ARGV[3] letter_prefix  a dead letter's hash is this and its id
-- ARGV[4] now            ms
-- Returns { 1 erased, 0 gone, -1 pending; dead letters erased }.
local event, event_letters, search_terms = KEYS[1], KEYS[2], KEYS[3]
local event_id, search_prefix, letter_prefix, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local status = redis.call('HGET', event, 'status')
if not status then return {0, 0} end
if status == 'pending' then return {-1, 0} end
remove_search_entries(search_prefix, search_terms, event_id)
redis.call('HSET', search_terms, event_id, '')  -- indexed, with nothing: reindex passes over it
redis.call('HSET', event, 'raw', '', 'headers', '{}', 'erased_at', now)
local letters = 0
for _, letter_id in ipairs(redis.call('SMEMBERS', event_letters)) do
  local letter = letter_prefix .. letter_id
  if redis.call('EXISTS', letter) == 1 then
    redis.call('HSET', letter, 'raw', '', 'headers', '{}', 'erased_at', now)
    letters = letters + 1
  end
end
return {1, letters}
