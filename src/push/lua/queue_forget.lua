-- Drops every queued job of one token. Their stream entries, if any, are removed when
-- a consumer reads them and finds no job.
-- KEYS[1] jobs hash, KEYS[2] delay zset, KEYS[3] tries hash, KEYS[4] the token's set
local ids = redis.call('SMEMBERS', KEYS[4])
local n = 0
for _, id in ipairs(ids) do
  n = n + redis.call('HDEL', KEYS[1], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[2], id)
end
redis.call('DEL', KEYS[4])
return n
