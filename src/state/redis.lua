-- riskgate's state in Redis: one request's observation in, its readout out, in one call.
-- The logic mirrors src/state/memory.rs and src/state/window.rs step for step, so that
-- both backends give the same readout for the same events (see src/state/redis.rs for
-- the KEYS/ARGV layout and the few documented differences). Every key written gets its
-- TTL in the same call (SET PX, or PEXPIRE after SETRANGE/APPEND), so none can outlive it.
--
-- KEYS: the keys of the slots the mask marks, in slot order, then the seed key.
-- ARGV: 1 now_ms, 2 ttl_ms, 3 new_account_ms, 4 browse (0/1), 5 slot mask ('1' = the
-- slot has the next KEYS entry), 6-13 member fingerprint per distinct relation ('' =
-- none), 14 inviter fingerprint, 15 user fingerprint, 16 subnet fingerprint,
-- 17 number of limits, then per limit its emission interval and burst tolerance in us,
-- and last the key seed.

local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local new_account_ms = tonumber(ARGV[3])
local browsing = ARGV[4] == '1'
local mask = ARGV[5]
local fps = {}
for r = 1, 8 do
  fps[r] = ARGV[5 + r]
end
local inviter_fp, user_fp, subnet_fp = ARGV[14], ARGV[15], ARGV[16]
local nlimits = tonumber(ARGV[17])

