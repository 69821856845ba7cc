-- flowmesh: delete everything about one instance.
--
-- KEYS[1..5] instance hash, history, outbox hash, timer hash, waiters (per instance)
-- KEYS[6] instance index, KEYS[7] outbox index, KEYS[8] timers zset
-- KEYS[9..] status indexes
-- ARGV: instance id
--
-- Returns 1 if the instance existed, else 0.

local id = ARGV[1]
local existed = redis.call('EXISTS', KEYS[1])
local members = redis.call('HVALS', KEYS[4])
for first = 1, #members, 1000 do
  redis.call('ZREM', KEYS[8], unpack(members, first, math.min(first + 999, #members)))
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('ZREM', KEYS[6], id)
redis.call('ZREM', KEYS[7], id)
for i = 9, #KEYS do
  redis.call('ZREM', KEYS[i], id)
end
return existed
