-- Adds (or refreshes) one client's presence entry in a channel, unless the channel
-- already holds `limit` other clients: the check and the write in one step, so
-- concurrent subscribes on any node cannot overshoot a namespace's max_presence_size.
--
-- KEYS[1] data hash (client -> ClientInfo protobuf)
-- KEYS[2] expiry zset (client -> expires at, ms)
-- KEYS[3] users hash (client -> user)
-- ARGV[1] client id
-- ARGV[2] ClientInfo protobuf
-- ARGV[3] user
-- ARGV[4] expires at (ms)
-- ARGV[5] limit, 0 = none
-- ARGV[6] now (ms)
-- ARGV[7] key ttl (ms)
-- Returns 1 when written, 0 when the channel is full.
local data, expiry, users = KEYS[1], KEYS[2], KEYS[3]
local limit = tonumber(ARGV[5])
if limit > 0 and redis.call('hexists', data, ARGV[1]) == 0 then
  -- Entries of clients whose node died do not count against the limit.
  local expired = redis.call('zrangebyscore', expiry, '-inf', '(' .. ARGV[6], 'LIMIT', 0, 1000)
  if #expired > 0 then
    redis.call('zrem', expiry, unpack(expired))
    redis.call('hdel', data, unpack(expired))
    redis.call('hdel', users, unpack(expired))
  end
  if redis.call('hlen', data) >= limit then
    return 0
  end
end
redis.call('hset', data, ARGV[1], ARGV[2])
redis.call('hset', users, ARGV[1], ARGV[3])
redis.call('zadd', expiry, ARGV[4], ARGV[1])
for _, k in ipairs({data, expiry, users}) do
  redis.call('pexpire', k, ARGV[7])
end
return 1
