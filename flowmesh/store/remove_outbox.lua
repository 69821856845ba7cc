-- flowmesh: forget published outbox entries (idempotent).
--
-- KEYS[1] outbox hash fm:{app}:o:<id>; KEYS[2] outbox index fm:{app}:outbox
-- ARGV: instance id, entry ids...

local first = 2
while first <= #ARGV do
  local last = math.min(first + 999, #ARGV)
  redis.call('HDEL', KEYS[1], unpack(ARGV, first, last))
  first = last + 1
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 0
