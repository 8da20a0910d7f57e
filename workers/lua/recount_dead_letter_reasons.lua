-- Rebuilds the per-reason counts of the dead letters from the letters themselves, once they
-- disagree with the index: letters stored before the counts were kept were never added, so
-- replaying or purging them left the counts short for good.
--
-- KEYS[1] dead_letter_index  sorted set of dead-letter ids
-- KEYS[2] reason_counts      hash of the number of dead letters per reason
-- ARGV[1] dead_letter_prefix the dead letters' key prefix
-- Returns reason, count, reason, count...
local dead_letter_index, reason_counts = KEYS[1], KEYS[2]
local dead_letter_prefix = ARGV[1]

local counts = {}
for _, letter_id in ipairs(redis.call('ZRANGE', dead_letter_index, 0, -1)) do
  local reason = redis.call('HGET', dead_letter_prefix .. letter_id, 'reason')
  if reason then counts[reason] = (counts[reason] or 0) + 1 end
end
redis.call('DEL', reason_counts)
local out = {}
for reason, count in pairs(counts) do
  redis.call('HSET', reason_counts, reason, count)
  out[#out + 1] = reason
  out[#out + 1] = count
end
return out
