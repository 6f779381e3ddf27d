-- Sequences one publication atomically: idempotency check, next offset, history
-- append and delivery. Redis runs one script at a time, so the order of offsets is the
-- order in which every subscribed node receives the publications.
--
-- KEYS[1] meta hash (e = epoch, s = top offset)
-- KEYS[2] history stream (entry ids 0-<offset>, field d = the publication)
-- KEYS[3] idempotency key, or "" for none
-- KEYS[4] unstored zset of a persisted channel (member "<offset>:<channel>"), or ""
-- ARGV[1] pub/sub channel
-- ARGV[2] the publication (protobuf, without offset)
-- ARGV[3] history size (entries kept)
-- ARGV[4] history ttl in ms (the stream expires this long after its last publication)
-- ARGV[5] meta ttl in ms; 0 keeps the meta forever (persisted channels)
-- ARGV[6] epoch to start with when the channel has none; "" answers "not seeded"
-- ARGV[7] idempotency window in ms
-- ARGV[8] now in ms (carried to subscribers to measure pub/sub lag)
-- ARGV[9] the channel's name (for the unstored zset)
-- Returns {offset, epoch, status}; status 0 published, 1 duplicate, 2 not seeded.
local meta, stream, idem, unstored = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

if idem ~= '' then
  local prev = redis.call('get', idem)
  if prev then
    return {tonumber(prev), redis.call('hget', meta, 'e') or '', 1}
  end
end

local epoch = redis.call('hget', meta, 'e')
if not epoch then
  if ARGV[6] == '' then
    return {0, '', 2}
  end
  epoch = ARGV[6]
  redis.call('hset', meta, 'e', epoch, 's', 0)
  -- A stream outliving its meta belongs to an older epoch.
  redis.call('del', stream)
end

local top = redis.call('hincrby', meta, 's', 1)
redis.call('xadd', stream, 'MAXLEN', ARGV[3], '0-' .. top, 'd', ARGV[2])
redis.call('pexpire', stream, ARGV[4])
if tonumber(ARGV[5]) > 0 then
  redis.call('pexpire', meta, ARGV[5])
else
  redis.call('persist', meta)
end
if idem ~= '' then
  redis.call('set', idem, top, 'PX', ARGV[7])
end
if unstored ~= '' then
  redis.call('zadd', unstored, ARGV[8], top .. ':' .. ARGV[9])
end
redis.call('publish', ARGV[1], 'p' .. top .. ':' .. epoch .. ':' .. ARGV[8] .. ':' .. ARGV[2])
return {top, epoch, 0}
