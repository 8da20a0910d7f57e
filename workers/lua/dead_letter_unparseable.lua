-- Keeps a signed body that is not a usable event as a dead letter, once per body.
--
-- KEYS[1] letter            the dead letter's hash
-- KEYS[2] dead_letter_index sorted set of dead-letter ids, by time dead-lettered
-- KEYS[3] reason_counts     hash of the number of dead letters per reason
-- ARGV[1] letter            the letter, as encode_dead_letter wrote it
-- Returns 1 if kept, 0 if this body was kept before.
local letter, dead_letter_index, reason_counts = KEYS[1], KEYS[2], KEYS[3]
local encoded = ARGV[1]

if redis.call('EXISTS', letter) == 1 then return 0 end
-- The raw body is the letter's whole content, so it is always written, also when empty (the
-- encoding leaves out a field at its default).
put_dead_letter(letter, dead_letter_index, reason_counts, encoded, {'raw', ''})
return 1
