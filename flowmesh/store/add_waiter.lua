-- flowmesh: register a result waiter unless the instance already finished.
--
-- KEYS[1] instance hash fm:{app}:i:<id>; KEYS[2] waiters set fm:{app}:w:<id>
-- ARGV: waiter ("<address> <correlation id>"), most waiters kept, terminal statuses...
--
-- Returns the encoded state, or false (nil) when the instance does not exist.

local found = redis.call('HMGET', KEYS[1], 's', 'status')
if not found[1] then
  return false
end
for i = 3, #ARGV do
  if found[2] == ARGV[i] then
    return found[1]
  end
end
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 and redis.call('SCARD', KEYS[2]) > tonumber(ARGV[2]) then
  -- Make room: a set keeps no order, so a random earlier waiter goes (its client re-asks).
  local dropped
  repeat
    dropped = redis.call('SPOP', KEYS[2])
    if dropped == ARGV[1] then
      redis.call('SADD', KEYS[2], dropped)
    end
  until dropped ~= ARGV[1]
end
return found[1]
