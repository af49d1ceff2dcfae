-- One request's decision: every bucket and every pool, all or nothing.
--
-- The formulas are those of tollhouse/limits/maths.py (fixed window and GCRA) and of
-- the memory store's pools; a property test replays the same calls through both.
-- Numbers are Lua doubles: integers up to 2^53 are exact, so GCRA works in integer
-- microseconds. Floats cross the wire as '%.17g' strings (exact round trip): numbers
-- handed to redis.call or returned as replies would be cut to 14 digits or to integers.
--
-- KEYS   bucket counter keys (nb of them), then per pool: its slot set and its hold key
--        (the average seconds a slot is held, kept by release.lua).
-- ARGV   [1] now: '' = the server's TIME (production: one clock for every instance);
--            epoch seconds = the caller's clock (tests replaying a sequence)
--        [2] nb  [3] np  [4] slack: ms a key outlives its state  [5] default hold (s)
--        per bucket: limit, window (s), algorithm ('f' fixed window | 'g' GCRA), cost
--        per pool: limit, lease (s)
--        per pool: a token unique to this request (names the slot if it is taken)
--        last: shares, '' (nearly always) or per bucket "want back" (space-separated):
--            back: units of a share this instance holds and gives back before deciding;
--            want: units to set aside as this instance's share if the request is admitted
--            (counted as used now; spent by the instance while Redis cannot be asked)
-- Reply  one string of space-separated fields (cheaper for Redis to send than a table):
--        allowed, denied (1-based bucket or pool index, 0), pool_denied, retry, now,
--        per bucket: allowed, remaining, reset_at, retry_after; per pool taken: its slot;
--        with shares asked and the request admitted: per bucket, the units set aside.
--        Floats are '%.17g'; `now` is empty when no pool is asked for.

local MICROS = 1000000
local tonumber, fmod, floor, fmt, find, sub = tonumber, math.fmod, math.floor, string.format,
  string.find, string.sub
local nb = tonumber(ARGV[2])
local np = tonumber(ARGV[3])
local slack = tonumber(ARGV[4])

local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / MICROS
else
  now = tonumber(ARGV[1])
end

local pa = 5 + nb * 4
local pt = pa + np * 2
local wants, backs
local spec = ARGV[pt + np + 1]
if spec and spec ~= '' then
  wants, backs = {}, {}
  local k = 0
  for n in string.gmatch(spec, '%S+') do
    k = k + 1
    if k % 2 == 1 then
      wants[(k + 1) / 2] = tonumber(n)
    else
      backs[k / 2] = tonumber(n)
    end
  end
end

