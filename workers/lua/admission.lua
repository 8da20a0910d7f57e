-- Library: admission, the one step that decides whether one (event, handler) attempt may
-- start now. begin.lua asks it before counting an attempt (admission_admit), finish.lua
-- records when a held-back run looks again (admission_hold) and gives back what a run took
-- (admission_release). A gate is a table in the list admission_gates() builds with
--   check(ctx, handler, limits) -> nil when it lets the run start, else when to look again (ms)
--   take(ctx, handler, limits)     what a started run holds (optional)
--   release(ctx, handler, limits)  at the end of that run (optional)
--   wait(ctx, handler, limits, received_at)  where a run it holds waits to be woken
--                                  (optional; else on the handler's waiting list)
-- Gates are asked in order; a run starts only if every gate lets it, and only then does any
-- gate take anything.
--
-- The context (admission_context) comes from the calling script:
-- paused        KEYS: hash of paused handlers (name -> JSON)
-- queue         KEYS: arq's queue, or nil where nothing is rescheduled
-- now           ms
-- job_id
-- session       the event's checkout session id ('' or nil for none)
-- and the worker's settings, the table admission_settings that the script's source opens
-- with (Admission.settings): {slot_ttl_ms, slots_prefix, starts_prefix, waiting_prefix,
-- paused_recheck_ms, job_id_prefix, ordering (LOOPS_ORDERING), event_prefix,
-- handler_prefix, session_prefix, session_waiting_prefix, in_progress_prefix,
-- session_waiting_ttl_ms}, read through the context (ctx.slot_ttl_ms).
-- limits: a handler's limits ({concurrency = N, rate = N, window_ms = W, paused = true}, the
-- last when the pause is to be asked: the worker's view says paused, or the run was held).
-- admission_admit takes them as begin got them (JSON, '' for none); the gates,
-- admission_hold and admission_release as a table (finish gets them inside its one JSON
-- argument).

local admission_with_settings = {__index = admission_settings}

-- The context: the call's values and the settings.
local function admission_context(paused, queue, now, job_id, event_id, session)
  return setmetatable({paused = paused, queue = queue, now = tonumber(now), job_id = job_id,
                       event_id = event_id, session_id = session}, admission_with_settings)
end

local function admission_is_paused(ctx, handler)
  return redis.call('HEXISTS', ctx.paused, handler) == 1
end

-- The event's checkout session if admission keeps its order (settings.ordering), else false;
-- session_events (its session's events, by created) whether ordering is on or not.
local function ordering_session(ctx)
  if ctx.session == nil then
    ctx.session = false
    if ctx.session_id and ctx.session_id ~= '' then
      ctx.session_events = ctx.session_prefix .. ctx.session_id
      if ctx.ordering then
        ctx.session = ctx.session_id
        ctx.session_waiting = ctx.session_waiting_prefix .. ctx.session_id
      end
    end
  end
  return ctx.session
end

-- The session's event ids, earliest created first, and this event's place among them (1:
-- the earliest; false if it is not there: its list lapsed before it finished); read once
-- a script (a session has a few events).
local function ordering_place(ctx)
  if ctx.members == nil then
    ctx.members = redis.call('ZRANGE', ctx.session_events, 0, -1)
    ctx.place = false
    for i, member in ipairs(ctx.members) do
      if member == ctx.event_id then ctx.place = i end
    end
  end
  return ctx.members, ctx.place
end

-- Whether the ordering gate has anything to ask: another event of the session (a session of
-- one event, most of them, asks no gate and builds none).
local function ordering_may_hold(ctx)
  if not ordering_session(ctx) then return false end
  local members, place = ordering_place(ctx)
  return #members > (place and 1 or 0)
end

local function ordering_read(ctx, other, handler)
  return redis.call('HMGET', ctx.event_prefix .. other, 'status', ctx.handler_prefix .. handler,
                    'routed')
end

local function ordering_stored_is_due(ctx, stored, handler)
  if stored[1] ~= 'pending' then return false end
  if stored[3] and not string.find(stored[3], '\n' .. handler .. '\n', 1, true) then
    return false
  end
  if not stored[2] then return true end
  local state = cjson.decode(stored[2])
  if state.status == 'done' or state.status == 'dead' then return false end
  return not (state.status == 'retry' and state.next_attempt_at and state.next_attempt_at > ctx.now)
end

-- Whether another event's run of `handler` is due (see ordering_holds): the earliest such
-- waiter is woken.
local function ordering_is_due(ctx, other, handler)
  return ordering_stored_is_due(ctx, ordering_read(ctx, other, handler), handler)
end

-- Ordering per checkout session: when to look again if another event's run of `handler`
-- holds this one back, else nil. Any other event of the session holds it while its run of
-- the handler is in progress (state running and its job's in-progress marker alive: a
-- killed worker's hold lapses with its marker). An `earlier` one also holds it while due:
-- not finished for the handler, and not waiting for a retry scheduled later. An event not
-- begun yet is due for every handler; once begun, it records which handlers it has
-- ('routed'), so one that lacks the handler does not hold the others back. The run's state
-- is the hold: nothing is taken or given back, and a session of one event reads only its
-- list.
local function ordering_holds(ctx, other, handler, earlier)
  local stored = ordering_read(ctx, other, handler)
  if stored[1] ~= 'pending' then return nil end
  if stored[2] and cjson.decode(stored[2]).status == 'running' then
    local lapse = redis.call('PTTL', ctx.in_progress_prefix .. ctx.job_id_prefix .. other)
    if lapse ~= -2 then
      if lapse < 0 then lapse = ctx.slot_ttl_ms end
      return ctx.now + lapse
    end
  end
  -- woken when that run ends; looked at again by then at the latest
  if earlier and ordering_stored_is_due(ctx, stored, handler) then
    return ctx.now + ctx.slot_ttl_ms
  end
  return nil
end

-- The id of the latest event of the session, created after this one, for which `handler`
-- has finished (done); '' if none.
local function ordering_superseded_by(ctx, handler)
  if not ordering_session(ctx) then return '' end
  local members, place = ordering_place(ctx)
  if not place then return '' end
  for i = #members, place + 1, -1 do
    local stored = redis.call('HGET', ctx.event_prefix .. members[i], ctx.handler_prefix .. handler)
    if stored and cjson.decode(stored).status == 'done' then return members[i] end
  end
  return ''
end

-- What a begun event records for the ordering gate of its session's other events: the
-- handlers it has, each between newlines (added to `writes`, field and value, for its HSET).
local function ordering_routed(ctx, writes, names)
  if ordering_session(ctx) then
    writes[#writes + 1] = 'routed'
    writes[#writes + 1] = '\n' .. table.concat(names, '\n') .. '\n'
  end
end

-- Moves back to the queue, for each handler, the earliest-created event of the session that
-- waits for it: the one that may start now, if any may (its run's end wakes the next). Once
-- per script, however many of its runs end.
local function ordering_wake(ctx)
  if not ordering_session(ctx) or not ctx.queue or ctx.woken then return end
  ctx.woken = true
  local woken = {}
  for _, member in ipairs(redis.call('ZRANGE', ctx.session_waiting, 0, -1)) do
    local cut = string.find(member, '\n', 1, true)
    local handler, other = string.sub(member, 1, cut - 1), string.sub(member, cut + 1)
    if not woken[handler] then
      redis.call('ZREM', ctx.session_waiting, member)
      -- an entry of a run finished since (started on its own recheck) is dropped
      if ordering_is_due(ctx, other, handler) then
        woken[handler] = true
        redis.call('ZADD', ctx.queue, 'XX', ctx.now, ctx.job_id_prefix .. other)
      end
    end
  end
end

-- The event is finished: its session's list lives as long as its record (that of the last
-- event finished), and the runs it held back (it had not begun, so it counted as due for
-- every handler) may start.
local function ordering_finished(ctx, expire_at)
  ordering_session(ctx)
  if not ctx.session_events then return end
  redis.call('PEXPIREAT', ctx.session_events, expire_at)
  ordering_wake(ctx)
end

local admission_gate_list = nil

-- The gates, built on first use: a script call whose handlers have no limits and are not
-- paused never builds them.
local function admission_gates()
  if admission_gate_list then return admission_gate_list end
  admission_gate_list = {
    {
      name = 'paused',
      check = function(ctx, handler, limits)
        if limits.paused and admission_is_paused(ctx, handler) then
          return ctx.now + ctx.paused_recheck_ms
        end
      end,
    },
    {
      -- One run of a handler at a time per checkout session, the earliest created first
      -- (ordering_holds). A held run waits on the session's waiting list (not on the
      -- handler's: a freed concurrency slot must go to a run that can take it); finish wakes
      -- the earliest waiter per handler when a run of the session changed state or an event
      -- of it finished (ordering_wake).
      name = 'ordering',
      check = function(ctx, handler, limits)
        if not ordering_session(ctx) then return nil end
        local members, place = ordering_place(ctx)
        for i, other in ipairs(members) do
          if i ~= place then
            local again = ordering_holds(ctx, other, handler, place and i < place)
            if again then return again end
          end
        end
      end,
      wait = function(ctx, handler, limits, received_at)
        local created = redis.call('ZSCORE', ctx.session_events, ctx.event_id) or received_at
        redis.call('ZADD', ctx.session_waiting, 'NX', created, handler .. '\n' .. ctx.event_id)
        redis.call('PEXPIRE', ctx.session_waiting, ctx.session_waiting_ttl_ms)
      end,
    },
    {
      name = 'concurrency',
      check = function(ctx, handler, limits)
        if not limits.concurrency then return nil end
        local slots = ctx.slots_prefix .. handler
        redis.call('ZREMRANGEBYSCORE', slots, '-inf', ctx.now)
        if redis.call('ZCARD', slots) < limits.concurrency then return nil end
        if redis.call('ZSCORE', slots, ctx.job_id) then return nil end
        -- at the latest, the first slot lapses then; a run finishing sooner promotes a waiter
        return tonumber(redis.call('ZRANGE', slots, 0, 0, 'WITHSCORES')[2])
      end,
      take = function(ctx, handler, limits)
        if not limits.concurrency then return end
        redis.call('ZADD', ctx.slots_prefix .. handler, ctx.now + ctx.slot_ttl_ms, ctx.job_id)
      end,
      release = function(ctx, handler, limits)
        if not limits.concurrency then return end
        redis.call('ZREM', ctx.slots_prefix .. handler, ctx.job_id)
        if ctx.queue and not admission_is_paused(ctx, handler) then
          local next_in_line = redis.call('ZPOPMIN', ctx.waiting_prefix .. handler)
          if next_in_line[1] then
            redis.call('ZADD', ctx.queue, 'XX', ctx.now, ctx.job_id_prefix .. next_in_line[1])
          end
        end
      end,
    },
    {
      name = 'rate',
      check = function(ctx, handler, limits)
        if not limits.rate then return nil end
        local starts = ctx.starts_prefix .. handler
        redis.call('ZREMRANGEBYSCORE', starts, '-inf', ctx.now - limits.window_ms)
        if redis.call('ZCARD', starts) < limits.rate then return nil end
        local oldest = tonumber(redis.call('ZRANGE', starts, 0, 0, 'WITHSCORES')[2])
        -- runs already waiting go first: spread the waiters over the windows they need
        local ahead = redis.call('ZCARD', ctx.waiting_prefix .. handler)
        return oldest + limits.window_ms + math.floor(ahead / limits.rate) * limits.window_ms
      end,
      take = function(ctx, handler, limits)
        if not limits.rate then return end
        local starts = ctx.starts_prefix .. handler
        redis.call('ZADD', starts, ctx.now, ctx.now .. ':' .. ctx.job_id)
        redis.call('PEXPIRE', starts, limits.window_ms)
      end,
    },
  }
  return admission_gate_list
end

-- nil if the run may start now (and it has taken what it holds), else when to look again
-- (ms) and the name of the gate that held it. ``encoded_limits`` as the caller got them: ''
-- (no limits, and the worker knows of no pause) lets a run start with no gate asked, unless
-- another event of its session may hold it back.
local function admission_admit(ctx, handler, encoded_limits)
  if encoded_limits == '' and not ordering_may_hold(ctx) then return nil end
  local limits = {}
  if encoded_limits ~= '' then limits = cjson.decode(encoded_limits) end
  for _, gate in ipairs(admission_gates()) do
    local again = gate.check(ctx, handler, limits)
    if again then return again, gate.name end
  end
  for _, gate in ipairs(admission_gates()) do
    if gate.take then gate.take(ctx, handler, limits) end
  end
  if next(limits) then
    redis.call('ZREM', ctx.waiting_prefix .. handler, ctx.event_id)
  end
  return nil
end

-- For a run admission held back: when it looks again, asked again now (a gate may have
-- opened since begin); a run still held waits where its gate wakes it (gate.wait), by
-- default on the handler's waiting list, oldest first.
local function admission_hold(ctx, handler, limits, received_at)
  local waiting = ctx.waiting_prefix .. handler
  for _, gate in ipairs(admission_gates()) do
    local again = gate.check(ctx, handler, limits)
    if again then
      if gate.wait then
        gate.wait(ctx, handler, limits, received_at)
      else
        redis.call('ZADD', waiting, 'NX', received_at, ctx.event_id)
      end
      return again
    end
  end
  redis.call('ZREM', waiting, ctx.event_id)
  return ctx.now
end

local function admission_release(ctx, handler, limits)
  for _, gate in ipairs(admission_gates()) do
    if gate.release then gate.release(ctx, handler, limits) end
  end
end
