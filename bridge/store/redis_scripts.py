"""The Lua scripts the Redis store runs on the server: each write of the store port is one of
them (atomic on its own, several keys), plus the reads that must see several keys at once
(depths, fetch) and the cluster's heartbeat/takeover, delivery leases, rate limits and binds.

Apart from :mod:`bridge.store.redis` because they are another language and the key layout's
one full statement (the store's docstring has the layout); :class:`RedisConnection
<bridge.store.redis_client.RedisConnection>` loads them by name.
"""

from __future__ import annotations

__all__ = ["SCRIPTS"]

# ARGV[1] is always the key prefix. Scripts compute their keys (one Redis primary holds all).

_ADD = """
local P, N = ARGV[1], ARGV[2]
local pk = ARGV[3]
local n = tonumber(ARGV[4])
local i = 5
local seen = {}
for k = 1, n do
  local id = ARGV[i]
  local no = tonumber(ARGV[i + 5])
  -- the same message again (a write replayed after a lost reply) is not a duplicate
  if n == 1 and redis.call('HGET', P .. 'm:' .. id, 'b') == ARGV[i + 1] then return n end
  for j = 0, no do
    local x = id
    if j > 0 then x = ARGV[i + 5 + j] end
    if seen[x] or redis.call('EXISTS', P .. 'm:' .. x) == 1
        or redis.call('EXISTS', P .. 'p:' .. x) == 1 then
      return redis.error_reply('DUP ' .. x)
    end
    seen[x] = true
  end
  i = i + 6 + no
end
i = 5
for k = 1, n do
  local id, blob, state = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local has_pid, created = ARGV[i + 3], ARGV[i + 4]
  local no = tonumber(ARGV[i + 5])
  local others = {}
  for j = 1, no do
    others[j] = ARGV[i + 5 + j]
    redis.call('SET', P .. 'p:' .. others[j], id)
  end
  redis.call('HSET', P .. 'm:' .. id, 'b', blob, 's', state, 'c', created,
             'o', cmsgpack.pack(others), 'n', N)
  if tonumber(state) ~= 1 then
    redis.call('ZADD', P .. 'f', created, id)
  elseif has_pid == '1' then
    redis.call('ZADD', P .. 'a:' .. N, 0, id)
  else
    redis.call('ZADD', P .. 'q:' .. N, 0, id)
  end
  i = i + 6 + no
end
if pk ~= '' then
  redis.call('DEL', P .. 'r:' .. pk)
  redis.call('SREM', P .. 'rk', pk)
end
return n
"""

_UPDATE = """
local P, id, blob, state, has_pid, change = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local nc = tonumber(ARGV[7])
for j = 0, nc - 1 do
  local field, expires = ARGV[8 + 2 * j], ARGV[9 + 2 * j]
  redis.call('HSET', P .. 'c', field, id)
  redis.call('ZADD', P .. 'cx', expires, field)
end
local key = P .. 'm:' .. id
local s = redis.call('HGET', key, 's')
if not s then return 0 end
if tonumber(s) ~= 1 then
  if change ~= '' then redis.call('RPUSH', P .. 'h:' .. id, change) end
  return 1
end
redis.call('HSET', key, 'b', blob, 's', state)
if change ~= '' then redis.call('RPUSH', P .. 'h:' .. id, change) end
local N = redis.call('HGET', key, 'n')  -- the node that owns it (takeover moves it)
if tonumber(state) ~= 1 then
  redis.call('ZREM', P .. 'q:' .. N, id)
  redis.call('ZREM', P .. 'a:' .. N, id)
  redis.call('ZADD', P .. 'f', redis.call('HGET', key, 'c'), id)
elseif has_pid == '1' then
  redis.call('ZREM', P .. 'q:' .. N, id)
  redis.call('ZADD', P .. 'a:' .. N, 0, id)
else
  redis.call('ZREM', P .. 'a:' .. N, id)
  redis.call('ZADD', P .. 'q:' .. N, 0, id)
end
return 1
"""

