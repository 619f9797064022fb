-- Deletes a governance document (a workflow), audited.
-- ARGV: prefix, hash name, id, actor, now_ms, action prefix, audit subject.
-- Returns {'none'} or {'deleted', before json}.
local hash, id, actor, now, kind, subject = P .. ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local before = redis.call('HGET', hash, id)
if not before then return {'none'} end
redis.call('HDEL', hash, id)
audit(now, actor, kind .. '.delete', subject, before, '')
return {'deleted', before}
