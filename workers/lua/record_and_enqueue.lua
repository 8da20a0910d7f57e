-- Records verified events and enqueues their jobs in one atomic step, so that an event is
-- never stored without its job. An id already recorded is left untouched: a redelivery.
-- An event of a checkout session keeps its session id in its hash and joins the session's
-- events, scored by `created` (what admission's ordering gate reads).
--
-- KEYS[1] pending      sorted set of unfinished event ids, by receipt time
-- KEYS[2] event_index  sorted set of every stored event id, by receipt time
-- KEYS[3] queue        arq's queue
-- KEYS[4] search_terms hash of each indexed event's search terms
-- ARGV[1] job_ttl_ms
-- ARGV[2] event_prefix    an event's hash is this and its id
-- ARGV[3] job_id_prefix   an event's job id is this and its id
-- ARGV[4] job_key_prefix  a job's payload key is this and its job id
-- ARGV[5] trace_field     the field of an event's hash that keeps its trace context
-- ARGV[6] session_prefix  a session's events are this and its id
-- ARGV[7] search_prefix   a search index is this and a term
-- ARGV[8..] one record per event, its fields each written "<length>:<bytes>": event id,
--   type, raw body, headers (JSON), receipt time (ms), job payload, trace context (empty
--   with traces off: then no field is written), session id ('' for none), created (ms),
--   search terms (each written "<length>:<bytes>" again)
-- Returns one flag per record: 1 recorded, 0 already recorded.
local pending, event_index, queue, search_terms = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local job_ttl_ms, event_prefix, job_id_prefix, job_key_prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local trace_field, session_prefix, search_prefix = ARGV[5], ARGV[6], ARGV[7]

local results = {}
for i = 8, #ARGV do
  local event_id, event_type, raw, headers, received_at, payload, trace, session, created,
        terms =
    unpack(length_prefixed(ARGV[i]))
  local event_key, job_id = event_prefix .. event_id, job_id_prefix .. event_id
  local job_key = job_key_prefix .. job_id
  if redis.call('EXISTS', event_key) == 1 then
    results[#results + 1] = 0
  else
    local fields = {'id', event_id, 'type', event_type, 'raw', raw, 'headers', headers,
                    'received_at', received_at, 'status', 'pending'}
    if trace ~= '' then
      fields[#fields + 1], fields[#fields + 2] = trace_field, trace
    end
    if session ~= '' then
      fields[#fields + 1], fields[#fields + 2] = 'session', session
      redis.call('ZADD', session_prefix .. session, created, event_id)
    end
    redis.call('HSET', event_key, unpack(fields))
    add_search_entries(search_prefix, search_terms, terms, event_id, received_at)
    redis.call('ZADD', pending, received_at, event_id)
    redis.call('ZADD', event_index, received_at, event_id)
    enqueue_job(queue, job_key, job_id, payload, received_at, job_ttl_ms)
    results[#results + 1] = 1
  end
end
return results
