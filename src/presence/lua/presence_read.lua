-- Drops a channel's expired presence entries, then reads what is left: every entry, or
-- only the counts. Expiry is per client: each node refreshes its own clients' entries,
-- so the entries of a node that died disappear within broker.presence_ttl.
--
-- KEYS[1] data hash (client -> ClientInfo protobuf)
-- KEYS[2] expiry zset (client -> expires at, ms)
-- KEYS[3] users hash (client -> user)
-- ARGV[1] now in ms
-- ARGV[2] "stats" for {clients, distinct users}; anything else for the data hash
local data, expiry, users = KEYS[1], KEYS[2], KEYS[3]
local expired = redis.call('zrangebyscore', expiry, '-inf', '(' .. ARGV[1])
if #expired > 0 then
  redis.call('zremrangebyscore', expiry, '-inf', '(' .. ARGV[1])
  -- unpack() has a limit on arguments: delete in chunks.
  for i = 1, #expired, 1000 do
    local chunk = {}
    for j = i, math.min(i + 999, #expired) do
      chunk[#chunk + 1] = expired[j]
    end
    redis.call('hdel', data, unpack(chunk))
    redis.call('hdel', users, unpack(chunk))
  end
end
if ARGV[2] == 'stats' then
  local seen, n = {}, 0
  for _, u in ipairs(redis.call('hvals', users)) do
    if not seen[u] then
      seen[u] = true
      n = n + 1
    end
  end
  return {redis.call('hlen', data), n}
end
return redis.call('hgetall', data)