# Delete one message (by any id) or, with ARGV[2] == 'purge', final messages created before
# ARGV[3], at most ARGV[4] of them.
_DELETE = """
local P = ARGV[1]
local function drop(mid)
  local key = P .. 'm:' .. mid
  local o = redis.call('HGET', key, 'o')
  if not o then return 0 end
  local N = redis.call('HGET', key, 'n')
  for _, pid in ipairs(cmsgpack.unpack(o)) do redis.call('DEL', P .. 'p:' .. pid) end
  redis.call('DEL', key, P .. 'h:' .. mid)
  redis.call('ZREM', P .. 'q:' .. N, mid)
  redis.call('ZREM', P .. 'a:' .. N, mid)
  redis.call('ZREM', P .. 'f', mid)
  return 1
end
if ARGV[2] == 'purge' then
  local ids = redis.call('ZRANGEBYSCORE', P .. 'f', '-inf', '(' .. ARGV[3], 'LIMIT', 0, ARGV[4])
  local n = 0
  for _, mid in ipairs(ids) do n = n + drop(mid) end
  return n
end
local mid = redis.call('GET', P .. 'p:' .. ARGV[3]) or ARGV[3]
return drop(mid)
"""

_CORRELATE = """
local P = ARGV[1]
for j = 0, (#ARGV - 1) / 3 - 1 do
  local field, mid, expires = ARGV[2 + 3 * j], ARGV[3 + 3 * j], ARGV[4 + 3 * j]
  redis.call('HSET', P .. 'c', field, mid)
  redis.call('ZADD', P .. 'cx', expires, field)
end
return 0
"""

_EXPIRE_CORRELATIONS = """
local P = ARGV[1]
local gone = redis.call('ZRANGEBYSCORE', P .. 'cx', '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
for _, field in ipairs(gone) do
  redis.call('HDEL', P .. 'c', field)
  redis.call('ZREM', P .. 'cx', field)
end
return #gone
"""

_PART = """
local P = ARGV[1]
if ARGV[2] == 'drop' then
  redis.call('DEL', P .. 'r:' .. ARGV[3])
  redis.call('SREM', P .. 'rk', ARGV[3])
  return 0
end
redis.call('HSET', P .. 'r:' .. ARGV[3], ARGV[4], ARGV[5])
redis.call('SADD', P .. 'rk', ARGV[3])
return 0
"""

_ENQUEUE = """
local P, at = ARGV[1], ARGV[2]
local ids = {}
for j = 3, #ARGV, 2 do
  local account = ARGV[j]
  local n = redis.call('INCR', P .. 'dseq')
  redis.call('XADD', P .. 'd:' .. account, '0-' .. n, 'w', ARGV[j + 1], 't', at)
  redis.call('SADD', P .. 'da', account)
  ids[#ids + 1] = n
end
return ids
"""

# ARGV[2] = '' (any account) or one account; ARGV[3..] delivery ids.
_REMOVE = """
local P = ARGV[1]
local accounts
if ARGV[2] ~= '' then accounts = {ARGV[2]} else accounts = redis.call('SMEMBERS', P .. 'da') end
local ids = {}
for j = 3, #ARGV do
  ids[#ids + 1] = '0-' .. ARGV[j]
  redis.call('HDEL', P .. 'dt', ARGV[j])
end
local n = 0
for _, account in ipairs(accounts) do
  local key = P .. 'd:' .. account
  n = n + redis.call('XDEL', key, unpack(ids))
  if redis.call('XLEN', key) == 0 then redis.call('SREM', P .. 'da', account) end
end
return n
"""

_ATTEMPT = """
redis.call('HINCRBY', ARGV[1] .. 'dt', ARGV[2], 1)
return 0
"""

_DEPTHS = """
local P = ARGV[1]
local queued = 0
for _, node in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
  queued = queued + redis.call('ZCARD', P .. 'q:' .. node)
end
local out = {queued}
for _, account in ipairs(redis.call('SMEMBERS', P .. 'da')) do
  out[#out + 1] = account
  out[#out + 1] = redis.call('XLEN', P .. 'd:' .. account)
end
return out
"""

# Everything a batch of reports needs, in one call: ARGV[2..] pairs of (kind, key): kind 'c' a
# correlation field, 'm' a message id. Returns per pair: {message id or false, blob or false,
# history list}.
_FETCH = """
local P = ARGV[1]
local out = {}
for j = 2, #ARGV, 2 do
  local mid
  if ARGV[j] == 'c' then
    mid = redis.call('HGET', P .. 'c', ARGV[j + 1])
  else
    mid = redis.call('GET', P .. 'p:' .. ARGV[j + 1]) or ARGV[j + 1]
  end
  if mid then
    local blob = redis.call('HGET', P .. 'm:' .. mid, 'b')
    if blob then
      out[#out + 1] = {mid, blob, redis.call('LRANGE', P .. 'h:' .. mid, 0, -1)}
    else
      out[#out + 1] = {mid, false, {}}
    end
  else
    out[#out + 1] = {false, false, {}}
  end
end
return out
"""

