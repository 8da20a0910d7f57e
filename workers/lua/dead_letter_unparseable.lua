-- Keeps a signed body that is not a usable event as a dead letter, once per body.
--
-- KEYS[1] letter            the dead letter's hash
-- KEYS[2] dead_letter_index sorted set of dead-letter ids, by time dead-lettered
-- ARGV[1] dead_lettered_at  ms
-- ARGV[2] letter_id
-- ARGV[3..] the letter's fields: name, value, name, value...
-- Returns 1 if kept, 0 if this body was kept before.
local letter, dead_letter_index = KEYS[1], KEYS[2]
local dead_lettered_at, letter_id = ARGV[1], ARGV[2]

if redis.call('EXISTS', letter) == 1 then return 0 end
redis.call('HSET', letter, unpack(ARGV, 3))
redis.call('ZADD', dead_letter_index, dead_lettered_at, letter_id)
return 1
