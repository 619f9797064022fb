-- Deletes a budget with its spend counters and lease slices, audited.
-- ARGV: prefix, budget id, actor, now_ms. Returns {'none'} or {'deleted', before json}.
local id, actor, now = ARGV[2], ARGV[3], ARGV[4]
local before = redis.call('HGET', P .. 'budgets', id)
if not before then return {'none'} end
redis.call('HDEL', P .. 'budgets', id)
redis.call('DEL', P .. 'spend:' .. id, P .. 'lease:' .. id)
redis.call('INCR', KEYS[1])
audit(now, actor, 'budget.delete', id, before, '')
return {'deleted', before}
