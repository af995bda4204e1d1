"""The Lua scripts: each step of a request is one script, touching one key's Redis slot.

Every Redis key of one API key carries the hash tag `{key_id}`, so each script's keys live
in one Redis Cluster slot. Amounts are integer nano-USD; they are passed to HINCRBY as
the strings they arrived as, because Lua would print a large number as "1e+12".

Counter hash `c`: s = settled spend, r = reserved (worst cases in flight).
Reservations hash `res`: a:<id> = amount, one request's (or one lease's) own: no header or
retry shares a reservation, so every request meets the limit test (an `Idempotency-Key`
repeat is answered before admission, by `proxy/idempotency`; n:<id>, the sharing count of
older versions, is only ever deleted),
x:<id> = amount charged by the sweeper (a late settle then only adds the difference),
g:<id> = a lease handed back while requests still draw on it (a replayed hand-back is
ignored); it goes with the lease, so a busy key's hash does not grow with its leases.
Sorted set `due`: reservation ids by deadline (ms). Buckets `rpm`/`tpm`: v = level, t = ms.

A lease (`leases.py`) is a reservation a worker draws many requests' worst cases from: it
lives in `res` and `due` like any other, its `a:` shrinking by each request's draw as that
request settles (`LEASE_SETTLE`) and by the unused rest when the worker hands it back
(`LEASE_RETURN`); it is gone when nothing of it is left. So `r` is at all times the worst
cases in flight plus the leases' unused rest, and admission sees both.

A reservation can be 0 (a model without prices, an empty input): releasing one must not
send Redis "-0", which it refuses as not an integer (`_RELEASE`).

Settle marks `d:<id>` (string keys, `mark_of`): every settle, and every push of spend
counted in-process during an outage, sets one under its own id (`SET NX PX`) before it
charges, and charges nothing when the mark is already there. A call whose reply was lost
(a timeout: Redis ran it, the gateway did not hear) is replayed when Redis answers again,
and a dead worker's admissions are settled again at recovery although it may have settled
some just before it died; the mark makes both charge once. A mark lives as long as a
reservation (`limits.reservation_ttl_s`): a replay later than that charges again.
"""

from __future__ import annotations

from typing import Final

# A lease takes at most this share of a key's headroom (limit - settled - reserved), so the
# budget other workers' leases hold idle is a small part of what is left.
LEASE_SHARE: Final = 64


def keys_of(namespace: str, key_id: str, period: str) -> list[str]:
    """counter, reservations, due, rpm bucket, tpm bucket."""
    base = f"{namespace}:lim:{{{key_id}}}"
    return [f"{base}:{period}:c", f"{base}:{period}:res", f"{base}:{period}:due",
            f"{base}:rpm", f"{base}:tpm"]


def mark_of(namespace: str, key_id: str, settle_id: str) -> str:
    """The settle mark of one settle (or push) of the key: in the key's slot."""
    return f"{namespace}:lim:{{{key_id}}}:d:{settle_id}"


# Set the call's settle mark (the last key, for ARGV[n] ms); false when it was there: a replay.
_MARK: Final = """
local function first_time(mark, ms)
  return redis.call('SET', mark, '1', 'NX', 'PX', ms) ~= false
end
"""


_BUCKET: Final = """
local now = tonumber(ARGV[4])
local function level(key, cap)
  local v = redis.call('HMGET', key, 'v', 't')
  local val = tonumber(v[1]) or cap
  local t = tonumber(v[2]) or now
  if now > t then val = math.min(cap, val + (now - t) * cap / 60000) end
  return val
end
"""

