-- flowmesh: delete everything about one instance but its version.
--
-- KEYS[1..5] instance hash, history, outbox hash, timer hash, waiters (per instance)
-- KEYS[6] instance index, KEYS[7] outbox index, KEYS[8] timers zset
-- KEYS[9..] status indexes
-- ARGV: instance id
--
-- The instance hash keeps only `v`: a new run of the ID continues the version numbering, so a
-- replica's cached view of the purged run can never pass a version check again.
-- Returns 1 if the instance existed, else 0.

local id = ARGV[1]
local found = redis.call('HMGET', KEYS[1], 'v', 's')
local members = redis.call('HVALS', KEYS[4])
for first = 1, #members, 1000 do
  redis.call('ZREM', KEYS[8], unpack(members, first, math.min(first + 999, #members)))
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
if found[1] then
  redis.call('HSET', KEYS[1], 'v', found[1])
end
redis.call('ZREM', KEYS[6], id)
redis.call('ZREM', KEYS[7], id)
for i = 9, #KEYS do
  redis.call('ZREM', KEYS[i], id)
end
if found[2] then
  return 1
end
return 0
