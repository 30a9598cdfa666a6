//! The Lua scripts that make each channel operation one atomic step in Redis.

/// Drop history entries older than a cutoff (entries are `OFFSET:TIME:BODY`, oldest first).
const TRIM: &str = r#"
local function trim(key, cutoff)
  for _ = 1, 1000 do
    local first = redis.call('ZRANGE', key, 0, 0)
    if #first == 0 then return end
    local ts = string.match(first[1], '^%d+:(%d+):')
    if ts and tonumber(ts) < cutoff then
      redis.call('ZREMRANGEBYRANK', key, 0, 0)
    else
      return
    end
  end
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function meta(key, candidate, keep)
  local epoch = redis.call('HGET', key, 'epoch')
  if not epoch then
    epoch = candidate
    redis.call('HSET', key, 'epoch', epoch, 'top', 0)
    redis.call('PEXPIRE', key, keep)
  end
  return epoch
end
"#;

/// Publish: assign the next offset, append to history, trim by size and age, remember the
/// idempotency key, and PUBLISH to the channel's topic, all in one step.
///
/// KEYS: meta, history, idempotency key (`""` = none).
/// ARGV: body, history_size, history_ttl_ms, idempotency_ttl_ms, topic, epoch candidate,
/// meta_keep_ms. Returns `{offset, epoch, duplicate (0/1)}`.
pub fn publish() -> redis::Script {
    redis::Script::new(&format!(
        "{TRIM}{}",
        r#"
local epoch = meta(KEYS[1], ARGV[6], ARGV[7])
if KEYS[3] ~= '' then
  local seen = redis.call('GET', KEYS[3])
  if seen then return {tonumber(seen), epoch, 1} end
end
local top = redis.call('HINCRBY', KEYS[1], 'top', 1)
local now = now_ms()
local entry = string.format('%.0f:%.0f:', top, now) .. ARGV[1]
local size = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
if size > 0 and ttl > 0 then
  redis.call('ZADD', KEYS[2], top, entry)
  local n = redis.call('ZCARD', KEYS[2])
  if n > size then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - size - 1) end
  redis.call('HSET', KEYS[1], 'ttl', ttl)
  trim(KEYS[2], now - ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
redis.call('PEXPIRE', KEYS[1], math.max(ttl, tonumber(ARGV[7])))
if KEYS[3] ~= '' then redis.call('SET', KEYS[3], top, 'PX', ARGV[4]) end
redis.call('PUBLISH', ARGV[5], 'p' .. epoch .. ':' .. entry)
return {top, epoch, 0}
"#
    ))
}

/// Read history (creating the stream's epoch when it has none yet, so a subscriber's position
/// stays valid for the first publish).
///
/// KEYS: meta, history. ARGV: epoch candidate, since offset (`""` = none), since epoch, limit,
/// reverse (`1`/`0`), meta_keep_ms. Returns `{epoch, top, first_kept, entries, mismatch (0/1)}`.
pub fn history() -> redis::Script {
    redis::Script::new(&format!(
        "{TRIM}{}",
        r#"
local epoch = meta(KEYS[1], ARGV[1], ARGV[6])
if ARGV[2] ~= '' and ARGV[3] ~= epoch then return {epoch, 0, 0, {}, 1} end
local top = tonumber(redis.call('HGET', KEYS[1], 'top') or '0')
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl') or '0')
if ttl > 0 then trim(KEYS[2], now_ms() - ttl) end
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local first_kept = top + 1
if #first > 0 then first_kept = tonumber(first[2]) end
local limit = tonumber(ARGV[4])
local entries = {}
if limit > 0 then
  if ARGV[5] == '1' then
    local before = '+inf'
    if ARGV[2] ~= '' then before = '(' .. ARGV[2] end
    entries = redis.call('ZREVRANGEBYSCORE', KEYS[2], before, '-inf', 'LIMIT', 0, limit)
  else
    local after = '-inf'
    if ARGV[2] ~= '' then after = '(' .. ARGV[2] end
    entries = redis.call('ZRANGEBYSCORE', KEYS[2], after, '+inf', 'LIMIT', 0, limit)
  end
end
return {epoch, top, first_kept, entries, 0}
"#
    ))
}

const PRESENCE_COMMON: &str = r#"
local function drop(pres, info, users, counts, client)
  if redis.call('ZREM', pres, client) == 1 then
    local user = redis.call('HGET', users, client) or ''
    redis.call('HDEL', users, client)
    redis.call('HDEL', info, client)
    if redis.call('HINCRBY', counts, user, -1) <= 0 then redis.call('HDEL', counts, user) end
  end
end
local function expire_old(pres, info, users, counts)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local old = redis.call('ZRANGEBYSCORE', pres, '-inf', now, 'LIMIT', 0, 1000)
  for _, client in ipairs(old) do drop(pres, info, users, counts, client) end
  return now
end
"#;

/// Presence add (or lease refresh). KEYS: members (zset client → lease end), info (hash),
/// users (hash client → user), counts (hash user → clients). ARGV: client, user, info JSON,
/// lease_ms.
pub fn presence_add() -> redis::Script {
    redis::Script::new(&format!(
        "{PRESENCE_COMMON}{}",
        r#"
local now = expire_old(KEYS[1], KEYS[2], KEYS[3], KEYS[4])
local lease = tonumber(ARGV[4])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
  redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], lease * 2) end
return 1
"#
    ))
}

/// Presence remove. KEYS as for add; ARGV: client.
pub fn presence_remove() -> redis::Script {
    redis::Script::new(&format!(
        "{PRESENCE_COMMON}{}",
        r#"
drop(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1])
return 1
"#
    ))
}

/// Presence read: expire old leases, then `{clients, users, [info...]}` (info only when ARGV[1]
/// is `1`; the counts never scan the member list).
pub fn presence_read() -> redis::Script {
    redis::Script::new(&format!(
        "{PRESENCE_COMMON}{}",
        r#"
expire_old(KEYS[1], KEYS[2], KEYS[3], KEYS[4])
local list = {}
if ARGV[1] == '1' then list = redis.call('HVALS', KEYS[2]) end
return {redis.call('ZCARD', KEYS[1]), redis.call('HLEN', KEYS[4]), list}
"#
    ))
}

/// Count a user's connection against a cluster-wide limit. KEYS: the user's connection set
/// (member → lease end). ARGV: connection id, max, lease_ms. Returns 1 (counted) or 0 (at the
/// limit). Expired leases (connections of dead nodes) are dropped first; a known connection just
/// gets its lease renewed.
pub fn acquire_connection() -> redis::Script {
    redis::Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease * 2)
return 1
"#,
    )
}
