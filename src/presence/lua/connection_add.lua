-- Counts one connection of a user across the cluster, unless the user is at the limit.
-- Each node refreshes the expiry of its own connections; those of a node that died
-- stop counting within broker.presence_ttl.
--
-- KEYS[1] the user's connections zset (connection id -> expires at, ms)
-- ARGV[1] connection id
-- ARGV[2] expires at (ms)
-- ARGV[3] limit, 0 = none
-- ARGV[4] now (ms)
-- ARGV[5] key ttl (ms)
-- Returns 1 when counted (or already counted), 0 at the limit.
local key = KEYS[1]
redis.call('zremrangebyscore', key, '-inf', '(' .. ARGV[4])
local limit = tonumber(ARGV[3])
if not redis.call('zscore', key, ARGV[1]) and limit > 0 and redis.call('zcard', key) >= limit then
  return 0
end
redis.call('zadd', key, ARGV[2], ARGV[1])
redis.call('pexpire', key, ARGV[5])
return 1
