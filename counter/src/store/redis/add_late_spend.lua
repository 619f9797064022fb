-- Charges a budget just created (put_budget.lua answered {'created', last id}) with the ledger
-- records ingested between the caller's read of the ledger and the put: no ingestion charged them.
-- ARGV: prefix, budget id, the ledger id the put saw last, n, then n x (bucket, micros, tokens).
-- Once per (budget, ledger id): a retried call whose first try landed changes nothing.
-- Returns {'added'} or {'done'}.
local id, last = ARGV[2], ARGV[3]
if not redis.call('SET', P .. 'late-spend:' .. id .. ':' .. last, '1', 'NX', 'PX', 86400000) then
  return {'done'}
end
local key = P .. 'spend:' .. id
local i = 5
for _ = 1, tonumber(ARGV[4]) do
  redis.call('HINCRBY', key, 'm:' .. ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', key, 't:' .. ARGV[i], ARGV[i + 2])
  i = i + 3
end
return {'added'}
