-- Creates or replaces a budget, audited, unless identical to the stored one.
-- ARGV: prefix, budget id, canonical spec json, actor, now_ms,
--       the stored spec the caller decided from ('' for none),
--       whether the budget starts from the ledger ('1'/'0'), the ledger's last entry id the caller
--       read up to ('' for an empty ledger), the audit note, n, then n x (bucket, micros, tokens).
-- Starting from the ledger: each bucket becomes at least what the caller summed from the ledger.
-- If the stored budget changed since the caller read it, the answer is {'moved', stored spec or ''}
-- and the caller decides again. The ledger may have grown since the caller read it: records
-- ingested from now on are charged to this budget (the config version moves, so every ingestion
-- after this script sees it), and the records between what the caller read and the ledger's last
-- entry now are the caller's to add ({'created', last id}: see RedisStore::put_budget). An
-- existing budget (observe switched to enforce) was charged for them already.
-- Returns {'unchanged'}, {'created', last ledger id or ''}, {'updated', before json} or {'moved', ...}.
local id, spec, actor, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local expected, seed, note = ARGV[6], ARGV[7] == '1', ARGV[9]
local before = redis.call('HGET', P .. 'budgets', id)
if before == spec then return {'unchanged'} end
local last = redis.call('XREVRANGE', P .. 'ledger', '+', '-', 'COUNT', 1)
local last_id = ''
if last[1] then last_id = last[1][1] end
if (before or '') ~= expected then
  return {'moved', before or ''}
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
return {'created', last_id}
