-- Removes from the event index, and from the search indexes, the ids of events whose record
-- is gone or due to expire; records kept without an expiry (pending events, dead events with
-- letters) stay listed and searchable.
--
-- KEYS[1] event_index    sorted set of every stored event id, by receipt time
-- KEYS[2] search_terms   hash of each indexed event's search terms
-- ARGV[1] event_prefix   an event's hash is this and its id
-- ARGV[2] search_prefix  a search index is this and a term
-- ARGV[3] before         ms: only ids received before this are looked at
-- ARGV[4] offset         where in those ids to start (past the ones kept by this pass)
-- ARGV[5] limit          how many ids to look at
-- Returns { ids looked at, ids removed }.
local event_index, search_terms = KEYS[1], KEYS[2]
local event_prefix, search_prefix = ARGV[1], ARGV[2]
local before, offset, limit = ARGV[3], ARGV[4], ARGV[5]

local ids = redis.call('ZRANGEBYSCORE', event_index, '-inf', '(' .. before, 'LIMIT', offset, limit)
local removed = 0
for _, event_id in ipairs(ids) do
  if redis.call('PTTL', event_prefix .. event_id) ~= -1 then
    remove_search_entries(search_prefix, search_terms, event_id)
    redis.call('ZREM', event_index, event_id)
    removed = removed + 1
  end
end
return {#ids, removed}
