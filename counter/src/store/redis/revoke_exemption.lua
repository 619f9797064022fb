-- Replaces an exemption by its revoked form if it is still what the caller read, audited.
-- ARGV: prefix, exemption id, before json, after json, actor, now_ms. Returns {'ok'} or {'conflict'}.
local id, before, after, actor, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if redis.call('HGET', P .. 'exemptions', id) ~= before then return {'conflict'} end
redis.call('HSET', P .. 'exemptions', id, after)
redis.call('INCR', KEYS[1])
audit(now, actor, 'exemption.revoke', 'exemption:' .. id, before, after)
return {'ok'}
