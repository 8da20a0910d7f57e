-- Indexes one event stored before search existed: its search terms kept, and its id entered
-- in the search index of each term, by receipt time. An event already indexed (or gone)
-- is left as it is, so a reindex can run again at any point.
--
-- KEYS[1] event          the event's hash
-- KEYS[2] search_terms   hash of each indexed event's search terms
-- ARGV[1] event_id
-- ARGV[2] search_prefix  a search index is this and a term
-- ARGV[3] terms          the event's terms, each written "<length>:<bytes>"
-- Returns 1 indexed, 0 left as it was.
local event, search_terms = KEYS[1], KEYS[2]
local event_id, search_prefix, terms = ARGV[1], ARGV[2], ARGV[3]

if redis.call('EXISTS', event) == 0 or redis.call('HEXISTS', search_terms, event_id) == 1 then
  return 0
end
local received_at = redis.call('HGET', event, 'received_at')
add_search_entries(search_prefix, search_terms, terms, event_id, received_at)
return 1
