"""The Lua scripts that make every ownership change and state write one atomic step in Redis.

A session's record is one hash, `rnnserve:s:<session id>`:
    snap      the session's snapshot (snapshot.py's format: model, version, weights sha256, step
              count, states, last output, id, owner identity, creation time; HMAC-signed with the
              snapshot secret when one is set)
    step      the step count the snapshot holds (what a compare-and-set compares)
    identity  the principal that owns the session (checked before a lease is taken)
    owner     the instance id of the process that holds the session
    lease     when that process's hold lapses (ms, Redis server clock: replicas' clocks never meet)
    reply     the reply to the message that made `step` (replies.py; empty when none is kept)
The key expires after the session's idle TTL; every write and renewal pushes the expiry back.
Times come from Redis's own TIME, so a lease means the same on every replica.

A principal's sessions, `rnnserve:p:<principal>`: a sorted set of its session ids, each scored
with when its record expires (pushed back with it), so that `max_sessions_per_principal` holds
over every replica and over the sessions evicted from memory, not only over one process's memory.
Scripts that touch it take it as the key after each record's (KEYS: record, principal, ...).
"""

from __future__ import annotations

import hashlib

KEY_PREFIX = "rnnserve:s:"
PRINCIPAL_PREFIX = "rnnserve:p:"

_NOW = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

# KEYS[1]; ARGV: instance, lease_ms, identity.
# -> {0}: no record for this identity; {2, owner, ms left}: another live owner;
#    {1, step, snap}: the lease is now ours.
CLAIM = (
    _NOW
    + """
local r = redis.call('HMGET', KEYS[1], 'owner', 'lease', 'identity', 'step', 'snap')
if not r[5] or r[3] ~= ARGV[3] then return {0} end
local lease = tonumber(r[2]) or 0
if r[1] and r[1] ~= ARGV[1] and lease > now then return {2, r[1], lease - now} end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease', now + tonumber(ARGV[2]))
return {1, r[4], r[5]}
"""
)

# KEYS: (record, principal) of each session of one group write; ARGV: instance, lease_ms, ttl_ms,
# the per-principal cap (0: none), then for each session five values: expected step ("new": the
# key must not exist), step, snap, identity, reply. One script for the whole group: one command
# to encode, one reply to parse, and the group lands atomically.
# -> per session 1 written, 0 refused (another owner, or newer state: this copy is stale),
#    2 refused (a new session of a principal that holds its cap of sessions).
WRITE = (
    _NOW
    + """
local out = {}
local expiry = now + tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
for i = 1, #KEYS / 2 do
  local key, owned = KEYS[2 * i - 1], KEYS[2 * i]
  local at = 4 + (i - 1) * 5
  local id = string.sub(key, #'"""
    + KEY_PREFIX
    + """' + 1)
  local ok
  out[i] = 0
  if ARGV[at + 1] == 'new' then
    ok = redis.call('EXISTS', key) == 0
    if ok and cap > 0 then
      redis.call('ZREMRANGEBYSCORE', owned, '-inf', now)
      if redis.call('ZCARD', owned) >= cap and not redis.call('ZSCORE', owned, id) then
        ok, out[i] = false, 2
      end
    end
  else
    local r = redis.call('HMGET', key, 'owner', 'step')
    ok = r[1] == ARGV[1] and r[2] == ARGV[at + 1]
  end
  if ok then
    redis.call('HSET', key, 'owner', ARGV[1], 'lease', now + tonumber(ARGV[2]),
      'step', ARGV[at + 2], 'snap', ARGV[at + 3], 'identity', ARGV[at + 4],
      'reply', ARGV[at + 5])
    redis.call('PEXPIRE', key, ARGV[3])
    redis.call('ZADD', owned, expiry, id)
    redis.call('PEXPIRE', owned, ARGV[3])
    out[i] = 1
  end
end
return out
"""
)

# KEYS: (record, principal) of many sessions; ARGV: instance, lease_ms, ttl_ms.
# -> per session 1 renewed, 0 not ours any more.
RENEW = (
    _NOW
    + """
local out = {}
for i = 1, #KEYS / 2 do
  local key, owned = KEYS[2 * i - 1], KEYS[2 * i]
  if redis.call('HGET', key, 'owner') == ARGV[1] then
    redis.call('HSET', key, 'lease', now + tonumber(ARGV[2]))
    redis.call('PEXPIRE', key, ARGV[3])
    redis.call('ZADD', owned, now + tonumber(ARGV[3]), string.sub(key, #'"""
    + KEY_PREFIX
    + """' + 1))
    redis.call('PEXPIRE', owned, ARGV[3])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""
)

# KEYS: record, principal; ARGV: instance. Deletes a closed or expired session's record (and its
# place in its principal's count) if this process owns it.
DELETE = (
    """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('ZREM', KEYS[2], string.sub(KEYS[1], #'"""
    + KEY_PREFIX
    + """' + 1))
return redis.call('DEL', KEYS[1])
"""
)

# KEYS: many; ARGV: instance. Lets the lease lapse now (graceful stop): a survivor need not wait.
RELEASE = """
for _, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'owner') == ARGV[1] then redis.call('HSET', key, 'lease', 0) end
end
return #KEYS
"""


def sha1(script: str) -> str:
    """The script's id in Redis's script cache (EVALSHA)."""
    return hashlib.sha1(script.encode()).hexdigest()  # Redis's own choice of hash


def record_key(session_id: str) -> str:
    """The Redis key of a session's record."""
    return KEY_PREFIX + session_id


def principal_key(principal: str) -> str:
    """The Redis key of a principal's sessions (see above)."""
    return PRINCIPAL_PREFIX + principal


def keys_of(session_id: str, principal: str) -> tuple[str, str]:
    """The (record, principal) keys a WRITE, RENEW or DELETE takes for one session."""
    return record_key(session_id), principal_key(principal)
