-- Removes from the event index the ids whose record has expired; records that are still
-- there (dead events keep theirs until purged) stay listed.
--
-- KEYS[1] event_index   sorted set of every stored event id, by receipt time
-- ARGV[1] event_prefix  the event hashes' key prefix
-- ARGV[2] before        ms: only ids received before this are looked at
-- ARGV[3] offset        where in those ids to start (the previous pass's resume point)
-- ARGV[4] limit         how many ids to look at
-- Returns { ids looked at, ids removed }.
local event_index = KEYS[1]
local event_prefix, before, offset, limit = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local ids = redis.call('ZRANGEBYSCORE', event_index, '-inf', '(' .. before, 'LIMIT', offset, limit)
local removed = 0
for _, event_id in ipairs(ids) do
  if redis.call('EXISTS', event_prefix .. event_id) == 0 then
    redis.call('ZREM', event_index, event_id)
    removed = removed + 1
  end
end
return {#ids, removed}
