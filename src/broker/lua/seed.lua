-- Starts a persisted channel's sequence at the durable store's position, unless Redis
-- already has one. The store is the authority for persisted channels: if Redis lost the
-- sequence (a restart without persistence), offsets continue after the store's top and
-- never reuse an acknowledged one.
--
-- KEYS[1] meta hash (e = epoch, s = top offset)
-- KEYS[2] history stream
-- ARGV[1] the store's epoch
-- ARGV[2] the store's top offset
-- Returns 1 if seeded, 0 if a sequence existed.
local meta, stream = KEYS[1], KEYS[2]
if redis.call('exists', meta) == 1 then
  return 0
end
local top = tonumber(ARGV[2])
-- Entries the stream still holds (sequenced, maybe not stored yet) keep their offsets.
local last = redis.call('xrevrange', stream, '+', '-', 'COUNT', 1)
if last[1] then
  local n = tonumber(string.match(last[1][1], '^0%-(%d+)$') or '0')
  if n > top then top = n end
end
redis.call('hset', meta, 'e', ARGV[1], 's', top)
return 1
