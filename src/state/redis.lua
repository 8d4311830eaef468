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
-- then the id a new cluster gets (16 hex digits), the campaign x route fingerprint ('' =
-- none), the user agent's fingerprint, the key prefix, the client IP's fingerprint,
-- whether the request came over Wi-Fi (0/1), and last the key seed.

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
local after_limits = 17 + 2 * nlimits
local new_cluster_id = ARGV[after_limits + 1]
local claim_fp = ARGV[after_limits + 2]
local ua_fp = ARGV[after_limits + 3]
local prefix = ARGV[after_limits + 4]
local ip_fp = ARGV[after_limits + 5]
local wifi = ARGV[after_limits + 6] == '1'

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
local user_day, device_day = 0, 0
for i = 1, 8 do
  if slot[i] then
    local w = windows(slot[i], true)
    if i == 1 then
      user_day = w[4]
    elseif i == 2 then
      device_day = w[4]
    end
    push(w)
  else
    push({0, 0, 0, 0})
  end
end

-- Slots 9-10: the device's and the account's entries; 11-18: each distinct relation's
-- member set (device, user, ip, subnet, phone, inviter, pay account, address).
local user_age, device_age, user_regular, device_regular = -1, -1, 0, 0
local user_new, device_new = false, false
local day_members = {}
for r = 1, 8 do
  local m = slot[10 + r]
  day_members[r] = 0
  if m then
    if r == 1 then
      device_age, device_new, device_regular = entry(slot[9])
    elseif r == 2 then
      user_age, user_new, user_regular = entry(slot[10])
    end
    local c
    if fps[r] ~= '' then
      c = add(m, fps[r])
    else
      touch(m)
      c = count(m)
    end
    day_members[r] = c[2]
    push(c)
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
local browse = derived(19, browsing)
push(browse)
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

-- Slot 28: the device's user agents.
if slot[28] then
  push(add(slot[28], ua_fp))
else
  push({0, 0})
end

-- Slots 29-32: cluster pointers of the account, device, phone and payment account;
-- the clusters themselves live under `prefix .. 'c:' .. id` (cluster.rs: a
-- union-find whose clusters decay a day after they formed).
local CLUSTER_LIFE_MS = 86400000
local HOUR_MS = 3600000
local CFMT = '<c16dI4I4I4I4I4I4I4I4I4I4I4I4'
local ROOT = '0000000000000000'
local function cluster_get(id)
  local v = redis.call('GET', prefix .. 'c:' .. id)
  if not v then
    return nil
  end
  local c = {}
  local claims = {}
  local f = {struct.unpack(CFMT, v)}
  c.parent, c.born, c.accounts, c.hour, c.cur, c.prev = f[1], f[2], f[3], f[4], f[5], f[6]
  for j = 1, 4 do
    claims[j] = {f[5 + 2 * j], f[6 + 2 * j]}
  end
  c.claims = claims
  return c
end
local function cluster_put(id, c)
  local cl = c.claims
  redis.call('SET', prefix .. 'c:' .. id, struct.pack(CFMT, c.parent, c.born, c.accounts, c.hour, c.cur, c.prev,
    cl[1][1], cl[1][2], cl[2][1], cl[2][2], cl[3][1], cl[3][2], cl[4][1], cl[4][2]), 'PX', ttl)
end
local function cluster_roll(c)
  local hour = math.floor(now / HOUR_MS)
  if hour == c.hour + 1 then
    c.prev, c.cur = c.cur, 0
  elseif hour > c.hour then
    c.prev, c.cur = 0, 0
  end
  if hour > c.hour then
    c.hour = hour
  end
end
local function cluster_claim(c, fp, n)
  local at = nil
  for j = 1, 4 do
    if c.claims[j][1] == fp and c.claims[j][2] > 0 then
      at = j
      break
    end
  end
  if not at then
    at = 1
    for j = 2, 4 do
      if c.claims[j][2] < c.claims[at][2] then
        at = j
      end
    end
    c.claims[at] = {fp, 0}
  end
  c.claims[at][2] = c.claims[at][2] + n
end
local function cluster_find(id)
  for _ = 1, 8 do
    if not id or id == ROOT then
      return nil
    end
    local c = cluster_get(id)
    if not c or now - c.born > CLUSTER_LIFE_MS then
      return nil
    end
    if c.parent == ROOT then
      return id, c
    end
    id = c.parent
  end
  return nil
