-- A usage batch's retry-guard events (docs/guards.md, crate::task): stores each once (HSETNX by
-- record id) under its key and its task, then answers the shared counts, the tasks' failure
-- streaks (keys whose events are outcomes: failed / succeeded) and recent checkpoints.
--   guard:ev:<key>      hash  record id -> gateway \t kind \t at_ms   (the key's attempts or outcomes)
--   guard:task:<task>   hash  record id -> kind \t retry              (the task's summary)
--   guard:keys:<task>   set   the keys seen with the task             (where checkpoints go)
--   checkpoints:recent  zset  n \t task, scored by at_ms              (written by add_checkpoint)
-- ARGV: prefix, gateway, now_ms, retain_ms, recent_ms, max checkpoints, max keys per task,
-- then per event 7 values: id, key, task ('' for none), kind, retry, at_ms, since_ms.
-- Returns {counts, checkpoints, streaks}: flat {key, since_ms, others, ...}, {key, checkpoint id,
-- at_ms, ...} and {key, since_ms, others, ended_ms or '', own_since_end, ...} (crate::task::streak).
local gateway, now, retain, recent = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local max_cps, max_keys = tonumber(ARGV[6]), tonumber(ARGV[7])
local batch_keys, order = {}, {}
for i = 8, #ARGV, 7 do
  local id, key, task, kind, retry, at, since = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], tonumber(ARGV[i + 6])
  local ev = P .. 'guard:ev:' .. key
  local outcome = kind == 'failed' or kind == 'succeeded'
  if redis.call('HSETNX', ev, id, gateway .. '\t' .. kind .. '\t' .. at) == 1 and task ~= '' then
    if not outcome then
      redis.call('HSET', P .. 'guard:task:' .. task, id, kind .. '\t' .. retry)
      redis.call('PEXPIRE', P .. 'guard:task:' .. task, retain)
    end
    redis.call('SADD', P .. 'guard:keys:' .. task, key)
    redis.call('PEXPIRE', P .. 'guard:keys:' .. task, retain)
  end
  redis.call('PEXPIRE', ev, retain)
  local b = batch_keys[key]
  if b == nil then
    batch_keys[key] = {task = task, since = since, streak = outcome}
    order[#order + 1] = key
  elseif since > b.since then
    b.since = since
  end
end

-- The task's newest checkpoint time (or nil).
local function checkpoint_at(task)
  if task == '' then return nil end
  local newest = nil
  local fields = redis.call('HGETALL', P .. 'checkpoints:' .. task)
  for i = 2, #fields, 2 do
    local at = tonumber(string.match(fields[i], '"at_ms":(%-?%d+)'))
    if at and (newest == nil or at > newest) then newest = at end
  end
  return newest
end

local counts, streaks = {}, {}
for _, key in ipairs(order) do
  local b = batch_keys[key]
  local cp = checkpoint_at(b.task)
  local ev = P .. 'guard:ev:' .. key
  local fields = redis.call('HGETALL', ev)
  local events = {}
  for i = 1, #fields, 2 do
    local g, kind, at = string.match(fields[i + 1], '^(.*)\t(%a+)\t(%-?%d+)$')
    at = tonumber(at)
    if at and at < now - retain then
      redis.call('HDEL', ev, fields[i])
    elseif at then
      events[#events + 1] = {g = g, kind = kind, at = at}
    end
  end
  if b.streak then
    -- A success anywhere ends the streak: only failures after the newest one count.
    local success, ended = nil, nil
    for _, e in ipairs(events) do
      if e.kind == 'succeeded' then
        if success == nil or e.at > success then success = e.at end
        if e.g ~= gateway and e.at >= b.since and (ended == nil or e.at > ended) then ended = e.at end
      end
    end
    local others, own = 0, 0
    for _, e in ipairs(events) do
      if e.kind == 'failed' and e.at >= b.since and (cp == nil or e.at > cp) and (success == nil or e.at > success) then
        if e.g ~= gateway then others = others + 1 else own = own + 1 end
      end
    end
    streaks[#streaks + 1] = key
    streaks[#streaks + 1] = int(b.since)
    streaks[#streaks + 1] = int(others)
    streaks[#streaks + 1] = ended and int(ended) or ''
    streaks[#streaks + 1] = ended and int(own) or '0'
  else
    local others = 0
    for _, e in ipairs(events) do
      if e.g ~= gateway and (e.kind == 'passed' or e.kind == 'observed') and e.at >= b.since and (cp == nil or e.at > cp) then
        others = others + 1
      end
    end
    counts[#counts + 1] = key
    counts[#counts + 1] = int(b.since)
    counts[#counts + 1] = int(others)
  end
end

-- The newest checkpoint of each task checkpointed recently, for every key of that task.
redis.call('ZREMRANGEBYSCORE', P .. 'checkpoints:recent', '-inf', '(' .. int(now - recent))
local cps, done, seen = {}, {}, {}
local members = redis.call('ZREVRANGEBYSCORE', P .. 'checkpoints:recent', '+inf', int(now - recent), 'WITHSCORES', 'LIMIT', 0, max_cps)
for i = 1, #members, 2 do
  local n, task = string.match(members[i], '^(%d+)\t(.*)$')
  if n and not done[task] then
    done[task] = true
    local keys = redis.call('SMEMBERS', P .. 'guard:keys:' .. task)
    for j = 1, math.min(#keys, max_keys) do
      if not seen[keys[j]] then
        seen[keys[j]] = true
        cps[#cps + 1] = keys[j]
        cps[#cps + 1] = 'cp-' .. n
        cps[#cps + 1] = members[i + 1]
      end
    end
  end
end
return {counts, cps, streaks}
