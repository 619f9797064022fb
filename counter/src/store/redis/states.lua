-- Where each budget stands now (read only).
-- ARGV: prefix, config version, now_ms, n, then n x (budget id, window start bucket).
-- Returns {'stale'} or {'ok', then per budget: spent, tokens, sum of live slices, reservation excess}.
if not config_is(ARGV[2]) then return {'stale'} end
local now = tonumber(ARGV[3])
local out = {'ok'}
local i = 5
for _ = 1, tonumber(ARGV[4]) do
  local id, from = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  local spent, tokens, excess = window_spend(id, from)
  local slices = redis.call('HGETALL', P .. 'lease:' .. id)
  local leased = 0
  for j = 2, #slices, 2 do
    local m, e = slice(slices[j])
    if e > now then leased = leased + m end
  end
  out[#out + 1] = int(spent)
  out[#out + 1] = int(tokens)
  out[#out + 1] = int(leased)
  out[#out + 1] = int(excess)
end
return out
