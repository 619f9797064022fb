-- Grants or tops up one gateway's slice on each budget of a chain (contract: store/mod.rs, Leases).
-- ARGV: prefix, config version, now_ms, gateway, expires_at_ms, want, n,
--       then n x (budget id, window start bucket, hard limit, token limit or -1, observe 0/1,
--       known: lease_expires_at_ms of the grant the gateway had seen, or '' if it does not say,
--       holder: the slice's field, the gateway or `<gateway>@<key>` for a selector budget).
-- A live slice granted after the one the gateway had seen is not lowered (it may be committed).
-- Returns {'stale'} or {'ok', then per budget: granted, spent, tokens, reservation excess}.
if not config_is(ARGV[2]) then return {'stale'} end
local now, gateway, expires, want = tonumber(ARGV[3]), ARGV[4], ARGV[5], tonumber(ARGV[6])
local out = {'ok'}
local i = 8
for _ = 1, tonumber(ARGV[7]) do
  local id, from, hard, token_limit, observe = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), ARGV[i + 4] == '1'
  local known, holder = tonumber(ARGV[i + 5]), ARGV[i + 6]
  i = i + 7
  local spent, tokens, excess = window_spend(id, from)
  local key = P .. 'lease:' .. id
  local slices = redis.call('HGETALL', key)
  local others, kept = 0, 0
  for j = 1, #slices, 2 do
    local m, e = slice(slices[j + 1])
    if e <= now then
      redis.call('HDEL', key, slices[j])
    elseif slices[j] ~= holder then
      others = others + m
    elseif known ~= nil and e > known then
      kept = m
    end
  end
  local granted
  if observe then
    granted = math.max(want, 0)
  elseif token_limit >= 0 and tokens >= token_limit then
    granted = 0
  else
    granted = math.max(math.min(math.max(want, kept), hard - spent - others), 0)
  end
  redis.call('HSET', key, holder, int(granted) .. ':' .. expires)
  out[#out + 1] = int(granted)
  out[#out + 1] = int(spent)
  out[#out + 1] = int(tokens)
  out[#out + 1] = int(excess)
end
return out
