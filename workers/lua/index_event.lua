-- Indexes one event stored before search existed: its search terms kept in its hash, and
-- its id entered in the search index of each term, by receipt time. An event already indexed
-- (or gone, or erased meanwhile) is left as it is, so a reindex can run again at any point.
--
-- KEYS[1] event          the event's hash
-- ARGV[1] event_id
-- ARGV[2] search_prefix  a search index is this and a term
-- ARGV[3] terms_field    the field of an event's hash that keeps its search terms
-- ARGV[4] terms          the event's terms, each written "<length>:<bytes>"
-- Returns 1 indexed, 0 left as it was.
local event = KEYS[1]
local event_id, search_prefix, terms_field, terms = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

if redis.call('EXISTS', event) == 0 or redis.call('HEXISTS', event, terms_field) == 1 then
  return 0
end
local received_at = redis.call('HGET', event, 'received_at')
redis.call('HSET', event, terms_field, terms)
for _, term in ipairs(length_prefixed(terms)) do
  redis.call('ZADD', search_prefix .. term, received_at, event_id)
end
return 1
