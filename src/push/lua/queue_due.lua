-- Hands due jobs to one consumer (a node) of the group.
-- KEYS[1] stream, KEYS[2] jobs hash, KEYS[3] delay zset (job id -> due ms),
-- KEYS[4] tries hash (job id -> attempts)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] now (ms), ARGV[4] limit,
-- ARGV[5] visibility timeout in ms, or -1 not to reclaim this time,
-- ARGV[6] where the previous reclaim scan stopped ('0-0' = from the start),
-- ARGV[7..] stream ids this consumer has in flight (not handed out again)
-- Returns {next due ms or -1, where this reclaim scan stopped, then per job: stream id,
-- job id, body, attempts}.
local stream, jobs, delay, tries = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, consumer = ARGV[1], ARGV[2]
local limit = tonumber(ARGV[4])
local idle = tonumber(ARGV[5])

-- Retries whose time has come go back into the stream.
local ready = redis.call('ZRANGEBYSCORE', delay, '-inf', ARGV[3], 'LIMIT', 0, 1000)
for _, id in ipairs(ready) do
  redis.call('ZREM', delay, id)
  if redis.call('HEXISTS', jobs, id) == 1 then
    redis.call('XADD', stream, '*', 'j', id)
  end
end

-- The group exists from the first call on (again after a Redis that lost it).
redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')

local skip = {}
for i = 7, #ARGV do skip[ARGV[i]] = true end
local entries = {}
local cursor = ARGV[6]
if idle >= 0 then
  -- Entries a consumer took and never acknowledged (it died, or could not record the
  -- outcome) for longer than the visibility timeout.
  -- Each call scans a bounded part of the pending list; the next goes on from there.
  local r = redis.call('XAUTOCLAIM', stream, group, consumer, idle, cursor, 'COUNT', limit)
  cursor = r[1]
  for _, e in ipairs(r[2]) do
    if not skip[e[1]] then table.insert(entries, e) end
  end
  -- Consumers of nodes that are gone (each start is a new one) once nothing is pending
  -- with them; a live node that is removed is added again by its next read.
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', stream, group)) do
    local f = {}
    for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
    if f['name'] ~= consumer and tonumber(f['pending']) == 0 and tonumber(f['idle']) > idle then
      redis.call('XGROUP', 'DELCONSUMER', stream, group, f['name'])
    end
  end
end
if #entries < limit then
  local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', limit - #entries,
    'STREAMS', stream, '>')
  if r then
    for _, e in ipairs(r[1][2]) do table.insert(entries, e) end
  end
end

local out = {-1, cursor}
for _, e in ipairs(entries) do
  local sid, fields = e[1], e[2]
  local id = fields and fields[2]
  local body = id and redis.call('HGET', jobs, id)
  if body then
    table.insert(out, sid)
    table.insert(out, id)
    table.insert(out, body)
    table.insert(out, redis.call('HGET', tries, id) or '0')
  else
    -- The job was dropped (its token died) after it was queued.
    redis.call('XACK', stream, group, sid)
    redis.call('XDEL', stream, sid)
  end
end
local next = redis.call('ZRANGE', delay, 0, 0, 'WITHSCORES')
if next[2] then out[1] = tonumber(next[2]) end
return out
