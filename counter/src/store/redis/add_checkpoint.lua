-- Stores a checkpoint on a task (its id was taken from `checkpoints:seq` by the caller), audited.
-- ARGV: prefix, checkpoint number, task id, checkpoint json, actor, now_ms. Returns {'ok'} or
-- {'exists'} (a retry of a call whose answer was lost: stored once, audited once).
local n, task, body, actor, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if redis.call('HSETNX', P .. 'checkpoints:' .. task, n, body) == 0 then return {'exists'} end
-- Recent checkpoints are delivered to gateways with the usage acknowledgements (guard_exchange.lua).
redis.call('ZADD', P .. 'checkpoints:recent', now, n .. '\t' .. task)
audit(now, actor, 'checkpoint.add', 'task:' .. task, '', body)
return {'ok'}
