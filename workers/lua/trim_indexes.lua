-- Removes from the event index, and from the search indexes, the ids of events whose record
-- is gone or due to expire; records kept without an expiry (pending events, dead events with
-- letters) stay listed and searchable.
--
-- KEYS[1] event_index    sorted set of every stored event id, by receipt time
-- ARGV[1] event_prefix   an event's hash is this and its id
-- ARGV[2] search_prefix  a search index is this and a term
-- ARGV[3] terms_field    the field of an event's hash that holds its search terms
-- ARGV[4] before         ms: only ids received before this are looked at
-- ARGV[5] offset         where in those ids to start (past the ones kept by this pass)
-- ARGV[6] limit          how many ids to look at
-- Returns { ids looked at, ids removed }.
local event_index = KEYS[1]
local event_prefix, search_prefix, terms_field = ARGV[1], ARGV[2], ARGV[3]
local before, offset, limit = ARGV[4], ARGV[5], ARGV[6]

local ids = redis.call('ZRANGEBYSCORE', event_index, '-inf', '(' .. before, 'LIMIT', offset, limit)
local removed = 0
for _, event_id in ipairs(ids) do
  local event = event_prefix .. event_id
  local ttl = redis.call('PTTL', event)
  if ttl ~= -1 then
    local terms = redis.call('HGET', event, terms_field)
    if terms then
      for _, term in ipairs(length_prefixed(terms)) do
        redis.call('ZREM', search_prefix .. term, event_id)
      end
    end
    redis.call('ZREM', event_index, event_id)
    removed = removed + 1
  end
end
return {#ids, removed}
