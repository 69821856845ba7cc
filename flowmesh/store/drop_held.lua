-- flowmesh: forget held messages that arrived before a time (they were dead-lettered).
--
-- KEYS[1] held list fm:{app}:e:<id>; KEYS[2] held index fm:{app}:early
-- ARGV: id, before ms
--
-- Entries are "<arrival ms>:<msgpack map>" in arrival order. The index score becomes the
-- arrival of the oldest message left. Idempotent.

local entries = redis.call('LRANGE', KEYS[1], 0, -1)
local before = tonumber(ARGV[2])
local dropped = 0
local next_ms = nil
for _, entry in ipairs(entries) do
  local ms = tonumber(string.sub(entry, 1, string.find(entry, ':', 1, true) - 1))
  if ms < before then
    dropped = dropped + 1
  else
    next_ms = ms
    break
  end
end
if next_ms == nil then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
elseif dropped > 0 then
  redis.call('LTRIM', KEYS[1], dropped, -1)
  redis.call('ZADD', KEYS[2], next_ms, ARGV[1])
end
return dropped
