"""The Lua scripts that make a session's writes atomic in Redis (see redis_layout.py for the
key layout). Each runs on one slot: every key it touches shares the session's hash tag."""

# KEYS[1] session hash; ARGV[1] ttl in ms; ARGV[2..] field/value pairs.
CREATE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS[1] session hash, KEYS[2] observation log; ARGV[1] expected seq, ARGV[2] new seq,
# ARGV[3] ttl in ms, ARGV[4] number of stages, ARGV[5] log limit, ARGV[6] log entry (may be
# empty), ARGV[7] reply, ARGV[8] model version (empty: unchanged), ARGV[9] student state
# (empty: unchanged), ARGV[10] its seq, ARGV[11] a new anchor's seq (0: none), ARGV[12] the
# number m of its stage index / state pairs that follow, ARGV[13] a version switch's progress
# (empty: unchanged; dropped when the model version moves), ARGV[14] the desired-version
# revision that moved it (written with ARGV[8]), then the m pairs, then stage index / state /
# seq triples.
# Replies {status, seq}; a replayed commit sees its own seq: CONFLICT.
COMMIT_LUA = """
local current = redis.call('HGET', KEYS[1], 'seq')
if not current then
  return {'gone'}
end
if tonumber(current) ~= tonumber(ARGV[1]) then
  return {'conflict', current}
end
local n_stages = tonumber(ARGV[4])
local stage_seq = function(k)
  return tonumber(redis.call('HGET', KEYS[1], 'stage:' .. k .. ':seq') or '0')
end
local was_level = true
for k = 0, n_stages - 1 do
  if stage_seq(k) ~= tonumber(ARGV[1]) then was_level = false end
end
local anchor_seq = tonumber(ARGV[11])
local triples = 15 + 2 * tonumber(ARGV[12])
local advanced = {}
for i = triples, #ARGV, 3 do advanced[tonumber(ARGV[i])] = true end
local level_after = true
for k = 0, n_stages - 1 do
  if not advanced[k] then level_after = false end
end
if was_level and not level_after then
  redis.call('HSET', KEYS[1], 'anchor_seq', ARGV[1])
  for k = 0, n_stages - 1 do
    local state = redis.call('HGET', KEYS[1], 'stage:' .. k)
    if state then redis.call('HSET', KEYS[1], 'anchor:' .. k, state) end
  end
elseif level_after and redis.call('HEXISTS', KEYS[1], 'anchor_seq') == 1 then
  redis.call('HDEL', KEYS[1], 'anchor_seq')
  for k = 0, n_stages - 1 do redis.call('HDEL', KEYS[1], 'anchor:' .. k) end
end
if anchor_seq > 0 and not level_after then
  redis.call('HSET', KEYS[1], 'anchor_seq', anchor_seq)
  for k = 0, n_stages - 1 do redis.call('HDEL', KEYS[1], 'anchor:' .. k) end
  for i = 15, triples - 1, 2 do
    redis.call('HSET', KEYS[1], 'anchor:' .. ARGV[i], ARGV[i + 1])
  end
end
redis.call('HSET', KEYS[1], 'seq', ARGV[2], 'reply', ARGV[7])
if #ARGV[8] > 0 then
  redis.call('HSET', KEYS[1], 'model_version', ARGV[8], 'version_revision', ARGV[14])
  redis.call('HDEL', KEYS[1], 'switch')
end
if #ARGV[13] > 0 then redis.call('HSET', KEYS[1], 'switch', ARGV[13]) end
if #ARGV[9] > 0 then redis.call('HSET', KEYS[1], 'student', ARGV[9], 'student_seq', ARGV[10]) end
for i = triples, #ARGV, 3 do
  redis.call('HSET', KEYS[1], 'stage:' .. ARGV[i], ARGV[i + 1], 'stage:' .. ARGV[i] .. ':seq', ARGV[i + 2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local limit = tonumber(ARGV[5])
if limit > 0 and #ARGV[6] > 0 then
  redis.call('RPUSH', KEYS[2], ARGV[6])
  redis.call('LTRIM', KEYS[2], -limit, -1)
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return {'committed', ARGV[2]}
"""

# KEYS[1] session hash. A write that changes nothing (the TTL set to itself), so that a WAIT
# after it covers every earlier write to the session. Replies the TTL in ms (-2: no session).
TOUCH_LUA = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return ttl
"""

# KEYS[1] an owner's set of session ids; ARGV[1] the most it may hold, ARGV[2] a session id.
# Replies 1 when the id was added (or was there), 0 when the set is full.
RESERVE_LUA = """
if redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 1 then
  return 1
end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('SADD', KEYS[1], ARGV[2])
return 1
"""
