-- Read buckets and pools without consuming anything (the status endpoint). Only reads:
-- expired slots are skipped, not purged.
--
-- KEYS   bucket counter keys (nb), then per pool: its slot set and its hold key
-- ARGV   [1] now ('' = server TIME, else the caller's epoch seconds)  [2] nb  [3] np
--        [4] default hold (s)
--        per bucket: limit, window (s), algorithm ('f' | 'g')
--        per pool: limit, lease (s)
-- Reply  {now, per bucket: used, reset_at, touched (0/1), per pool: active, retry_after}
--        now, reset_at and retry_after are '%.17g' strings.

local MICROS = 1000000
local nb = tonumber(ARGV[2])
local np = tonumber(ARGV[3])
local default_hold = tonumber(ARGV[4])

local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / MICROS
else
  now = tonumber(ARGV[1])
end

local function num(x)
  return string.format('%.17g', x)
end

local function idiv(a, b)
  return (a - math.fmod(a, b)) / b
end

local function round(x)
  local f = math.floor(x)
  local d = x - f
  if d > 0.5 or (d == 0.5 and math.fmod(f, 2) ~= 0) then
    return f + 1
  end
  return f
end

local reply = {num(now)}
for i = 1, nb do
  local a = 4 + (i - 1) * 3
  local limit = tonumber(ARGV[a + 1])
  local window = tonumber(ARGV[a + 2])
  local raw = redis.call('GET', KEYS[i])
  local used, reset_at, touched = 0, now, 0
  if ARGV[a + 3] == 'f' then
    -- maths.fixed_window_peek
    reset_at = now - math.fmod(now, window) + window
    if raw then
      local sep = string.find(raw, ':', 1, true)
      if sep and tonumber(string.sub(raw, 1, sep - 1)) == reset_at then
        used, touched = tonumber(string.sub(raw, sep + 1)), 1
      end
    end
  else
    -- maths.gcra_peek
    local now_us = math.floor(now * MICROS)
    local tat = raw and not string.find(raw, ':', 1, true) and tonumber(raw) or nil
    if tat ~= nil and tat > now_us then
      local interval = math.max(1, idiv(round(window * MICROS), limit))
      -- ceil((tat - now_us) / interval) for positive integers
      used = math.min(limit, idiv(tat - now_us + interval - 1, interval))
      reset_at, touched = tat / MICROS, 1
    end
  end
  reply[#reply + 1] = used
  reply[#reply + 1] = num(reset_at)
  reply[#reply + 1] = touched
end

local pa = 4 + nb * 3
for j = 1, np do
  local key = KEYS[nb + j * 2 - 1]
  local limit = tonumber(ARGV[pa + (j - 1) * 2 + 1])
  local active = redis.call('ZCOUNT', key, '(' .. num(now), '+inf')
  local retry = 0
  if active >= limit then
    -- As decide.lua: the soonest of the first lease expiry and the first expected end.
    local lease = tonumber(ARGV[pa + (j - 1) * 2 + 2])
    local hold = tonumber(redis.call('GET', KEYS[nb + j * 2])) or default_hold
    local first = redis.call('ZRANGEBYSCORE', key, '(' .. num(now), '+inf', 'WITHSCORES',
      'LIMIT', 0, 1)
    local free = tonumber(first[2])
    local due = redis.call('ZRANGEBYSCORE', key, '(' .. num(math.max(now, now - hold + lease)),
      '+inf', 'LIMIT', 0, 1)[1]
    if due then
      local expected = tonumber(string.sub(due, 1, string.find(due, '|', 1, true) - 1)) + hold
      if expected < free then
        free = expected
      end
    end
    retry = free - now
  end
  reply[#reply + 1] = active
  reply[#reply + 1] = num(retry)
end
return reply
