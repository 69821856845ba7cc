-- flowmesh: forget published outbox entries of several instances (idempotent).
--
-- KEYS[1]    outbox index fm:{app}:outbox   zset id -> sequence of oldest pending commit
-- KEYS[1+k]  outbox hash  fm:{app}:o:<id_k> of the k-th instance
-- ARGV: per instance, in KEYS order: id_k, n_k, entry_id... (n_k of them)
--
-- An instance leaves the outbox index when its hash is empty. Returns the number of instances.

local pos = 1
for k = 2, #KEYS do
  local id = ARGV[pos]
  local first = pos + 2
  local last = pos + 1 + tonumber(ARGV[pos + 1])
  -- unpack() is bounded by the Lua C stack (~8000 values), so HDEL goes in chunks.
  while first <= last do
    local stop = math.min(first + 999, last)
    redis.call('HDEL', KEYS[k], unpack(ARGV, first, stop))
    first = stop + 1
  end
  if redis.call('EXISTS', KEYS[k]) == 0 then
    redis.call('ZREM', KEYS[1], id)
  end
  pos = last + 1
end
return #KEYS - 1