local allowed = true
local denied = 0
local retry = 0
-- Per admitted bucket, for the shares set aside once the whole request is admitted:
-- its index in `writes`, and its count (fixed window: used; GCRA: the new tat).
local at, counts, intervals = {}, {}, {}
-- `now` is only needed in the reply to name the time a slot was taken.
local reply = {0, 0, 0, '0', np > 0 and fmt('%.17g', now) or ''}
-- Writes wait until every bucket and pool has admitted: key, value, ttl (ms; -1: keep
-- the key's TTL) in a row.
local writes = {}

for i = 1, nb do
  local key = KEYS[i]
  local a = 5 + (i - 1) * 4
  local limit = tonumber(ARGV[a + 1])
  local window = tonumber(ARGV[a + 2])
  local algorithm = ARGV[a + 3]
  local cost = tonumber(ARGV[a + 4])
  local raw = redis.call('GET', key)
  local ok, remaining, reset_at, retry_after
  if algorithm == 'f' then
    -- maths.fixed_window; state "window_end:used". fmod, not %: Lua's % is
    -- a - floor(a/b)*b, which rounds where Python's float % is exact.
    reset_at = now - fmod(now, window) + window
    local used = 0
    if raw then
      local sep = find(raw, ':', 1, true)
      if sep and tonumber(sub(raw, 1, sep - 1)) == reset_at then
        used = tonumber(sub(raw, sep + 1))
      end
    end
    local back = backs and backs[i] or 0
    if back > 0 and used > 0 then
      -- A share given back: its units are free again (written whatever the decision).
      used = math.max(0, used - back)
      redis.call('SET', key, fmt('%.17g', reset_at) .. ':' .. used, 'KEEPTTL')
    end
    if used + cost <= limit then
      used = used + cost
      ok, remaining, retry_after = true, limit - used, 0
      local w = #writes
      at[i], counts[i] = w + 1, used
      writes[w + 1] = key
      writes[w + 2] = fmt('%.17g', reset_at) .. ':' .. used
      -- A window's first write sets the key's life; later ones keep it (cheaper).
      writes[w + 3] = used > cost and -1 or math.ceil((reset_at - now) * 1000) + slack
    else
      ok, remaining, retry_after = false, math.max(0, limit - used), reset_at - now
    end
  else
    -- maths.gcra; state: tat in integer microseconds. Inline, not in helper functions
    -- (closures are made anew on every call): Python's round() (half to even) and its
    -- `//` on non-negative integers, where fmod is exact and a / b may round up.
    local x = window * MICROS
    local rounded = floor(x)
    local half = x - rounded
    if half > 0.5 or (half == 0.5 and fmod(rounded, 2) ~= 0) then
      rounded = rounded + 1
    end
    local interval = math.max(1, (rounded - fmod(rounded, limit)) / limit)
    local window_us = interval * limit
    local now_us = floor(now * MICROS)
    local tat = raw and not find(raw, ':', 1, true) and tonumber(raw) or nil
    local back = backs and backs[i] or 0
    if back > 0 and tat ~= nil and tat > now_us then
      -- A share given back: its units refill at once (written whatever the decision).
      tat = math.max(now_us, tat - back * interval)
      redis.call('SET', key, fmt('%.0f', tat), 'KEEPTTL')
    end
    if tat == nil or tat < now_us then
      tat = now_us
    end
    local new_tat = tat + cost * interval
    if new_tat - now_us <= window_us then
      ok = true
      local left = window_us - (new_tat - now_us)
      remaining = (left - fmod(left, interval)) / interval
      reset_at, retry_after = new_tat / MICROS, 0
      local w = #writes
      at[i], counts[i], intervals[i] = w + 1, new_tat, interval
      writes[w + 1] = key
      writes[w + 2] = fmt('%.0f', new_tat)
      writes[w + 3] = math.ceil((new_tat - now_us) / 1000) + slack
    else
      ok = false
      local left = window_us - (tat - now_us)
      remaining = left > 0 and (left - fmod(left, interval)) / interval or 0
      reset_at, retry_after = tat / MICROS, (new_tat - window_us - now_us) / MICROS
    end
  end
  local r = 1 + i * 4
  reply[r + 1] = ok and 1 or 0
  reply[r + 2] = remaining
  reply[r + 3] = fmt('%.17g', reset_at)
  reply[r + 4] = ok and '0' or fmt('%.17g', retry_after)
  if not ok then
    if allowed then
      allowed, denied = false, i
    end
    if retry_after > retry then
      retry = retry_after
    end
  end
end

if not allowed then
  reply[2], reply[4] = denied, fmt('%.17g', retry)
  return table.concat(reply, ' ')
end

-- Pools, only once every bucket admitted (as the memory store: a pool after a full one
-- is not even purged). A slot is a member "acquired_at|token" scored by its expiry.
for j = 1, np do
  local key = KEYS[nb + j * 2 - 1]
  local limit = tonumber(ARGV[pa + (j - 1) * 2 + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', reply[5])
  if redis.call('ZCARD', key) >= limit then
    -- When a slot frees up, from the holders' slots (sorted by lease expiry, so by age):
    -- a holder is expected to be done `hold` seconds after it began (the average of past
    -- hold times, kept by release.lua); one that is already past that is certain to be
    -- gone when its lease expires. The soonest of the two.
    local lease = tonumber(ARGV[pa + (j - 1) * 2 + 2])
    local hold = tonumber(redis.call('GET', KEYS[nb + j * 2])) or tonumber(ARGV[5])
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local free = tonumber(first[2])
    local due = redis.call('ZRANGEBYSCORE', key, '(' .. fmt('%.17g', now - hold + lease),
      '+inf', 'LIMIT', 0, 1)[1]
    if due then
      local expected = tonumber(sub(due, 1, find(due, '|', 1, true) - 1)) + hold
      if expected < free then
        free = expected
      end
    end
    reply[2], reply[3] = nb + j, 1
    reply[4] = fmt('%.17g', free - now)
    return table.concat(reply, ' ')
  end
end

-- Shares: units set aside for this instance on top of the request (never more than
-- what is left), counted as used now; the instance spends them while Redis is away.
if wants then
  for i = 1, nb do
    local want, w = wants[i] or 0, at[i]
    local r = 1 + i * 4
    local got = math.min(want, reply[r + 2])
    if got > 0 and w then
      local count = counts[i] + got * (intervals[i] or 1)
      if intervals[i] then
        writes[w + 1] = fmt('%.0f', count)
        writes[w + 2] = math.ceil((count - floor(now * MICROS)) / 1000) + slack
        reply[r + 3] = fmt('%.17g', count / MICROS)
      else
        writes[w + 1] = reply[r + 3] .. ':' .. count
      end
      reply[r + 2] = reply[r + 2] - got
    else
      got = 0
    end
    wants[i] = got
  end
end

for w = 1, #writes, 3 do
  if writes[w + 2] < 0 then
    redis.call('SET', writes[w], writes[w + 1], 'KEEPTTL')
  else
    redis.call('SET', writes[w], writes[w + 1], 'PX', fmt('%d', writes[w + 2]))
  end
end
for j = 1, np do
  local key = KEYS[nb + j * 2 - 1]
  local lease = tonumber(ARGV[pa + (j - 1) * 2 + 2])
  local member = reply[5] .. '|' .. ARGV[pt + j]
  redis.call('ZADD', key, fmt('%.17g', now + lease), member)
  -- The set lives as long as its newest slot could.
  local ttl = math.ceil(lease * 1000) + slack
  if redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, fmt('%d', ttl))
  end
  reply[5 + nb * 4 + j] = member
end
if wants then
  for i = 1, nb do
    reply[#reply + 1] = wants[i]
  end
end
reply[1] = 1
return table.concat(reply, ' ')
