-- Puts one dead letter's event back on the queue: the event made pending again with fresh
-- attempts for the letter's handler (for every handler with force), its job enqueued, and
-- only then the letter removed. All or nothing, so an interrupted bulk replay loses nothing.
-- The handler states replaced are appended to the event's history, so its story survives.
--
-- KEYS[1] letter             the dead letter's hash
-- KEYS[2] dead_letter_index  sorted set of dead-letter ids
-- KEYS[3] event              the event's hash
-- KEYS[4] event_letters      set of the event's dead-letter ids
-- KEYS[5] pending            sorted set of unfinished event ids
-- KEYS[6] event_index        sorted set of every stored event id
-- KEYS[7] queue              arq's queue
-- KEYS[8] job_key            the event job's payload
-- KEYS[9] reason_counts      hash of the number of dead letters per reason
-- ARGV[1] letter_id
-- ARGV[2] event_id
-- ARGV[3] handler            '' for a letter of an event no handler matched
-- ARGV[4] force              '1' re-runs every handler, succeeded ones included
-- ARGV[5] now                ms
-- ARGV[6] job_id
-- ARGV[7] payload            the job's payload
-- ARGV[8] job_ttl_ms
-- ARGV[9] handler_prefix     of the handler-state fields in the event's hash
-- ARGV[10] history_prefix    of the replaced-states fields in the event's hash
-- ARGV[11] dead_lettered_at  as the caller read it: a letter gone or dead-lettered again
--                            since then (another replay got there first) is not replayed
-- ARGV[12] history_limit    replaced states kept per handler, the newest ones
-- Returns 1 replayed, 0 not (gone, or changed since it was read), 2 not (its personal data
-- was erased: no body is left to run a handler on).
local letter, dead_letter_index, event, event_letters = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local pending, event_index, queue, job_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local reason_counts = KEYS[9]
local letter_id, event_id, handler, force, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local job_id, payload, job_ttl_ms = ARGV[6], ARGV[7], ARGV[8]
local handler_prefix, history_prefix, dead_lettered_at = ARGV[9], ARGV[10], ARGV[11]
local history_limit = tonumber(ARGV[12])

if redis.call('HGET', letter, 'dead_lettered_at') ~= dead_lettered_at then return 0 end
if redis.call('HEXISTS', letter, 'erased_at') == 1 then return 2 end

if redis.call('EXISTS', event) == 0 then
  local kept = redis.call('HMGET', letter, 'raw', 'headers', 'received_at', 'event_type')
  redis.call('HSET', event, 'id', event_id, 'raw', kept[1], 'headers', kept[2],
             'received_at', kept[3], 'type', kept[4])
  redis.call('ZADD', event_index, kept[3], event_id)
end

-- The handler's state goes to its history and a fresh pending one takes its place: a
-- worker without that handler sees that it is owed a run, rather than finishing the event.
local function archive(name)
  local field = handler_prefix .. name
  local state = redis.call('HGET', event, field)
  if state then
    local history_field = history_prefix .. name
    local history = {}
    local stored = redis.call('HGET', event, history_field)
    if stored then history = cjson.decode(stored) end
    history[#history + 1] = cjson.decode(state)
    while #history > history_limit do table.remove(history, 1) end
    if #history > 0 then
      redis.call('HSET', event, history_field, cjson.encode(history))
    end
  end
  redis.call('HSET', event, field, cjson.encode({status = 'pending', attempts = 0}))
end

if force == '1' then
  for _, field in ipairs(redis.call('HKEYS', event)) do
    if string.sub(field, 1, #handler_prefix) == handler_prefix then
      archive(string.sub(field, #handler_prefix + 1))
    end
  end
elseif handler ~= '' then
  archive(handler)
end
redis.call('HSET', event, 'status', 'pending')
redis.call('HDEL', event, 'finished_at', 'outcome')
redis.call('PERSIST', event)
redis.call('ZADD', pending, 'NX', now, event_id)
enqueue_job(queue, job_key, job_id, payload, now, job_ttl_ms)
remove_dead_letter(letter, dead_letter_index, reason_counts, event_letters, letter_id)
return 1
