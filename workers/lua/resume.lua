-- Resumes a paused handler: its pause goes (first call only), and a batch of the events
-- waiting for it goes back to the queue, oldest first: each job is due at its event's
-- receipt time, so the backlog runs before newer work. Only jobs still queued are moved.
--
-- KEYS[1] paused         hash of paused handlers
-- KEYS[2] waiting        sorted set of the event ids waiting for the handler
-- KEYS[3] queue          arq's queue
-- ARGV[1] handler
-- ARGV[2] job_id_prefix
-- ARGV[3] batch          at most this many events per call
-- ARGV[4] unpause        1 to remove the pause in this call
-- Returns 1 if the handler was paused, the events moved, and how many still wait.
local paused, waiting, queue = KEYS[1], KEYS[2], KEYS[3]
local handler, job_id_prefix, batch, unpause = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]

local was_paused = 0
if unpause == '1' then was_paused = redis.call('HDEL', paused, handler) end
local moved = 0
local entries = redis.call('ZRANGE', waiting, 0, batch - 1, 'WITHSCORES')
for i = 1, #entries, 2 do
  local job_id = job_id_prefix .. entries[i]
  if redis.call('ZSCORE', queue, job_id) then
    redis.call('ZADD', queue, entries[i + 1], job_id)
    moved = moved + 1
  end
  redis.call('ZREM', waiting, entries[i])
end
return {was_paused, moved, redis.call('ZCARD', waiting)}
