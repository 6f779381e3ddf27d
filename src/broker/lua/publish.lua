-- Sequences one publication atomically: idempotency check, next offset, history
-- append and delivery. Redis runs one script at a time, so the order of offsets is the
-- order in which every subscribed node receives the publications.
--
-- KEYS[1] meta hash (e = epoch, s = top offset)
-- KEYS[2] history stream (entry ids 0-<offset>, field d = the publication)
-- KEYS[3] idempotency key (used if ARGV[11] is '1')
-- KEYS[4] unstored zset of a persisted channel (member "<offset>:<channel>"; used if
--         ARGV[12] is '1')
-- ARGV[1] pub/sub channel
-- ARGV[2] the publication (protobuf, without offset)
-- ARGV[3] history size (entries kept)
-- ARGV[4] history ttl in ms (the stream expires this long after its last publication)
-- ARGV[5] meta ttl in ms; 0 keeps the meta forever (persisted channels)
-- ARGV[6] epoch to start with when the channel has none; "" answers "not seeded"
-- ARGV[7] idempotency window in ms
-- ARGV[8] now in ms (carried to subscribers to measure pub/sub lag)
-- ARGV[9] the channel's name (for the unstored zset)
-- ARGV[10] 'publish', or 'spublish' on a Redis Cluster (sharded pub/sub)
-- ARGV[11], ARGV[12] '1' when KEYS[3], KEYS[4] are used; unused ones are any key of the
--          channel's slot (a Redis Cluster refuses keys of other slots, even unused)
-- Returns {offset, epoch, status}; status 0 published, 1 duplicate, 2 not seeded.
local meta, stream, idem, unstored = KEYS[1], KEYS[2], '', ''
if ARGV[11] == '1' then idem = KEYS[3] end
if ARGV[12] == '1' then unstored = KEYS[4] end

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
redis.call(ARGV[10], ARGV[1], 'p' .. top .. ':' .. epoch .. ':' .. ARGV[8] .. ':' .. ARGV[2])
return {top, epoch, 0}
