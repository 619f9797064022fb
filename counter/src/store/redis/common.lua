-- Prepended to every Tollgate script (see redis.rs, "Scripts").
-- KEYS[1] is the config version key `{ns}:config:version`: it routes the call to the namespace's
-- slot on Redis Cluster. ARGV[1] is the key prefix `{ns}:`; every key built from it carries the
-- same hash tag, so it lives in that same slot.
local P = ARGV[1]

-- Integers cross into Redis as text written by us: Lua 5.1 would print 1e14 as "1e+14".
local function int(x)
  return string.format('%d', x)
end

-- The caller built its decisions on config version `version` (budgets + exemptions).
local function config_is(version)
  return (redis.call('GET', KEYS[1]) or '0') == version
end

local function audit(now, actor, action, subject, before, after, note)
  local seq = redis.call('INCR', P .. 'audit:seq')
  if note and note ~= '' then
    redis.call('XADD', P .. 'audit', '*', 'seq', int(seq), 'at', now, 'actor', actor, 'action', action,
      'subject', subject, 'before', before, 'after', after, 'note', note)
  else
    redis.call('XADD', P .. 'audit', '*', 'seq', int(seq), 'at', now, 'actor', actor, 'action', action,
      'subject', subject, 'before', before, 'after', after)
  end
end

-- Spend of one budget in buckets >= from. Fields are `m:<bucket>` (micros), `t:<bucket>` (tokens)
-- and `x:<bucket>` (the reservation excess of a `reserve: p99` budget, counter/src/reserve.rs).
local function window_spend(budget, from)
  local fields = redis.call('HGETALL', P .. 'spend:' .. budget)
  local micros, tokens, excess = 0, 0, 0
  for i = 1, #fields, 2 do
    local f = fields[i]
    if tonumber(string.sub(f, 3)) >= from then
      local kind = string.sub(f, 1, 1)
      if kind == 'm' then
        micros = micros + tonumber(fields[i + 1])
      elseif kind == 't' then
        tokens = tokens + tonumber(fields[i + 1])
      else
        excess = excess + tonumber(fields[i + 1])
      end
    end
  end
  return micros, tokens, excess
end

-- A lease slice is stored as `<micros>:<expires_at_ms>` under field <gateway> of `lease:<budget>`.
local function slice(text)
  local m, e = string.match(text, '^(%-?%d+):(%-?%d+)$')
  return tonumber(m), tonumber(e)
end
