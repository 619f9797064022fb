-- The configuration every decision is made against, read in one atomic step.
-- Returns {version, [budget id, spec json, ...], [exemption id, exemption json, ...]}.
return {redis.call('GET', KEYS[1]) or '0', redis.call('HGETALL', P .. 'budgets'), redis.call('HGETALL', P .. 'exemptions')}