# ARGV: rid, amount, limit (-1: none), now_ms, deadline_ms, rpm, tpm, tokens, res_ttl_ms,
#       lease (the most to reserve as a lease instead; 0: none), lease id
# -> {-1} counter missing | {2, which(1 rpm, 2 tpm), retry_ms, rpm_level*1000, tpm_level*1000}
#    | {1, settled, reserved} over quota | {0, settled, reserved, rpm_level*1000,
#    tpm_level*1000, amount reserved, 1 when that amount is a lease under the lease id}
# A lease takes at most 1/LEASE_SHARE of the headroom left, and only when that is at least
# two worst cases: near its limit a key is admitted request by request, as without leases.
ADMIT: Final = _BUCKET + """
local s = redis.call('HGET', KEYS[1], 's')
if not s then return {-1} end
local rpm = tonumber(ARGV[6])
local tpm = tonumber(ARGV[7])
local need = math.min(tonumber(ARGV[8]), tpm)
local rv, tv = 0, 0
if rpm > 0 then rv = level(KEYS[4], rpm) end
if tpm > 0 then tv = level(KEYS[5], tpm) end
if rpm > 0 and rv < 1 then
  return {2, 1, math.ceil((1 - rv) * 60000 / rpm), math.floor(rv * 1000), math.floor(tv * 1000)}
end
if tpm > 0 and tv < need then
  return {2, 2, math.ceil((need - tv) * 60000 / tpm), math.floor(rv * 1000), math.floor(tv * 1000)}
end
local r = tonumber(redis.call('HGET', KEYS[1], 'r') or '0')
local amount = '0'
local leased = 0
local limit = tonumber(ARGV[3])
if limit >= 0 and tonumber(s) + r >= limit then return {1, tonumber(s), r} end
amount = ARGV[2]
local id = ARGV[1]
local lease = tonumber(ARGV[10])
if lease > 0 and limit >= 0 then
  lease = math.min(lease, math.floor((limit - tonumber(s) - r) / LEASE_SHARE))
  if lease > 0 and lease >= 2 * tonumber(amount) then
    amount = string.format('%d', lease)
    id = ARGV[11]
    leased = 1
  end
end
r = redis.call('HINCRBY', KEYS[1], 'r', amount)
redis.call('HSET', KEYS[2], 'a:' .. id, amount)
redis.call('ZADD', KEYS[3], ARGV[5], id)
redis.call('PEXPIRE', KEYS[2], ARGV[9])
redis.call('PEXPIRE', KEYS[3], ARGV[9])
if rpm > 0 then
  rv = rv - 1
  redis.call('HSET', KEYS[4], 'v', tostring(rv), 't', ARGV[4])
  redis.call('PEXPIRE', KEYS[4], 120000)
end
if tpm > 0 then
  tv = tv - need
  redis.call('HSET', KEYS[5], 'v', tostring(tv), 't', ARGV[4])
  redis.call('PEXPIRE', KEYS[5], 120000)
end
return {0, tonumber(s), r, math.floor(rv * 1000), math.floor(tv * 1000), tonumber(amount), leased}
""".replace("LEASE_SHARE", str(LEASE_SHARE))

# Take a reservation's amount (a decimal string, as stored) off the counter's `r`.
_RELEASE: Final = """
local function release(counter, amount)
  if amount ~= '0' then redis.call('HINCRBY', counter, 'r', '-' .. amount) end
end
"""

# Take `amount` off a lease and off `r`; the lease is gone once nothing of it is left.
_SHRINK: Final = _RELEASE + """
local function shrink(counter, res, due, id, amount)
  local left = 0
  if amount ~= '0' then left = redis.call('HINCRBY', res, 'a:' .. id, '-' .. amount)
  else left = tonumber(redis.call('HGET', res, 'a:' .. id)) end
  release(counter, amount)
  if left <= 0 then
    redis.call('HDEL', res, 'a:' .. id, 'n:' .. id, 'g:' .. id)
    redis.call('ZREM', due, id)
  end
end
"""

# KEYS: counter, reservations, due, the draw's mark. ARGV: lease id, cost, the request's
# draw, mark ms. -> settled after, or -1 when the counter is missing (the caller rebuilds
# it, retries). A lease the sweeper charged (x:) was charged every draw: only a cost above
# it is added. A replayed settle (its mark is there) changes nothing.
LEASE_SETTLE: Final = _SHRINK + _MARK + """
if redis.call('HEXISTS', KEYS[1], 's') == 0 then return -1 end
if not first_time(KEYS[4], ARGV[4]) then return tonumber(redis.call('HGET', KEYS[1], 's')) end
local id = ARGV[1]
local cost = ARGV[2]
if redis.call('HEXISTS', KEYS[2], 'a:' .. id) == 1 then
  shrink(KEYS[1], KEYS[2], KEYS[3], id, ARGV[3])
elseif redis.call('HEXISTS', KEYS[2], 'x:' .. id) == 1 then
  local rest = tonumber(cost) - tonumber(ARGV[3])
  if rest < 0 then rest = 0 end
  cost = string.format('%d', rest)
end
return redis.call('HINCRBY', KEYS[1], 's', cost)
"""

