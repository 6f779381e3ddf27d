-- Reads a channel's position and a range of its history in one step, so that the
-- position and the items agree.
--
-- KEYS[1] meta hash (e = epoch, s = top offset)
-- KEYS[2] history stream
-- ARGV[1] epoch to start with when the channel has none; "" answers "not seeded"
-- ARGV[2] meta ttl in ms when starting an epoch; 0 keeps it forever
-- ARGV[3] "since" offset, or "" for none
-- ARGV[4] "since" epoch
-- ARGV[5] limit: -1 everything kept, 0 the position only, n at most n
-- ARGV[6] "1" for newest first
-- Returns {top, epoch, status, items}; status 0 ok, 2 not seeded, 3 "since" is of
-- another epoch (no items).
local meta, stream = KEYS[1], KEYS[2]

local epoch = redis.call('hget', meta, 'e')
if not epoch then
  if ARGV[1] == '' then
    return {0, '', 2, {}}
  end
  epoch = ARGV[1]
  redis.call('hset', meta, 'e', epoch, 's', 0)
  if tonumber(ARGV[2]) > 0 then
    redis.call('pexpire', meta, ARGV[2])
  end
  redis.call('del', stream)
end
local top = tonumber(redis.call('hget', meta, 's') or '0')

local limit = tonumber(ARGV[5])
local since = ARGV[3]
if limit == 0 then
  return {top, epoch, 0, {}}
end
if since ~= '' and ARGV[4] ~= epoch then
  return {top, epoch, 3, {}}
end

local items
if ARGV[6] == '1' then
  local hi = '+'
  if since ~= '' then hi = '(0-' .. since end
  if limit > 0 then
    items = redis.call('xrevrange', stream, hi, '-', 'COUNT', limit)
  else
    items = redis.call('xrevrange', stream, hi, '-')
  end
else
  local lo = '-'
  if since ~= '' then lo = '(0-' .. since end
  if limit > 0 then
    items = redis.call('xrange', stream, lo, '+', 'COUNT', limit)
  else
    items = redis.call('xrange', stream, lo, '+')
  end
end
return {top, epoch, 0, items}