# A node's heartbeat: ARGV[2] node, ARGV[3] milliseconds until it counts as dead. Then every
# registered node without a heartbeat is dead: its queued and awaiting messages move to this
# node (one atomic step, so two survivors cannot both take them). Returns
# {dead node, queued ids moved, awaiting ids moved, ...}.
_HEARTBEAT = """
local P, me, ttl = ARGV[1], ARGV[2], ARGV[3]
redis.call('SET', P .. 'hb:' .. me, ARGV[4], 'PX', ttl)
redis.call('SADD', P .. 'nodes', me)
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
  if node ~= me and redis.call('EXISTS', P .. 'hb:' .. node) == 0 then
    local moved = {}
    for _, kind in ipairs({'q', 'a'}) do
      local ids = redis.call('ZRANGE', P .. kind .. ':' .. node, 0, -1)
      for _, id in ipairs(ids) do
        redis.call('ZADD', P .. kind .. ':' .. me, 0, id)
        redis.call('HSET', P .. 'm:' .. id, 'n', me)
      end
      redis.call('DEL', P .. kind .. ':' .. node)
      moved[#moved + 1] = ids
    end
    redis.call('SREM', P .. 'nodes', node)
    redis.call('DEL', P .. 'binds:' .. node)
    out[#out + 1] = node
    out[#out + 1] = moved[1]
    out[#out + 1] = moved[2]
  end
end
table.insert(out, 1, redis.call('SCARD', P .. 'nodes'))
return out
"""

# A sliding-window log (README, "Running several nodes"): ARGV[2] the limit's name, ARGV[3] at
# most this many in ARGV[4] ms, ARGV[5] a unique member. 0 = taken; else ms to wait. Redis's
# clock, so every node measures the same window.
_RATE = """
local key = ARGV[1] .. 'rl:' .. ARGV[2]
local limit, window = tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, now, ARGV[5])
  redis.call('PEXPIRE', key, window)
  return 0
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now + 1)
"""

# Binds across nodes. ARGV[2] node, ARGV[3] ttl ms; 'gate': ARGV[5] account, ARGV[6] max_binds,
# ARGV[7] binds on this node → 1 (and counted) when one more fits, else 0; 'publish': ARGV[5..]
# pairs of account, binds on this node.
_BINDS = """
local P, me, ttl = ARGV[1], ARGV[2], ARGV[3]
local mine = P .. 'binds:' .. me
if ARGV[4] == 'publish' then
  redis.call('DEL', mine)
  for j = 5, #ARGV, 2 do redis.call('HSET', mine, ARGV[j], ARGV[j + 1]) end
  redis.call('PEXPIRE', mine, ttl)
  return 1
end
local account, max, here = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local total = here
for _, node in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
  if node ~= me and redis.call('EXISTS', P .. 'hb:' .. node) == 1 then
    total = total + (tonumber(redis.call('HGET', P .. 'binds:' .. node, account)) or 0)
  end
end
if total + 1 > max then return 0 end
redis.call('HSET', mine, account, here + 1)
redis.call('PEXPIRE', mine, ttl)
return 1
"""

# Delivery leases: ARGV[2] node, ARGV[3] ttl ms, then 'h' accounts to hold (take or renew)
# and 'r' accounts to release. Returns the accounts held.
_LEASE = """
local P, me, ttl = ARGV[1], ARGV[2], ARGV[3]
local held = {}
for j = 4, #ARGV, 2 do
  local key = P .. 'dl:' .. ARGV[j + 1]
  local owner = redis.call('GET', key)
  if ARGV[j] == 'h' then
    if owner == me then
      redis.call('PEXPIRE', key, ttl)
      held[#held + 1] = ARGV[j + 1]
    elseif not owner then
      redis.call('SET', key, me, 'PX', ttl)
      held[#held + 1] = ARGV[j + 1]
    end
  elseif owner == me then
    redis.call('DEL', key)
  end
end
return held
"""

SCRIPTS = {
    "rate": _RATE,
    "binds": _BINDS,
    "lease": _LEASE,
    "heartbeat": _HEARTBEAT,
    "add": _ADD,
    "update": _UPDATE,
    "delete": _DELETE,
    "correlate": _CORRELATE,
    "expire_corr": _EXPIRE_CORRELATIONS,
    "part": _PART,
    "enqueue": _ENQUEUE,
    "remove": _REMOVE,
    "attempt": _ATTEMPT,
    "depths": _DEPTHS,
    "fetch": _FETCH,
}
