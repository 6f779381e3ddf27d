-- Records how jobs ended; the stream entry is acknowledged and deleted either way.
-- KEYS[1] stream, KEYS[2] jobs hash, KEYS[3] delay zset, KEYS[4] tries hash,
-- KEYS[5..] the token set of each job, in order
-- ARGV[1] group; then per job: stream id, job id, due ms ('' = done), attempts
local stream, jobs, delay, tries = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local n = 0
for i = 2, #ARGV, 4 do
  local sid, id, due = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  redis.call('XACK', stream, ARGV[1], sid)
  redis.call('XDEL', stream, sid)
  if due == '' then
    redis.call('HDEL', jobs, id)
    redis.call('HDEL', tries, id)
    redis.call('SREM', KEYS[5 + n], id)
  elseif redis.call('HEXISTS', jobs, id) == 1 then
    redis.call('ZADD', delay, due, id)
    redis.call('HSET', tries, id, ARGV[i + 3])
  end
  n = n + 1
end
return n