-- The last key is the deployment's key seed (the last ARGV its value): every request
-- keeps it alive as long as the state it keys, so once it has expired so has
-- everything else, and puts it back after Redis lost it (a restart without persistence).
redis.call('SET', KEYS[#KEYS], ARGV[#ARGV], 'NX', 'PX', ttl)
redis.call('PEXPIRE', KEYS[#KEYS], ttl)

local slot = {}
local slot_keys = {}
local k = 0
for s = 1, #mask do
  if string.byte(mask, s) == 49 then
    k = k + 1
    slot[s] = KEYS[k]
    slot_keys[k] = KEYS[k]
  end
end

local now_s = math.floor(now / 1000)
local CAP = 32

-- Every value is a small packed string, read at once with one MGET and written with
-- SET PX: a few commands per key instead of one per field. `cache` keeps what this
-- call wrote, so a key in two slots reads its own write.
local cache = {}
if #slot_keys > 0 then
  local values = redis.call('MGET', unpack(slot_keys))
  for i, key in ipairs(slot_keys) do
    cache[key] = values[i]
  end
end
local function store(key, value)
  cache[key] = value
  redis.call('SET', key, value, 'PX', ttl)
end

-- Two-bucket sliding windows (window.rs `Windows::bump` / `read`):
-- last ms (double), then current and previous count per window.
local WFMT = '<dI4I4I4I4I4I4I4I4'

-- One window of `len` ms at time `t` (last update at `last`): the rolled buckets and
-- the estimated count.
local function roll(len, t, last, cur, prev, bump)
  local b, lb = math.floor(t / len), math.floor(last / len)
  if b == lb + 1 then
    prev, cur = cur, 0
  elseif b > lb + 1 then
    prev, cur = 0, 0
  end
  if bump then
    cur = cur + 1
  end
  return cur, prev, cur + math.floor(prev * (len - t % len) / len)
end

local function windows(key, bump)
  local v = cache[key]
  local last, c1, c2, c3, c4, p1, p2, p3, p4 = 0, 0, 0, 0, 0, 0, 0, 0, 0
  if v then
    last, c1, c2, c3, c4, p1, p2, p3, p4 = struct.unpack(WFMT, v)
  end
  local t = now
  if t < last then
    t = last
  end
  local o1, o2, o3, o4
  c1, p1, o1 = roll(1000, t, last, c1, p1, bump)
  c2, p2, o2 = roll(60000, t, last, c2, p2, bump)
  c3, p3, o3 = roll(3600000, t, last, c3, p3, bump)
  c4, p4, o4 = roll(86400000, t, last, c4, p4, bump)
  if bump then
    store(key, struct.pack(WFMT, t, c1, c2, c3, c4, p1, p2, p3, p4))
  end
  return {o1, o2, o3, o4}
end

-- An identity's first-seen time and request timing (memory.rs `IdentityEntry::time`):
-- first ms, last ms (doubles), last gap ms, regular gaps in a row.
local EFMT = '<ddI4I4'
local function entry(key)
  local v = cache[key]
  local new = not v
  local first, last, last_gap, regular = now, 0, 0, 0
  if v then
    first, last, last_gap, regular = struct.unpack(EFMT, v)
  end
  if last > 0 and now > last then
    local gap = math.min(now - last, 4294967295)
    local tolerance = math.max(math.floor(gap / 20), 25)
    if last_gap > 0 and math.abs(gap - last_gap) <= tolerance then
      regular = regular + 1
    else
      regular = math.floor(regular / 2)
    end
    last_gap = gap
  end
  if now > last then
    last = now
  end
  store(key, struct.pack(EFMT, first, last, last_gap, regular))
  local age = now - first
  if age < 0 then
    age = 0
  end
  return age, new, regular
end

-- Distinct sets (window.rs `DistinctSet`): up to CAP (fingerprint, second last seen)
-- pairs of 8 bytes in insertion order; when full, the first of the members seen
-- longest ago makes room. Unpacked flat in one call; a change rewrites only its own
-- 8 bytes (SETRANGE) or appends them (APPEND).
local SET_FMT = {}

local function members(key)
  local v = cache[key]
  if not v or #v < 8 then
    return {}, 0
  end
  local n = math.floor(#v / 8)
  local fmt = SET_FMT[n]
  if not fmt then
    fmt = '<' .. string.rep('I4', 2 * n)
    SET_FMT[n] = fmt
  end
  return {struct.unpack(fmt, v)}, n
end

local function count_of(m, n)
  local hour, day = 0, 0
  for i = 1, n do
    local age = now_s - m[2 * i]
    if age < 3600 then
      hour = hour + 1
    end
    if age < 86400 then
      day = day + 1
    end
  end
  return {hour, day}
end

local function add(key, member)
  local m, n = members(key)
  local fp = tonumber(member)
  local at = nil
  for i = 1, n do
    if m[2 * i - 1] == fp then
      at = i
      break
    end
  end
  local record = struct.pack('<I4I4', fp, now_s)
  local v = cache[key] or ''
  if at then
    if now_s > m[2 * at] then
      m[2 * at] = now_s
      redis.call('SETRANGE', key, (at - 1) * 8, record)
      cache[key] = string.sub(v, 1, (at - 1) * 8) .. record .. string.sub(v, at * 8 + 1)
    end
  elseif n < CAP then
    n = n + 1
    m[2 * n - 1], m[2 * n] = fp, now_s
    redis.call('APPEND', key, record)
    cache[key] = v .. record
  else
    local oldest = 1
    for i = 2, n do
      if m[2 * i] < m[2 * oldest] then
        oldest = i
      end
    end
    m[2 * oldest - 1], m[2 * oldest] = fp, now_s
    redis.call('SETRANGE', key, (oldest - 1) * 8, record)
    cache[key] = string.sub(v, 1, (oldest - 1) * 8) .. record .. string.sub(v, oldest * 8 + 1)
  end
  redis.call('PEXPIRE', key, ttl)
  return count_of(m, n)
end

local function count(key)
  return count_of(members(key))
end

local function touch(key)
  if cache[key] then
    redis.call('PEXPIRE', key, ttl)
  end
end

local function contains(key, member, window)
  local fp = tonumber(member)
  local m, n = members(key)
  for i = 1, n do
    if m[2 * i - 1] == fp and now_s - m[2 * i] < window then
      return true
    end
  end
  return false
end

local out = {}
local function push(values)
  for _, v in ipairs(values) do
    out[#out + 1] = v
  end
end

-- Slots 1-8: per-route counters of the counted key kinds.
for i = 1, 8 do
  if slot[i] then
    push(windows(slot[i], true))
  else
    push({0, 0, 0, 0})
  end
end

-- Slots 9-10: the device's and the account's entries; 11-18: each distinct relation's
-- member set (device, user, ip, subnet, phone, inviter, pay account, address).
local user_age, device_age, user_regular, device_regular = -1, -1, 0, 0
local user_new, device_new = false, false
for r = 1, 8 do
  local m = slot[10 + r]
  if m then
    if r == 1 then
      device_age, device_new, device_regular = entry(slot[9])
    elseif r == 2 then
      user_age, user_new, user_regular = entry(slot[10])
    end
    if fps[r] ~= '' then
      push(add(m, fps[r]))
    else
      touch(m)
      push(count(m))
    end
  else
    push({0, 0})
  end
end
push({user_age, device_age, user_regular, device_regular})

-- Derived counters (1 h and 24 h): bumped when this request is their event, read otherwise.
local function derived(s, bump)
  if not slot[s] then
    return {0, 0}
  end
  local w = windows(slot[s], bump)
  return {w[3], w[4]}
end
push(derived(19, browsing))
push(derived(20, user_new))
push(derived(21, user_new))
push(derived(22, user_new))
if slot[23] then
  push(add(slot[23], subnet_fp))
else
  push({0, 0})
end
push(derived(24, device_new))

-- The referral graph: slot 25 the inviter's brand-new invitees, 26 whom the inviter
-- assisted, 27 whom this account assisted.
if slot[25] then
  local age = user_age
  if age < 0 then
    age = 0
  end
  push(derived(25, age < new_account_ms))
  local on_device = slot[11] and contains(slot[11], inviter_fp, 86400)
  local on_subnet = slot[14] and contains(slot[14], inviter_fp, 86400)
  local ring = contains(slot[26], user_fp, 86400)
  local chain = count(slot[26])[2] > 0
  push({on_device and 1 or 0, on_subnet and 1 or 0, ring and 1 or 0, chain and 1 or 0})
  add(slot[27], inviter_fp)
else
  push({0, 0, 0, 0, 0, 0})
end

-- Slots 28-: GCRA cells (governor's algorithm) in microseconds of event time:
-- 0 = allowed, otherwise the wait in ms.
local now_us = now * 1000
for i = 1, nlimits do
  local key = slot[27 + i]
  local t = tonumber(ARGV[16 + 2 * i])
  local tau = tonumber(ARGV[17 + 2 * i])
  local tat = tonumber(cache[key]) or now_us
  local earliest = tat - tau
  if now_us < earliest then
    out[#out + 1] = math.max(math.floor((earliest - now_us) / 1000), 1)
  else
    local next_tat = math.max(tat, now_us) + t
    local value = string.format('%.0f', next_tat)
    cache[key] = value
    redis.call('SET', key, value, 'PX', math.floor((next_tat - now_us) / 1000) + 1000)
    out[#out + 1] = 0
  end
end

return out
