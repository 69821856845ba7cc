-- flowmesh: hold a message for an instance that does not exist yet.
--
-- KEYS[1] instance hash fm:{app}:i:<id>; KEYS[2] held list fm:{app}:e:<id>;
-- KEYS[3] held index fm:{app}:early (zset id -> arrival ms of the oldest held message)
-- ARGV: id, arrival ms, entry ("<arrival ms>:<msgpack map>")
--
-- Returns 0 if the instance exists (nothing held: the caller applies the message to it), else
-- 1. Atomic with commit.lua, which refuses to create the instance while messages it did not
-- apply are held, so a message is either applied by the creating step or held after it.

if redis.call('HEXISTS', KEYS[1], 's') == 1 then
  return 0
end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], 'NX', ARGV[2], ARGV[1])
return 1
