-- Library, prepended to the scripts that index events for search or remove them from it (see
-- workers/scripts.py). An event's terms are kept apart from its record, in one hash, so its
-- entries can be found and removed even after the record expired.
--
-- add_search_entries(search_prefix, search_terms, terms, event_id, received_at): the terms
-- (written "<length>:<bytes>" each) kept for the event, and the event in the index of each,
-- scored by its receipt time.
-- remove_search_entries(search_prefix, search_terms, event_id): the event out of the index of
-- each of its terms, and its terms forgotten.
local function add_search_entries(search_prefix, search_terms, terms, event_id, received_at)
  redis.call('HSET', search_terms, event_id, terms)
  for _, term in ipairs(length_prefixed(terms)) do
    redis.call('ZADD', search_prefix .. term, received_at, event_id)
  end
end

local function remove_search_entries(search_prefix, search_terms, event_id)
  local terms = redis.call('HGET', search_terms, event_id)
  if not terms then return end
  for _, term in ipairs(length_prefixed(terms)) do
    redis.call('ZREM', search_prefix .. term, event_id)
  end
  redis.call('HDEL', search_terms, event_id)
end
