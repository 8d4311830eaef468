-- riskgate's state in Redis: one request's observation in, its readout out, in one call.
-- The logic mirrors src/state/memory.rs and src/state/window.rs step for step, so that
-- both backends give the same readout for the same events (see src/state/redis.rs for
-- the KEYS/ARGV layout and the few documented differences). Every key written gets a
-- PEXPIRE in the same call, so none can outlive its TTL.
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
local k = 0
for s = 1, #mask do
  if string.byte(mask, s) == 49 then
    k = k + 1
    slot[s] = KEYS[k]
  end
end

local now_s = math.floor(now / 1000)
local WIN = {1000, 60000, 3600000, 86400000}
local CAP = 32

-- Two-bucket sliding windows (window.rs `Windows::bump` / `read`).
local function windows(key, bump)
  local h = redis.call('HMGET', key, 'l', 'c1', 'c2', 'c3', 'c4', 'p1', 'p2', 'p3', 'p4')
  local last = tonumber(h[1]) or 0
  local t = now
  if t < last then
    t = last
  end
  local out, set = {}, {'l', t}
  for w = 1, 4 do
    local len = WIN[w]
    local cur, prev = tonumber(h[1 + w]) or 0, tonumber(h[5 + w]) or 0
    local b, lb = math.floor(t / len), math.floor(last / len)
    if b == lb + 1 then
      prev, cur = cur, 0
    elseif b > lb + 1 then
      prev, cur = 0, 0
    end
    if bump then
      cur = cur + 1
    end
    out[w] = cur + math.floor(prev * (len - t % len) / len)
    set[#set + 1] = 'c' .. w
    set[#set + 1] = cur
    set[#set + 1] = 'p' .. w
    set[#set + 1] = prev
  end
  if bump then
    redis.call('HSET', key, unpack(set))
    redis.call('PEXPIRE', key, ttl)
  end
  return out
end

-- An identity's first-seen time and request timing (memory.rs `IdentityEntry::time`).
local function entry(key)
  local h = redis.call('HMGET', key, 'f', 'l', 'g', 'r')
  local new = not h[1]
  local first = tonumber(h[1]) or now
  local last = tonumber(h[2]) or 0
  local last_gap = tonumber(h[3]) or 0
  local regular = tonumber(h[4]) or 0
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
  redis.call('HSET', key, 'f', first, 'l', last, 'g', last_gap, 'r', regular)
  redis.call('PEXPIRE', key, ttl)
  local age = now - first
  if age < 0 then
    age = 0
  end
  return age, new, regular
end

-- Distinct sets: member -> second last seen, at most CAP members (window.rs `DistinctSet`).
local function add(key, member)
  if redis.call('ZSCORE', key, member) then
    redis.call('ZADD', key, 'GT', now_s, member)
  else
    if redis.call('ZCARD', key) >= CAP then
      redis.call('ZPOPMIN', key)
    end
    redis.call('ZADD', key, now_s, member)
  end
  redis.call('PEXPIRE', key, ttl)
end

local function count(key)
  return {
    redis.call('ZCOUNT', key, '(' .. (now_s - 3600), '+inf'),
    redis.call('ZCOUNT', key, '(' .. (now_s - 86400), '+inf'),
  }
end

local function contains(key, member, window)
  local seen = redis.call('ZSCORE', key, member)
  return seen and (now_s - tonumber(seen) < window)
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
      add(m, fps[r])
    else
      redis.call('PEXPIRE', m, ttl)
    end
    push(count(m))
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
  add(slot[23], subnet_fp)
  push(count(slot[23]))
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
  local tat = tonumber(redis.call('GET', key)) or now_us
  local earliest = tat - tau
  if now_us < earliest then
    out[#out + 1] = math.max(math.floor((earliest - now_us) / 1000), 1)
  else
    local next_tat = math.max(tat, now_us) + t
    redis.call('SET', key, string.format('%.0f', next_tat), 'PX', math.floor((next_tat - now_us) / 1000) + 1000)
    out[#out + 1] = 0
  end
end

return out
