-- Library, prepended to the scripts that take several values in one argument (see
-- workers/scripts.py, length_prefixed): the one reader of that encoding.
--
-- length_prefixed(record): the values of a record written "<length>:<bytes>" each, in order.
local function length_prefixed(record)
  local values, position = {}, 1
  while position <= #record do
    local colon = string.find(record, ':', position, true)
    local length = tonumber(string.sub(record, position, colon - 1))
    values[#values + 1] = string.sub(record, colon + 1, colon + length)
    position = colon + length + 1
  end
  return values
end
