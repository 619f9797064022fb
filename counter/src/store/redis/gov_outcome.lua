-- Records an outcome unless its id is known (first write wins), indexed by time.
-- ARGV: prefix, id, at_ms, json. Returns {'created'} or {'exists', stored json}.
local id, at, body = ARGV[2], ARGV[3], ARGV[4]
if redis.call('HSETNX', P .. 'outcomes', id, body) == 0 then
  return {'exists', redis.call('HGET', P .. 'outcomes', id)}
end
redis.call('ZADD', P .. 'outcomes:at', at, id)
return {'created'}
