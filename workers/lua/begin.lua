-- Loads one event and counts an attempt for each of its handlers that is due now and that
-- admission lets start, before any of them runs: a handler that kills its worker is
-- dead-lettered once its attempts are spent instead of looping. A run admission holds back
-- (paused, over a limit) uses no attempt.
--
-- KEYS[1] event           the event's hash
-- KEYS[2] paused          hash of paused handlers (admission's)
-- ARGV[1] now             ms
-- ARGV[2] trace_field     of the event's trace context in its hash
-- ARGV[3] job_id          '' for none (a call outside a worker's job)
-- ARGV[4] event_id
-- ARGV[5..] per handler: its name, its max attempts, its limits (JSON, '' for none)
-- Returns false if the event is not stored; else status, raw, type, received_at, headers,
-- trace context (false when the event has none), its checkout session id ('' for none), then,
-- for a pending event only, per handler: its action (run, skip, wait, exhausted, held), its
-- state (JSON) and, for a run, the id of a later event of its session the handler has
-- already finished ('' for none); then, per unfinished state of a handler not in ARGV (a
-- replayed letter or a retry of a handler this worker does not have): its name and its
-- state (JSON).
local event, paused = KEYS[1], KEYS[2]
local now, trace_field, job_id, event_id = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local handler_prefix = admission_settings.handler_prefix
local FIRST_HANDLER = 5

local stored_event = redis.call('HMGET', event, 'status', 'raw', 'type', 'received_at', 'headers',
                                trace_field, 'session')
local status = stored_event[1]
if not stored_event[2] then return false end
local session = stored_event[7] or ''
local out = {status, stored_event[2], stored_event[3], stored_event[4], stored_event[5],
             stored_event[6], session}
if status ~= 'pending' then return out end

local admission = admission_context(paused, nil, now, job_id, event_id, session)
local known = {}
local names = {}
local writes = {}
for i = FIRST_HANDLER, #ARGV, 3 do
  local field = handler_prefix .. ARGV[i]
  known[field] = true
  names[#names + 1] = ARGV[i]
  local max_attempts = tonumber(ARGV[i + 1])
  local stored = redis.call('HGET', event, field)
  local state = {status = 'pending', attempts = 0}
  if stored then state = cjson.decode(stored) end
  local action
  if state.status == 'done' or state.status == 'dead' then
    action = 'skip'
  elseif state.status == 'retry' and state.next_attempt_at and state.next_attempt_at > now then
    action = 'wait'
  elseif state.attempts >= max_attempts then
    action = 'exhausted'
  elseif admission_admit(admission, ARGV[i], ARGV[i + 2]) then
    action = 'held'
  else
    action = 'run'
    state.attempts = state.attempts + 1
    state.status = 'running'
    if not state.first_attempt_at then state.first_attempt_at = now end
    state.last_attempt_at = now
    state.next_attempt_at = nil
    stored = cjson.encode(state)
    writes[#writes + 1] = field
    writes[#writes + 1] = stored
  end
  out[#out + 1] = action
  out[#out + 1] = stored or cjson.encode(state)
  if action == 'run' then
    out[#out + 1] = ordering_superseded_by(admission, ARGV[i])
  else
    out[#out + 1] = ''
  end
end
ordering_routed(admission, writes, names)
if writes[1] then redis.call('HSET', event, unpack(writes)) end

for _, field in ipairs(redis.call('HKEYS', event)) do
  if not known[field] and string.sub(field, 1, #handler_prefix) == handler_prefix then
    local stored = redis.call('HGET', event, field)
    local status = cjson.decode(stored).status
    if status ~= 'done' and status ~= 'dead' then
      out[#out + 1] = string.sub(field, #handler_prefix + 1)
      out[#out + 1] = stored
    end
  end
end
return out
