-- Queues push jobs: each job's body goes in the jobs hash, its id in its token's set
-- (so a dead token's jobs can be dropped) and in the stream the nodes consume.
-- KEYS[1] stream, KEYS[2] jobs hash, KEYS[3..] the token set of each job, in order
-- ARGV: per job, job id and body
local n = 0
for i = 1, #ARGV, 2 do
  local id = ARGV[i]
  redis.call('HSET', KEYS[2], id, ARGV[i + 1])
  redis.call('SADD', KEYS[3 + n], id)
  redis.call('XADD', KEYS[1], '*', 'j', id)
  n = n + 1
end
return n
