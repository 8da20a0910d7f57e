-- Makes an event's scheduled retries due now, without waiting for their backoff: each of its
-- handlers waiting for a retry is due now, and the event's job is moved to the front.
--
-- KEYS[1] event           the event's hash
-- KEYS[2] queue           arq's queue
-- ARGV[1] now             ms
-- ARGV[2] handler_prefix  of the handler-state fields in the event's hash
-- ARGV[3] job_id          the event's job
-- Returns -1 if the event is not stored, else the number of retries made due now (0 for an
-- event that is finished or has none scheduled).
local event, queue = KEYS[1], KEYS[2]
local now, handler_prefix, job_id = tonumber(ARGV[1]), ARGV[2], ARGV[3]

local status = redis.call('HGET', event, 'status')
if not status then return -1 end
if status ~= 'pending' then return 0 end
local made_due = 0
local fields = redis.call('HGETALL', event)
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, #handler_prefix) == handler_prefix then
    local state = cjson.decode(fields[i + 1])
    if state.status == 'retry' and state.next_attempt_at and state.next_attempt_at > now then
      state.next_attempt_at = now
      redis.call('HSET', event, fields[i], cjson.encode(state))
      made_due = made_due + 1
    end
  end
end
if made_due > 0 then redis.call('ZADD', queue, 'XX', now, job_id) end
return made_due
