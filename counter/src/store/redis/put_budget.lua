-- Creates or replaces a budget, audited, unless identical to the stored one.
-- ARGV: prefix, budget id, canonical spec json, actor, now_ms.
-- Returns {'unchanged'}, {'created'} or {'updated', before json}.
local id, spec, actor, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local before = redis.call('HGET', P .. 'budgets', id)
if before == spec then return {'unchanged'} end
redis.call('HSET', P .. 'budgets', id, spec)
redis.call('INCR', KEYS[1])
if before then
  audit(now, actor, 'budget.update', id, before, spec)
  return {'updated', before}
end
audit(now, actor, 'budget.create', id, '', spec)
return {'created'}
