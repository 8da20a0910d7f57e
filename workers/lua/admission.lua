-- Library: admission, the one step that decides whether one (event, handler) attempt may
-- start now. begin.lua asks it before counting an attempt (admission_admit), finish.lua
-- records when a held-back run looks again (admission_hold) and gives back what a run took
-- (admission_release). A gate is a table in the list admission_gates() builds with
--   check(ctx, handler, limits) -> nil when it lets the run start, else when to look again (ms)
--   take(ctx, handler, limits)     what a started run holds (optional)
--   release(ctx, handler, limits)  at the end of that run (optional)
-- Gates are asked in order; a run starts only if every gate lets it, and only then does any
-- gate take anything.
--
-- The context (admission_context) comes from the calling script:
-- paused        KEYS: hash of paused handlers (name -> JSON)
-- queue         KEYS: arq's queue, or nil where nothing is rescheduled
-- now           ms
-- job_id
-- settings      one ARGV: JSON {slot_ttl_ms, slots_prefix, starts_prefix, waiting_prefix,
--               paused_recheck_ms, job_id_prefix}, decoded only when a gate needs it (a
--               handler without limits needs none of it)
-- limits: a handler's limits ({concurrency = N, rate = N, window_ms = W, paused = true}, the
-- last when the pause is to be asked: the worker's view says paused, or the run was held).
-- admission_admit takes them as begin got them (JSON, '' for none); the gates,
-- admission_hold and admission_release as a table (finish gets them inside its one JSON
-- argument).

local function admission_context(paused, queue, now, job_id, settings)
  return {paused = paused, queue = queue, now = tonumber(now), job_id = job_id,
          settings = settings}
end

-- The context with its settings decoded (once) and the event id (the job id's tail).
local function admission_settled(ctx)
  if not ctx.event_id then
    for name, value in pairs(cjson.decode(ctx.settings)) do ctx[name] = value end
    ctx.event_id = string.sub(ctx.job_id, #ctx.job_id_prefix + 1)
  end
  return ctx
end

local function admission_is_paused(ctx, handler)
  return redis.call('HEXISTS', ctx.paused, handler) == 1
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
          return ctx.now + admission_settled(ctx).paused_recheck_ms
        end
      end,
    },
    {
      name = 'concurrency',
      check = function(ctx, handler, limits)
        if not limits.concurrency then return nil end
        local slots = admission_settled(ctx).slots_prefix .. handler
        redis.call('ZREMRANGEBYSCORE', slots, '-inf', ctx.now)
        if redis.call('ZCARD', slots) < limits.concurrency then return nil end
        if redis.call('ZSCORE', slots, ctx.job_id) then return nil end
        -- at the latest, the first slot lapses then; a run finishing sooner promotes a waiter
        return tonumber(redis.call('ZRANGE', slots, 0, 0, 'WITHSCORES')[2])
      end,
      take = function(ctx, handler, limits)
        if not limits.concurrency then return end
        admission_settled(ctx)
        redis.call('ZADD', ctx.slots_prefix .. handler, ctx.now + ctx.slot_ttl_ms, ctx.job_id)
      end,
      release = function(ctx, handler, limits)
        if not limits.concurrency then return end
        admission_settled(ctx)
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
        local starts = admission_settled(ctx).starts_prefix .. handler
        redis.call('ZREMRANGEBYSCORE', starts, '-inf', ctx.now - limits.window_ms)
        if redis.call('ZCARD', starts) < limits.rate then return nil end
        local oldest = tonumber(redis.call('ZRANGE', starts, 0, 0, 'WITHSCORES')[2])
        -- runs already waiting go first: spread the waiters over the windows they need
        local ahead = redis.call('ZCARD', ctx.waiting_prefix .. handler)
        return oldest + limits.window_ms + math.floor(ahead / limits.rate) * limits.window_ms
      end,
      take = function(ctx, handler, limits)
        if not limits.rate then return end
        local starts = admission_settled(ctx).starts_prefix .. handler
        redis.call('ZADD', starts, ctx.now, ctx.now .. ':' .. ctx.job_id)
        redis.call('PEXPIRE', starts, limits.window_ms)
      end,
    },
  }
  return admission_gate_list
end

-- nil if the run may start now (and it has taken what it holds), else when to look again
-- (ms) and the name of the gate that held it. ``encoded_limits`` as the caller got them: ''
-- (no limits, and the worker knows of no pause) lets the run start with nothing asked.
local function admission_admit(ctx, handler, encoded_limits)
  if encoded_limits == '' then return nil end
  local limits = cjson.decode(encoded_limits)
  for _, gate in ipairs(admission_gates()) do
    local again = gate.check(ctx, handler, limits)
    if again then return again, gate.name end
  end
  for _, gate in ipairs(admission_gates()) do
    if gate.take then gate.take(ctx, handler, limits) end
  end
  if next(limits) then
    admission_settled(ctx)
    redis.call('ZREM', ctx.waiting_prefix .. handler, ctx.event_id)
  end
  return nil
end

-- For a run admission held back: when it looks again, asked again now (a gate may have
-- opened since begin); a run still held waits on the handler's waiting list, oldest first.
local function admission_hold(ctx, handler, limits, received_at)
  local waiting = admission_settled(ctx).waiting_prefix .. handler
  for _, gate in ipairs(admission_gates()) do
    local again = gate.check(ctx, handler, limits)
    if again then
      redis.call('ZADD', waiting, 'NX', received_at, ctx.event_id)
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
