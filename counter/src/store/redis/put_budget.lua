-- Creates or replaces a budget, audited, unless identical to the stored one.
-- ARGV: prefix, budget id, canonical spec json, actor, now_ms,
--       the stored spec the caller decided from ('' for none),
--       whether the budget starts from the ledger ('1'/'0'), the ledger's last entry id the caller
--       read up to ('' for an empty ledger), the audit note, n, then n x (bucket, micros, tokens).
-- Starting from the ledger: each bucket becomes at least what the caller summed from the ledger.
-- The caller's sums are exact only if nothing was stored or ingested since it read: otherwise the
-- answer is {'moved', stored spec or '', last ledger id or ''} and the caller reads on and retries.
-- Returns {'unchanged'}, {'created'}, {'updated', before json} or {'moved', ...}.
local id, spec, actor, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local expected, seed, ledger_last, note = ARGV[6], ARGV[7] == '1', ARGV[8], ARGV[9]
local before = redis.call('HGET', P .. 'budgets', id)
if before == spec then return {'unchanged'} end
local last = redis.call('XREVRANGE', P .. 'ledger', '+', '-', 'COUNT', 1)
local last_id = ''
if last[1] then last_id = last[1][1] end
if (before or '') ~= expected or (seed and last_id ~= ledger_last) then
  return {'moved', before or '', last_id}
end
redis.call('HSET', P .. 'budgets', id, spec)
redis.call('INCR', KEYS[1])
if seed then
  local key = P .. 'spend:' .. id
  local i = 11
  for _ = 1, tonumber(ARGV[10]) do
    local bucket, micros, tokens = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
    i = i + 3
    if micros > tonumber(redis.call('HGET', key, 'm:' .. bucket) or '0') then
      redis.call('HSET', key, 'm:' .. bucket, int(micros))
    end
    if tokens > tonumber(redis.call('HGET', key, 't:' .. bucket) or '0') then
      redis.call('HSET', key, 't:' .. bucket, int(tokens))
    end
  end
end
if before then
  audit(now, actor, 'budget.update', id, before, spec, note)
  return {'updated', before}
end
audit(now, actor, 'budget.create', id, '', spec, note)
return {'created'}
