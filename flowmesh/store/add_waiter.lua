-- flowmesh: register a result waiter unless the instance already finished.
--
-- KEYS[1] instance hash fm:{app}:i:<id>; KEYS[2] waiters set fm:{app}:w:<id>
-- ARGV: address, terminal statuses...
--
-- Returns the encoded state, or false (nil) when the instance does not exist.

local found = redis.call('HMGET', KEYS[1], 's', 'status')
if not found[1] then
  return false
end
for i = 2, #ARGV do
  if found[2] == ARGV[i] then
    return found[1]
  end
end
redis.call('SADD', KEYS[2], ARGV[1])
return found[1]
