-- Stores a new exemption request (id taken from `exemption_requests:seq` by the caller), audited.
-- ARGV: prefix, id, json, actor, now_ms. Returns {'ok'} or {'exists'} (a retried call).
local id, body, actor, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('HSETNX', P .. 'exemption_requests', id, body) == 0 then return {'exists'} end
audit(now, actor, 'exemption_request.create', 'exemption_request:' .. id, '', body)
return {'ok'}
