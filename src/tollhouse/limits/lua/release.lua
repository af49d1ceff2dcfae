-- Give a pool slot back. Idempotent: only a slot still in the set counts, so releasing
-- twice, or after the lease expired and was purged, changes nothing.
--
-- KEYS   [1] the pool's slot set  [2] its hold key
-- ARGV   [1] now ('' = server TIME, else the caller's epoch seconds)  [2] the slot's member
--        [3] acquired_at (s)  [4] weight of the newest hold time  [5] unused (was: the assumed hold
--        time; the first measure now replaces it)
--        [6] ms the hold key outlives its last update
-- Reply  1 when the slot was held, else 0.
--
-- Like the memory store, every release feeds a moving average of hold times; a full
-- pool's retry estimate uses it (with the holders' leases) to say when a slot frees up.

local MICROS = 1000000
if redis.call('ZREM', KEYS[1], ARGV[2]) == 0 then
  return 0
end
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / MICROS
else
  now = tonumber(ARGV[1])
end
-- The first measure replaces the assumed hold time; later ones move the average.
local hold = tonumber(redis.call('GET', KEYS[2]))
local held = math.max(0, now - tonumber(ARGV[3]))
if hold then
  hold = hold + tonumber(ARGV[4]) * (held - hold)
else
  hold = held
end
redis.call('SET', KEYS[2], string.format('%.17g', hold), 'PX', ARGV[6])
return 1
