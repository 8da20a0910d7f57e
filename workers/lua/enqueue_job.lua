-- Library, prepended to the scripts that enqueue (see workers/scripts.py): the one way a
-- script puts an event's arq job on the queue.
--
-- enqueue_job(queue, job_key, job_id, payload, score, ttl_ms): the job's payload under
-- job_key, and job_id in arq's queue at score (ms). A payload already stored is kept, since
-- a worker running the job may be reading it; its time to live is renewed.
local function enqueue_job(queue, job_key, job_id, payload, score, ttl_ms)
  if not redis.call('SET', job_key, payload, 'PX', ttl_ms, 'NX') then
    redis.call('PEXPIRE', job_key, ttl_ms)
  end
  redis.call('ZADD', queue, score, job_id)
end
