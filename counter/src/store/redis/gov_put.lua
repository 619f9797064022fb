-- Creates or replaces a governance document (a workflow), audited, unless identical.
-- ARGV: prefix, hash name, id, canonical json, actor, now_ms, action prefix, audit subject.
-- Returns {'unchanged'}, {'created'} or {'updated', before json}.
local hash, id, doc, actor, now, kind, subject = P .. ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local before = redis.call('HGET', hash, id)
if before == doc then return {'unchanged'} end
redis.call('HSET', hash, id, doc)
if before then
  audit(now, actor, kind .. '.update', subject, before, doc)
  return {'updated', before}
end
audit(now, actor, kind .. '.create', subject, '', doc)
return {'created'}
