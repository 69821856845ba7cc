-- flowmesh: apply one workflow step atomically (see docs/redis-keys.md).
--
-- KEYS[1] instance hash  fm:{app}:i:<id>   fields v (version), r (run ID), s (state), status
-- KEYS[2] history list   fm:{app}:h:<id>
-- KEYS[3] outbox hash    fm:{app}:o:<id>   entry_id -> encoded message
-- KEYS[4] timer hash     fm:{app}:t:<id>   seq -> member in the timers zset
-- KEYS[5] instance index fm:{app}:idx      zset id -> creation sequence
-- KEYS[6] outbox index   fm:{app}:outbox   zset id -> sequence of oldest pending commit
-- KEYS[7] timers         fm:{app}:timers   zset "<id>|<seq>|<fire_ms>" -> due ms
-- KEYS[8] sequence       fm:{app}:seq      counter ordering creations and outbox commits
--                                          (sharded: the last server-clock stamp, see below)
-- KEYS[9] waiters        fm:{app}:w:<id>   set of reply addresses waiting for the result
-- KEYS[10] held messages fm:{app}:e:<id>   list of messages that arrived before the instance
-- KEYS[11] held index    fm:{app}:early    zset id -> arrival ms of its oldest held message
-- KEYS[12..] status index fm:{app}:idx:<STATUS>, one per status
--
-- ARGV: id, expected version, new version, status, state blob, replace (0|1),
--       n_events, events..., n_outbox, (entry_id, blob)..., n_cancel, seq...,
--       n_add, (seq, member, due_ms)..., n_clear, entry_id..., take_waiters (0|1),
--       expected run ID, new run ID, take_held, clock (0|1)
--
-- Returns {1, waiter...} when applied (the waiters it removed, only with take_waiters = 1),
-- {0, stored_version} on a conflict (nothing written, the waiters stay): the stored version
-- or run differs from the expected one, or (creating) not exactly take_held messages are held.

local id = ARGV[1]
local found = redis.call('HMGET', KEYS[1], 'v', 'r', 's')
local stored = tonumber(found[1] or '0')
local n = #ARGV - 1
-- clock = 1 (a sharded app): orderings must compare across shards, which a per-shard counter
-- cannot do, so scores are the server's clock in microseconds, kept strictly increasing per
-- shard (the last stamp is in KEYS[8]). Otherwise the counter, as ever.
local clock = ARGV[#ARGV] == '1'
local function next_seq()
  if not clock then
    return redis.call('INCR', KEYS[8])
  end
  local t = redis.call('TIME')
  local stamp = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('GET', KEYS[8]) or '0')
  if stamp <= last then
    stamp = last + 1
  end
  stamp = string.format('%.0f', stamp)
  redis.call('SET', KEYS[8], stamp)
  return stamp
end
if stored ~= tonumber(ARGV[2]) or (found[2] or '') ~= ARGV[n - 2] then
  return {0, stored}
end
if not found[3] then
  -- Creating: the step must have applied every message held for the instance.
  if redis.call('LLEN', KEYS[10]) ~= tonumber(ARGV[n]) then
    return {0, stored}
  end
  if tonumber(ARGV[n]) > 0 then
    redis.call('DEL', KEYS[10])
    redis.call('ZREM', KEYS[11], id)
  end
end

-- unpack() is bounded by the Lua C stack (~8000 values), so variadic commands go in chunks.
local function call_chunked(command, key, first, last, step)
  while first <= last do
    local stop = math.min(first + 1000 * step - 1, last)
    redis.call(command, key, unpack(ARGV, first, stop))
    first = stop + 1
  end
end

local status_keys = {}
for i = 12, #KEYS do
  status_keys[string.match(KEYS[i], ':([A-Z_]+)$')] = KEYS[i]
end
local status = ARGV[4]
if not status_keys[status] then
  return redis.error_reply('flowmesh: no index key for status ' .. status)
end

-- History.
local pos = 7
local n_events = tonumber(ARGV[pos])
if ARGV[6] == '1' then
  redis.call('DEL', KEYS[2])
end
call_chunked('RPUSH', KEYS[2], pos + 1, pos + n_events, 1)
pos = pos + n_events + 1

-- State, version and the indexes.
local old_status = redis.call('HGET', KEYS[1], 'status')
redis.call('HSET', KEYS[1], 'v', ARGV[3], 'r', ARGV[n - 1], 's', ARGV[5], 'status', status)
local score = redis.call('ZSCORE', KEYS[5], id)
if not score then
  score = next_seq()
  redis.call('ZADD', KEYS[5], score, id)
end
if old_status ~= status then
  if old_status and status_keys[old_status] then
    redis.call('ZREM', status_keys[old_status], id)
  end
  redis.call('ZADD', status_keys[status], score, id)
end

-- Outbox: the index keeps the position of the oldest pending commit.
local n_outbox = tonumber(ARGV[pos])
if n_outbox > 0 then
  call_chunked('HSET', KEYS[3], pos + 1, pos + 2 * n_outbox, 2)
  if not redis.call('ZSCORE', KEYS[6], id) then
    redis.call('ZADD', KEYS[6], next_seq(), id)
  end
end
pos = pos + 2 * n_outbox + 1

-- Timers: cancel first, so one commit may cancel and re-arm the same seq.
local n_cancel = tonumber(ARGV[pos])
for i = pos + 1, pos + n_cancel do
  local member = redis.call('HGET', KEYS[4], ARGV[i])
  if member then
    redis.call('ZREM', KEYS[7], member)
    redis.call('HDEL', KEYS[4], ARGV[i])
  end
end
pos = pos + n_cancel + 1

local n_add = tonumber(ARGV[pos])
for i = pos + 1, pos + 3 * n_add, 3 do
  local seq, member, due = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local previous = redis.call('HGET', KEYS[4], seq)
  if previous and previous ~= member then
    redis.call('ZREM', KEYS[7], previous)
  end
  redis.call('ZADD', KEYS[7], due, member)
  redis.call('HSET', KEYS[4], seq, member)
end
pos = pos + 3 * n_add + 1

-- Earlier outbox entries published since (folded in here to save a round trip).
local n_clear = tonumber(ARGV[pos])
if n_clear > 0 then
  call_chunked('HDEL', KEYS[3], pos + 1, pos + n_clear, 1)
  if redis.call('EXISTS', KEYS[3]) == 0 then
    redis.call('ZREM', KEYS[6], id)
  end
end
pos = pos + n_clear + 1

-- Result waiters, taken in the same atomic step as the state change that answers them
-- (add_waiter.lua reads the status this script just wrote).
local reply = {1}
if ARGV[pos] == '1' then
  local waiters = redis.call('SMEMBERS', KEYS[9])
  if #waiters > 0 then
    redis.call('DEL', KEYS[9])
    for i = 1, #waiters do
      reply[i + 1] = waiters[i]
    end
  end
end
return reply
