-- The reconciler's repair: re-enqueues the pending events that have no live job (a job that
-- expired, was dropped, or was lost with a restored snapshot), and forgets finished ones.
--
-- KEYS[1] pending   sorted set of unfinished event ids
-- KEYS[2] queue     arq's queue
-- KEYS[3..] per event: its hash, its job's payload key
-- ARGV[1] job_ttl_ms
-- ARGV[2] score     ms: when the re-enqueued jobs are due
-- ARGV[3..] per event: its id, its job id, the job's payload
-- Returns how many events were re-enqueued.
local pending, queue = KEYS[1], KEYS[2]
local job_ttl_ms, score = ARGV[1], ARGV[2]

local repaired = 0
for i = 1, (#KEYS - 2) / 2 do
  local event, job_key = KEYS[2 * i + 1], KEYS[2 * i + 2]
  local event_id, job_id, payload = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
  if redis.call('HGET', event, 'status') ~= 'pending' then
    redis.call('ZREM', pending, event_id)
  elseif redis.call('EXISTS', job_key) == 0 or not redis.call('ZSCORE', queue, job_id) then
    enqueue_job(queue, job_key, job_id, payload, score, job_ttl_ms)
    repaired = repaired + 1
  end
end
return repaired
