-- Keeps a signed body that is not a usable event as a dead letter, once per body.
--
-- KEYS[1] letter            the dead letter's hash
-- KEYS[2] dead_letter_index sorted set of dead-letter ids, by time dead-lettered
-- KEYS[3] reason_counts     hash of the number of dead letters per reason
-- ARGV[1] dead_lettered_at  ms
-- ARGV[2] letter_id
-- ARGV[3..] the letter's fields: name, value, name, value...
-- Returns 1 if kept, 0 if this body was kept before.
local letter, dead_letter_index, reason_counts = KEYS[1], KEYS[2], KEYS[3]
local dead_lettered_at, letter_id = ARGV[1], ARGV[2]

if redis.call('EXISTS', letter) == 1 then return 0 end
redis.call('HSET', letter, unpack(ARGV, 3))
redis.call('ZADD', dead_letter_index, dead_lettered_at, letter_id)
redis.call('HINCRBY', reason_counts, redis.call('HGET', letter, 'reason'), 1)
return 1
