-- Writes (or deletes) one device and its indexes, if the device is still as the caller
-- read it: a compare-and-set, so concurrent registrations from several nodes never
-- leave an index pointing at the wrong device.
-- KEYS[1] devices hash (id -> JSON), KEYS[2] tokens hash ("provider:token" -> id),
-- KEYS[3] ids zset (every id, score 0, for ordered paging),
-- KEYS[4 .. 3+ARGV[6]] sets (user's, topic's) to remove the id from,
-- the next ARGV[7] keys: sets to add it to
-- ARGV[1] id, ARGV[2] the JSON read ('' = absent), ARGV[3] the new JSON ('' = delete),
-- ARGV[4] old token field ('' = none), ARGV[5] new token field ('' = none)
-- Returns 1 written, 0 the device changed meanwhile, -1 the new token is another's.
local devs, toks, ids = KEYS[1], KEYS[2], KEYS[3]
local id = ARGV[1]
local cur = redis.call('HGET', devs, id) or ''
if cur ~= ARGV[2] then return 0 end
if ARGV[5] ~= '' then
  local owner = redis.call('HGET', toks, ARGV[5])
  if owner and owner ~= id then return -1 end
end
local r, a = tonumber(ARGV[6]), tonumber(ARGV[7])
for i = 4, 3 + r do redis.call('SREM', KEYS[i], id) end
if ARGV[4] ~= '' and ARGV[4] ~= ARGV[5] and redis.call('HGET', toks, ARGV[4]) == id then
  redis.call('HDEL', toks, ARGV[4])
end
if ARGV[3] == '' then
  redis.call('HDEL', devs, id)
  redis.call('ZREM', ids, id)
  return 1
end
redis.call('HSET', devs, id, ARGV[3])
redis.call('ZADD', ids, 0, id)
if ARGV[5] ~= '' then redis.call('HSET', toks, ARGV[5], id) end
for i = 4 + r, 3 + r + a do redis.call('SADD', KEYS[i], id) end
return 1