end
-- The graph nodes: (pointer slot, readout relation whose day count caps it).
local nodes = {}
if slot[29] then
  nodes[#nodes + 1] = {slot[29], nil}
end
for j, r in ipairs({1, 5, 7}) do
  local s = slot[29 + j]
  if s and day_members[r] < CAP then
    nodes[#nodes + 1] = {s, r}
  end
end
if #nodes == 0 then
  push({0, 0, 0})
else
  local roots = {}
  local account_joins = slot[29] ~= nil
  for i, node in ipairs(nodes) do
    node[3] = cache[node[1]] or ROOT
    local id, c = cluster_find(node[3])
    if i == 1 and slot[29] and id then
      account_joins = false
    end
    if id then
      local seen = false
      for _, r in ipairs(roots) do
        if r[1] == id then
          seen = true
        end
      end
      if not seen then
        roots[#roots + 1] = {id, c}
      end
    end
  end
  local win = nil
  for i, r in ipairs(roots) do
    if not win or r[2].accounts > roots[win][2].accounts
      or (r[2].accounts == roots[win][2].accounts and r[1] < roots[win][1]) then
      win = i
    end
  end
  local win_id, w
  if win then
    win_id, w = roots[win][1], roots[win][2]
  else
    win_id = new_cluster_id
    w = {parent = ROOT, born = now, accounts = 0, hour = math.floor(now / HOUR_MS), cur = 0, prev = 0,
      claims = {{0, 0}, {0, 0}, {0, 0}, {0, 0}}}
  end
  for i, r in ipairs(roots) do
    if i ~= win then
      local l = r[2]
      cluster_roll(l)
      cluster_roll(w)
      w.accounts = w.accounts + l.accounts
      w.cur = w.cur + l.cur
      w.prev = w.prev + l.prev
      for j = 1, 4 do
        if l.claims[j][2] > 0 then
          cluster_claim(w, l.claims[j][1], l.claims[j][2])
        end
      end
      l.parent = win_id
      cluster_put(r[1], l)
    end
  end
  cluster_roll(w)
  if account_joins then
    w.accounts = w.accounts + 1
    local age = user_age
    if age < 0 then
      age = 0
    end
    if age < HOUR_MS then
      w.cur = w.cur + 1
    end
  end
  local claim = tonumber(claim_fp)
  if claim and slot[29] and user_day == 1 and not browsing then
    cluster_claim(w, claim, 1)
  end
  local claimed = 0
  if claim then
    for j = 1, 4 do
      if w.claims[j][1] == claim and w.claims[j][2] > 0 then
        claimed = w.claims[j][2]
        break
      end
    end
  end
  local joins = w.cur + math.floor(w.prev * (HOUR_MS - now % HOUR_MS) / HOUR_MS)
  cluster_put(win_id, w)
  for _, node in ipairs(nodes) do
    if node[3] ~= win_id then
      store(node[1], win_id)
    else
      redis.call('PEXPIRE', node[1], ttl)
    end
  end
  push({w.accounts, joins, claimed})
end

-- Slot 33: the subnets the inviter's invitees assisted from.
if slot[33] then
  push(add(slot[33], subnet_fp))
else
  push({0, 0})
end

-- Slot 34: new devices per device-id prefix.
push(derived(34, device_new))

-- Slots 35-38: a new device's first request on this route, hasty when its account
-- browsed at most once: per user agent (hasty, all) and route-wide (hasty, all), 1 h.
if slot[35] and not browsing and device_day == 1 and device_age >= 0 and device_age < new_account_ms then
  local hasty = browse[1] <= 1
  push({derived(35, hasty)[1], derived(36, true)[1], derived(37, hasty)[1], derived(38, true)[1]})
else
  push({0, 0, 0, 0})
end

-- Slot 39: assists for the inviter by accounts that browsed nothing in the last hour.
push(derived(39, browse[1] == 0))

-- Slot 40: the inviter's account entry, read only: how long ago it was first seen
-- (-1: never seen).
local inviter_age = -1
if slot[40] and cache[slot[40]] then
  local first = struct.unpack(EFMT, cache[slot[40]])
  inviter_age = math.max(now - first, 0)
end
push({inviter_age})

-- Slot 41: devices first seen from this client IP, over 1 min.
if slot[41] then
  push({windows(slot[41], device_new)[2]})
else
  push({0})
end

-- Slot 42 (a Wi-Fi request with an account): the device's Wi-Fi lines (memory.rs
-- `LineHandoff`): the last account, its IP and second, whether another account came
-- before it, and that one's IP and second.
local HFMT = '<I4I4I4I4I4I4'
local handoff = 0
if slot[42] then
  local u, ip = tonumber(user_fp), tonumber(ip_fp)
  local last_u, last_ip, last_s, has_other, other_ip, other_s = 0, 0, 0, 0, 0, 0
  local v = cache[slot[42]]
  if v then
    last_u, last_ip, last_s, has_other, other_ip, other_s = struct.unpack(HFMT, v)
    if last_u ~= u then
      has_other, other_ip, other_s = 1, last_ip, last_s
    end
  end
  if has_other == 1 and now_s - other_s < 86400 and other_ip ~= ip then
    handoff = 1
  end
  store(slot[42], struct.pack(HFMT, u, ip, math.max(now_s, last_s), has_other, other_ip, other_s))
end
push({handoff})

-- Slots 43-45 (a request with a subnet): devices first seen on Wi-Fi in the last
-- minute from this subnet, from anywhere, and the networks they came from (a network
-- counts again once it has had none for a minute).
if slot[43] then
  local bump = wifi and device_new
  local here = windows(slot[43], bump)[2]
  local all = windows(slot[44], bump)[2]
  local networks = windows(slot[45], bump and here == 1)[2]
  push({here, all, networks})
else
  push({0, 0, 0})
end

-- Slots 46-: GCRA cells (governor's algorithm) in microseconds of event time:
-- 0 = allowed, otherwise the wait in ms.
local now_us = now * 1000
for i = 1, nlimits do
  local key = slot[45 + i]
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
