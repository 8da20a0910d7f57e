-- Records the outcomes of one job's handlers and their dead letters, and closes the event
-- once every handler is final. With a job id, it also does what arq would do next, saving
-- a round trip: reschedule the job at the next handler's due time, or remove it.
--
-- KEYS[1] event              the event's hash
-- KEYS[2] pending            sorted set of unfinished event ids
-- KEYS[3] dead_letter_index  sorted set of dead-letter ids
-- KEYS[4] outcome_counts     hash of this minute's outcome counts
-- KEYS[5] queue              arq's queue
-- KEYS[6] job_key            the job's payload (arq's)
-- KEYS[7] in_progress        the job's in-progress marker (arq's)
-- KEYS[8] retry_counter      the job's run counter (arq's)
-- KEYS[9] event_letters      set of the event's dead-letter ids
-- KEYS[10] reason_counts     hash of the number of dead letters per reason
-- KEYS[11] paused            hash of paused handlers (admission's)
-- KEYS[12..] one key per dead letter, in the order of ARGV[12..]
-- ARGV[1] now                ms
-- ARGV[2] expire_at          ms: when a finished event's record (and dedupe) expires
-- ARGV[3] event_id
-- ARGV[4] states             JSON object: handler name to its new state (JSON)
-- ARGV[5] handler_names      JSON array: every handler of the event
-- ARGV[6] outcome            the event's outcome, '' for none
-- ARGV[7] counts             JSON object: outcome name to count
-- ARGV[8] counts_ttl_s
-- ARGV[9] job_id             '' to leave the job to arq
-- ARGV[10] admission         '' or JSON {"held": {handler: limits}, "released": {handler:
--                            limits}}: the runs admission held back in begin, and the runs
--                            that took something (a slot) to give back now
-- ARGV[11] session           the event's checkout session id, '' for none
-- ARGV[12..] dead letters    each as encode_dead_letter wrote it; the event's raw body,
--                            headers, receipt time and type are copied into each
-- Returns the next handler's due time (ms), -1 if the event is gone, -2 if it is finished.
local event, pending, dead_letter_index, outcome_counts = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local queue, job_key, in_progress, retry_counter = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local event_letters, reason_counts, paused = KEYS[9], KEYS[10], KEYS[11]
local now, expire_at, event_id = ARGV[1], ARGV[2], ARGV[3]
local states, handler_names = cjson.decode(ARGV[4]), cjson.decode(ARGV[5])
local outcome, counts, counts_ttl_s = ARGV[6], cjson.decode(ARGV[7]), ARGV[8]
local job_id, handler_prefix = ARGV[9], admission_settings.handler_prefix
local admitted = {held = {}, released = {}}
if ARGV[10] ~= '' then admitted = cjson.decode(ARGV[10]) end
local FIRST_LETTER_KEY, FIRST_LETTER = 12, 12
local letter_count = #ARGV - FIRST_LETTER + 1
local admission = admission_context(paused, queue, now, job_id, event_id, ARGV[11])
for name, limits in pairs(admitted.released) do
  admission_release(admission, name, limits)
end

local function settle_job(next_due)
  if job_id == '' then return end
  if next_due then
    redis.call('ZADD', queue, next_due, job_id)
  else
    redis.call('DEL', job_key, retry_counter)
    redis.call('ZREM', queue, job_id)
  end
  redis.call('DEL', in_progress)
end

if redis.call('EXISTS', event) == 0 then
  settle_job(nil)
  return -1
end
for name, count in pairs(counts) do
  redis.call('HINCRBY', outcome_counts, name, count)
end
redis.call('EXPIRE', outcome_counts, counts_ttl_s)
for name, state in pairs(states) do
  redis.call('HSET', event, handler_prefix .. name, state)
end
-- A run's state changed (it ended, was crashed out, given back): a run of the session that
-- waited may start now. A finish that only records held runs wakes nobody.
if next(states) then ordering_wake(admission) end
if letter_count > 0 then
  local kept = redis.call('HMGET', event, 'raw', 'headers', 'received_at', 'type')
  local copied = {'raw', kept[1], 'headers', kept[2], 'received_at', kept[3],
                  'event_type', kept[4]}
  for i = 0, letter_count - 1 do
    local letter_id = put_dead_letter(KEYS[FIRST_LETTER_KEY + i], dead_letter_index,
                                      reason_counts, ARGV[FIRST_LETTER + i], copied)
    redis.call('SADD', event_letters, letter_id)
  end
end

local received_at = nil
if next(admitted.held) then received_at = redis.call('HGET', event, 'received_at') end
local next_due = nil
local any_dead = false
for _, name in ipairs(handler_names) do
  local stored = redis.call('HGET', event, handler_prefix .. name)
  local due = 0
  if admitted.held[name] then
    due = admission_hold(admission, name, admitted.held[name], received_at)
  elseif stored then
    local state = cjson.decode(stored)
    if state.status == 'dead' then
      due = nil
      any_dead = true
    elseif state.status == 'done' then
      due = nil
    else
      due = state.next_attempt_at or 0
    end
  end
  if due and (next_due == nil or due < next_due) then next_due = due end
end
if next_due then
  settle_job(next_due)
  return next_due
end

settle_job(nil)
local status = 'done'
if any_dead or letter_count > 0 then status = 'dead' end
redis.call('HSET', event, 'status', status, 'finished_at', now)
if outcome ~= '' then redis.call('HSET', event, 'outcome', outcome) end
redis.call('ZREM', pending, event_id)
if status == 'done' then redis.call('PEXPIREAT', event, expire_at) end
ordering_finished(admission, expire_at)
return -2
