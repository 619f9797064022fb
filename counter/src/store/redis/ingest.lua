-- One usage batch, all or nothing (contract: store/mod.rs, Usage).
-- ARGV: prefix, config version, now_ms, gateway, idempotency ttl ms, prune horizon bucket,
--       ledger MAXLEN ('' = none), ledger retention ms (0 = none), number of charge sets,
--       then per set: n, n x (budget id, bucket, lease holder: the gateway or `<gateway>@<key>`);
--       then number of records, then per record: id, cost, billed tokens, ledger json, charge set,
--       k, k x (budget id, reservation excess) (`reserve: p99` budgets it reserved below worst on).
-- Each record's idempotency key is set (NX) first: only a record seen for the first time is
-- appended to the ledger stream and charged. Charges are summed per (budget, bucket) and per
-- (budget, holder) (that slice shrinks) and applied once at the end.
-- Returns {'stale'} or {'ok', accepted, duplicates}.
if not config_is(ARGV[2]) then return {'stale'} end
local now, gateway, ttl, horizon = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local maxlen, retention = ARGV[7], tonumber(ARGV[8])
local i = 10
local sets = {}
for s = 1, tonumber(ARGV[9]) do
  local n = tonumber(ARGV[i])
  i = i + 1
  local set = {}
  for j = 1, n do
    set[j] = {ARGV[i], ARGV[i + 1], ARGV[i + 2]}
    i = i + 3
  end
  sets[s] = set
end
local nrec = tonumber(ARGV[i])
i = i + 1
local ledger = P .. 'ledger'
local accepted, duplicates = 0, 0
local spend, spend_order, used, used_order = {}, {}, {}, {}
for _ = 1, nrec do
  local id, cost, tokens, entry, set = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), ARGV[i + 3], sets[tonumber(ARGV[i + 4])]
  local excess = {}
  for j = 1, tonumber(ARGV[i + 5]) do
    excess[ARGV[i + 4 + 2 * j]] = tonumber(ARGV[i + 5 + 2 * j])
  end
  i = i + 6 + 2 * tonumber(ARGV[i + 5])
  if redis.call('SET', P .. 'seen:' .. id, '1', 'NX', 'PX', ttl) then
    accepted = accepted + 1
    if maxlen == '' then
      redis.call('XADD', ledger, '*', 'r', entry)
    else
      redis.call('XADD', ledger, 'MAXLEN', '~', maxlen, '*', 'r', entry)
    end
    for _, c in ipairs(set or {}) do
      local k = c[1] .. '\0' .. c[2]
      local s = spend[k]
      if not s then
        s = {c[1], c[2], 0, 0, 0}
        spend[k] = s
        spend_order[#spend_order + 1] = k
      end
      s[3] = s[3] + cost
      s[4] = s[4] + tokens
      s[5] = s[5] + (excess[c[1]] or 0)
      if cost > 0 then
        local u = c[1] .. '\0' .. c[3]
        if not used[u] then
          used[u] = {c[1], c[3], 0}
          used_order[#used_order + 1] = u
        end
        used[u][3] = used[u][3] + cost
      end
    end
  else
    duplicates = duplicates + 1
  end
end
for _, k in ipairs(spend_order) do
  local s = spend[k]
  local key = P .. 'spend:' .. s[1]
  if redis.call('HEXISTS', key, 'm:' .. s[2]) == 0 then
    -- A new day bucket: drop the ones no window can reach any more (bucket 0 is `none`'s).
    local fields = redis.call('HKEYS', key)
    for _, f in ipairs(fields) do
      local b = tonumber(string.sub(f, 3))
      if b ~= 0 and b < horizon then redis.call('HDEL', key, f) end
    end
  end
  redis.call('HINCRBY', key, 'm:' .. s[2], int(s[3]))
  redis.call('HINCRBY', key, 't:' .. s[2], int(s[4]))
  if s[5] > 0 then redis.call('HINCRBY', key, 'x:' .. s[2], int(s[5])) end
end
for _, u in ipairs(used_order) do
  local b, holder, cost = used[u][1], used[u][2], used[u][3]
  local key = P .. 'lease:' .. b
  local current = redis.call('HGET', key, holder)
  if current then
    local m, e = slice(current)
    redis.call('HSET', key, holder, int(math.max(m - cost, 0)) .. ':' .. int(e))
  end
end
if retention > 0 and accepted > 0 then
  local t = redis.call('TIME')
  local min_ms = tonumber(t[1]) * 1000 - retention
  if min_ms > 0 then redis.call('XTRIM', ledger, 'MINID', '~', int(min_ms)) end
end
return {'ok', accepted, duplicates}
