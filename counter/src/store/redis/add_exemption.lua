-- Stores a new exemption (its id was taken from `exemptions:seq` by the caller), audited.
-- ARGV: prefix, exemption id, exemption json, actor, now_ms. Returns {'ok'} or {'exists'}
-- (a retry of a call whose answer was lost: stored once, audited once).
local id, body, actor, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('HSETNX', P .. 'exemptions', id, body) == 0 then return {'exists'} end
redis.call('INCR', KEYS[1])
audit(now, actor, 'exemption.add', 'exemption:' .. id, '', body)
return {'ok'}
