-- Count in Redis what an instance admitted on its own while Redis could not be asked
-- (its proven-unused remainder, or everything under on_store_failure = "allow"), so
-- the rest of the window knows about it.
--
-- KEYS   bucket counter keys, then as many hashes of the instances that wrote back a
--        local window of that bucket's current window (field w: that window; same order)
-- ARGV   [1] now ('' = server TIME, else the caller's epoch seconds)  [2] slack (ms)
--        [3] this instance's id
--        per key: algorithm ('f' | 'g'), limit, window (s), window end (fixed window: the
--        window the units were admitted in), units, share, presumed
-- Reply  the number of keys changed.
--
-- Fixed window: units admitted in a window that is over change nothing. GCRA: the units
-- are charged now (later than they were admitted: stricter, never looser).
--
-- A local window (share > 0: several instances, none of which Redis answered for this
-- window) may have its peers: every other instance cut off at the window's start admits
-- up to a share on its own, and they come back one by one. The first instance to write
-- one back also counts `presumed` (share × the other instances) as taken; each other
-- instance that writes one back later puts its true units in place of its presumed
-- share. So the window never admits more than its limit, however the instances come
-- back; a presumed share that no instance writes back (one that was not cut off, or
-- idle) stays counted until the window ends: fewer admitted, never more.

local MICROS = 1000000
local fmt, floor, fmod = string.format, math.floor, math.fmod
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / MICROS
else
  now = tonumber(ARGV[1])
end
local slack = tonumber(ARGV[2])
local changed = 0
local n = #KEYS / 2
for i = 1, n do
  local a = 3 + (i - 1) * 7
  local limit = tonumber(ARGV[a + 2])
  local window = tonumber(ARGV[a + 3])
  local units = tonumber(ARGV[a + 5])
  local share = tonumber(ARGV[a + 6])
  local raw = redis.call('GET', KEYS[i])
  if ARGV[a + 1] == 'f' then
    local reset_at = now - fmod(now, window) + window
    if tonumber(ARGV[a + 4]) == reset_at then
      local used = 0
      if raw then
        local sep = string.find(raw, ':', 1, true)
        if sep and tonumber(string.sub(raw, 1, sep - 1)) == reset_at then
          used = tonumber(string.sub(raw, sep + 1))
        end
      end
      local ttl = fmt('%d', math.ceil((reset_at - now) * 1000) + slack)
      local settled = KEYS[n + i]
      if share > 0 then
        -- Field w names the window the instances written back are of.
        local w = fmt('%.17g', reset_at)
        if redis.call('HGET', settled, 'w') ~= w then
          redis.call('DEL', settled)
          redis.call('HSET', settled, 'w', w)
        end
        if redis.call('HSETNX', settled, ARGV[3], 1) == 1 then
          redis.call('PEXPIRE', settled, ttl)
          if redis.call('HLEN', settled) == 2 then
            units = units + tonumber(ARGV[a + 7])
          else
            units = units - share
          end
        end
      end
      redis.call('SET', KEYS[i], fmt('%.17g', reset_at) .. ':' .. math.max(0, used + units),
        'PX', ttl)
      changed = changed + 1
    end
  else
    -- maths.gcra's interval (Python's round(): half to even).
    local x = window * MICROS
    local rounded = floor(x)
    local half = x - rounded
    if half > 0.5 or (half == 0.5 and fmod(rounded, 2) ~= 0) then
      rounded = rounded + 1
    end
    local interval = math.max(1, (rounded - fmod(rounded, limit)) / limit)
    local now_us = floor(now * MICROS)
    local tat = raw and not string.find(raw, ':', 1, true) and tonumber(raw) or nil
    if tat == nil or tat < now_us then
      tat = now_us
    end
    -- Never more than a full bucket's worth ahead (what GCRA itself never exceeds).
    tat = math.min(tat + units * interval, now_us + interval * limit)
    redis.call('SET', KEYS[i], fmt('%.0f', tat), 'PX',
      fmt('%d', math.ceil((tat - now_us) / 1000) + slack))
    changed = changed + 1
  end
end
return changed
