-- Decides an exemption request if it is still what the caller read; an approval adds its exemption
-- in the same step (and bumps the config version so every instance reloads exemptions).
-- ARGV: prefix, request id, before json, after json, action, exemption id or '', exemption json,
--       actor, now_ms. Returns {'ok'} or {'conflict'}.
local id, before, after, action, eid, ebody, actor, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
if redis.call('HGET', P .. 'exemption_requests', id) ~= before then return {'conflict'} end
if eid ~= '' then
  if redis.call('HSETNX', P .. 'exemptions', eid, ebody) == 0 then return {'conflict'} end
  redis.call('INCR', KEYS[1])
  audit(now, actor, 'exemption.add', 'exemption:' .. eid, '', ebody)
end
redis.call('HSET', P .. 'exemption_requests', id, after)
audit(now, actor, action, 'exemption_request:' .. id, before, after)
return {'ok'}
