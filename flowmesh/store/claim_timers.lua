-- flowmesh: claim due timers by postponing them for a lease (see docs/redis-keys.md).
--
-- KEYS[1] timers zset  fm:{app}:timers  member "<id>|<seq>|<fire_ms>" -> due ms
-- ARGV: now_ms, lease_end_ms, limit
--
-- Returns the claimed members. A claimed timer stays in the zset, due again at the lease's
-- end, so a replica that dies after claiming only delays it; a commit cancels it for good.

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member)
end
return due
