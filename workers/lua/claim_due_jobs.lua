-- A worker's poll: claims, of the job ids arq read from the queue, those still due and not
-- taken, marking each in progress as arq does, up to the room the worker has; returns each
-- claimed job's payload too, saving the worker a round trip per job.
--
-- KEYS[1] queue               arq's queue
-- ARGV[1] now                 ms
-- ARGV[2] in_progress_ttl_ms  how long a claim holds unless renewed
-- ARGV[3] room                how many jobs the worker can start
-- ARGV[4] in_progress_prefix  arq's in-progress marker prefix
-- ARGV[5] job_prefix          arq's job payload key prefix
-- ARGV[6..] job ids
-- Returns job id, payload ('' if it expired or was removed), ... of the jobs claimed.
local queue = KEYS[1]
local now, in_progress_ttl_ms, room = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local in_progress_prefix, job_prefix = ARGV[4], ARGV[5]

local claimed = {}
for i = 6, #ARGV do
  if #claimed >= 2 * room then break end
  local job_id = ARGV[i]
  local in_progress = in_progress_prefix .. job_id
  if redis.call('EXISTS', in_progress) == 0 then
    local score = redis.call('ZSCORE', queue, job_id)
    if score and tonumber(score) <= now then
      redis.call('PSETEX', in_progress, in_progress_ttl_ms, '1')
      claimed[#claimed + 1] = job_id
      claimed[#claimed + 1] = redis.call('GET', job_prefix .. job_id) or ''
    end
  end
end
return claimed