# KEYS: counter, reservations, due. ARGV: lease id, its unused rest, or "all" for a grant
# whose reply was lost (nothing was drawn from it). -> 1, 0 when not there (swept, or the
# counter lost: then there is no `r` to give it back to) or already returned: a return
# replayed after a timeout must not release twice (g: marks it while the lease lasts).
LEASE_RETURN: Final = _SHRINK + """
if redis.call('HEXISTS', KEYS[1], 's') == 0 then return 0 end
local a = redis.call('HGET', KEYS[2], 'a:' .. ARGV[1])
if not a then return 0 end
if redis.call('HSETNX', KEYS[2], 'g:' .. ARGV[1], 1) == 0 then return 0 end
local rest = ARGV[2]
if rest == 'all' then rest = a end
shrink(KEYS[1], KEYS[2], KEYS[3], ARGV[1], rest)
return 1
"""

# KEYS: counter, reservations, due, tpm bucket, the settle's mark. ARGV: rid, cost, token
# refund, tpm, mark ms. -> settled after, or -1 when the counter is missing (the caller
# rebuilds it, retries). A replayed settle (its mark is there) changes nothing.
SETTLE: Final = _RELEASE + _MARK + """
if redis.call('HEXISTS', KEYS[1], 's') == 0 then return -1 end
if not first_time(KEYS[5], ARGV[5]) then return tonumber(redis.call('HGET', KEYS[1], 's')) end
local rid = ARGV[1]
local cost = ARGV[2]
local a = redis.call('HGET', KEYS[2], 'a:' .. rid)
if a then
  redis.call('HDEL', KEYS[2], 'a:' .. rid, 'n:' .. rid)
  redis.call('ZREM', KEYS[3], rid)
  release(KEYS[1], a)
else
  local x = redis.call('HGET', KEYS[2], 'x:' .. rid)
  if x then
    redis.call('HDEL', KEYS[2], 'x:' .. rid)
    local rest = tonumber(cost) - tonumber(x)
    if rest < 0 then rest = 0 end
    cost = string.format('%d', rest)
  end
end
local refund = tonumber(ARGV[3])
local tpm = tonumber(ARGV[4])
if refund > 0 and tpm > 0 then
  local v = redis.call('HGET', KEYS[4], 'v')
  if v then redis.call('HSET', KEYS[4], 'v', tostring(math.min(tpm, tonumber(v) + refund))) end
end
return redis.call('HINCRBY', KEYS[1], 's', cost)
"""

# KEYS: counter, reservations, due. ARGV: now_ms. -> {swept, settled after}
SWEEP: Final = _RELEASE + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, 1000)
local live = redis.call('HEXISTS', KEYS[1], 's') == 1
local n = 0
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[3], id)
  local a = redis.call('HGET', KEYS[2], 'a:' .. id)
  if a then
    redis.call('HDEL', KEYS[2], 'a:' .. id, 'n:' .. id, 'g:' .. id)
    redis.call('HSET', KEYS[2], 'x:' .. id, a)
    if live then
      release(KEYS[1], a)
      redis.call('HINCRBY', KEYS[1], 's', a)
    end
    n = n + 1
  end
end
local s = redis.call('HGET', KEYS[1], 's')
return {n, tonumber(s or '-1')}
"""

# KEYS: counter, reservations, due[, the push's mark]. ARGV: base, delta, ttl_s (0: keep)[,
# mark ms]. Creates the counter at `base` when it is missing (Redis lost it), then adds
# `delta` (spend counted in-process meanwhile) unless the push's mark is there (a replayed
# push). -> settled after. A new counter has nothing reserved, so reservations that
# outlived the old one go too: their settles and returns would take them off the new `r`
# (their settles now charge in full).
REBUILD: Final = _MARK + """
if redis.call('HSETNX', KEYS[1], 's', ARGV[1]) == 1 then
  redis.call('HSETNX', KEYS[1], 'r', '0')
  redis.call('DEL', KEYS[2], KEYS[3])
  if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
end
if ARGV[2] ~= '0' and (KEYS[4] == nil or first_time(KEYS[4], ARGV[4])) then
  return redis.call('HINCRBY', KEYS[1], 's', ARGV[2])
end
return tonumber(redis.call('HGET', KEYS[1], 's'))
"""
