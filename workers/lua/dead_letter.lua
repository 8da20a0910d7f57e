-- Library, prepended to the scripts that store or remove a dead letter (see
-- workers/scripts.py and workers/dead_letters.py): the one way a script does either, keeping
-- the dead-letter index and the per-reason counts in step with the letters.
--
-- put_dead_letter(letter_key, dead_letter_index, reason_counts, encoded, copied): stores the
--   letter encoded by encode_dead_letter (name, value, ... length-prefixed) under letter_key,
--   after `copied` (name, value, ...: fields the script copies from the event's record),
--   replacing a letter already there, whose reason is no longer counted; indexes it at its
--   dead_lettered_at and counts its reason. Returns the letter's id.
-- remove_dead_letter(letter_key, dead_letter_index, reason_counts, event_letters, letter_id):
--   deletes the letter and its place in the index, in its event's set and in the counts.
--   Returns false if there was no such letter.
local function put_dead_letter(letter_key, dead_letter_index, reason_counts, encoded, copied)
  local fields = length_prefixed(encoded)
  local letter = {}
  for i = 1, #fields, 2 do letter[fields[i]] = fields[i + 1] end
  local replaced = redis.call('HGET', letter_key, 'reason')
  if replaced then redis.call('HINCRBY', reason_counts, replaced, -1) end
  redis.call('DEL', letter_key)
  if #copied > 0 then redis.call('HSET', letter_key, unpack(copied)) end
  redis.call('HSET', letter_key, unpack(fields))
  redis.call('HINCRBY', reason_counts, letter.reason, 1)
  redis.call('ZADD', dead_letter_index, letter.dead_lettered_at, letter.id)
  return letter.id
end

local function remove_dead_letter(letter_key, dead_letter_index, reason_counts, event_letters,
                                  letter_id)
  local reason = redis.call('HGET', letter_key, 'reason')
  if not reason then return false end
  redis.call('HINCRBY', reason_counts, reason, -1)
  redis.call('DEL', letter_key)
  redis.call('ZREM', dead_letter_index, letter_id)
  redis.call('SREM', event_letters, letter_id)
  return true
end
