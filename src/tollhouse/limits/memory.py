"""Limits in process memory: the embedded default (``memory://``).

A decision has no ``await`` inside, so it is atomic for the asyncio tasks of one event
loop; :meth:`MemoryStore.decide_sync` adds a lock for threads. Expired counters are swept
every ``SWEEP_INTERVAL`` seconds, so memory stays bounded by the callers active within
one window.
"""

from __future__ import annotations

import itertools
import threading

from tollhouse.limits.maths import MICROS, Outcome, fixed_window_peek, gcra, gcra_peek
from tollhouse.limits.store import (
    BucketCheck,
    BucketStatus,
    Lease,
    PoolCheck,
    PoolStatus,
    Verdict,
)

_new = tuple.__new__

#: Seconds between two sweeps of expired counters.
SWEEP_INTERVAL = 10.0
#: Weight of the newest hold time in a pool's moving average.
HOLD_EWMA_ALPHA = 0.2
#: Assumed hold time (seconds) of a pool slot before any was measured.
DEFAULT_HOLD = 1.0
#: Seconds an idle pool's measured hold time is kept after its last release.
HOLD_KEEP_SECONDS = 3600.0


class _Pool:
    __slots__ = ("hold", "last_release", "leases", "measured")

    def __init__(self) -> None:
        # token → (acquired_at, expires_at)
        self.leases: dict[str, tuple[float, float]] = {}
        self.hold = DEFAULT_HOLD
        self.measured = False
        self.last_release = 0.0

    def purge(self, now: float) -> None:
        expired = [t for t, (_, exp) in self.leases.items() if exp <= now]
        for t in expired:
            del self.leases[t]

    def released(self, held: float, now: float) -> None:
        """One slot was held ``held`` seconds: the first measure replaces the assumed
        hold time, later ones move the average."""
        self.last_release = now
        if self.measured:
            self.hold += HOLD_EWMA_ALPHA * (held - self.hold)
        else:
            self.hold, self.measured = held, True

    def retry_after(self, limit: int, now: float) -> float:
        """Seconds until a slot frees up (0 when one is free): the soonest of the
        holders' expected ends (began + the average hold time, for holders not yet past
        it) and their leases' expiries (certain)."""
        if len(self.leases) < limit:
            return 0.0
        hold = self.hold
        free = min(exp for _, exp in self.leases.values())
        for acquired, _ in self.leases.values():
            expected = acquired + hold
            if now < expected < free:
                free = expected
        return free - now


class MemoryStore:
    """Buckets and pools in this process (see :class:`tollhouse.limits.store.LimitStore`).

    ``decide``, ``decide_nowait`` and the other async methods are for one event loop (the
    server's): they take no lock, since no ``await`` happens inside a decision.
    :meth:`decide_sync` takes a lock and is safe from many threads. Do not mix threads
    and an event loop on one store.
    """

    degraded = False

    def __init__(self) -> None:
        # fixed window: key → (window_end, used); GCRA: key → tat in integer µs.
        self._states: dict[str, tuple[float, int] | int] = {}
        self._pools: dict[str, _Pool] = {}
        self._lock = threading.Lock()
        self._tokens = itertools.count(1)
        self._next_sweep = 0.0

    def decide_sync(
        self, buckets: tuple[BucketCheck, ...], pools: tuple[PoolCheck, ...], now: float
    ) -> Verdict:
        """Thread-safe :meth:`decide`."""
        with self._lock:
            return self.decide_nowait(buckets, pools, now)

    async def decide(
        self, buckets: tuple[BucketCheck, ...], pools: tuple[PoolCheck, ...], now: float
    ) -> Verdict:
        """Check every bucket and pool; consume them all if all admit, else nothing."""
        return self.decide_nowait(buckets, pools, now)

    def decide_nowait(
        self, buckets: tuple[BucketCheck, ...], pools: tuple[PoolCheck, ...], now: float
    ) -> Verdict:
        """:meth:`decide` without a coroutine: a memory store never needs to wait."""
        if now >= self._next_sweep:
            self._sweep(now)
        if pools:
            return self._decide(buckets, pools, now)
        # Fixed-window buckets and no pool, every one admitting: the commonest request,
        # answered here without the bookkeeping a denial or all-or-nothing across pools
        # needs (the gateway's hottest lines; a property test replays random calls
        # through this, _decide and maths.fixed_window).
        states = self._states
        outcomes: list[Outcome] = []
        for c in buckets:
            if c.algorithm != "fixed_window":
                return self._decide(buckets, pools, now)
            window = c.window
            reset_at = now - now % window + window
            state = states.get(c.key)
            used = (
                state[1] + c.cost if state.__class__ is tuple and state[0] == reset_at else c.cost
            )
            if used > c.limit:
                return self._decide(buckets, pools, now)
            outcomes.append(_new(Outcome, (True, (reset_at, used), c.limit - used, reset_at, 0.0)))
        for c, out in zip(buckets, outcomes, strict=True):
            states[c.key] = out[1]  # type: ignore[assignment]
        return _new(Verdict, (True, outcomes, None, 0.0, (), False))

    def _decide(
        self, buckets: tuple[BucketCheck, ...], pools: tuple[PoolCheck, ...], now: float
    ) -> Verdict:
        # The fixed-window arithmetic of maths.fixed_window is inlined here: this is the
        # hottest loop of the gateway. A property test replays random calls through both.
        states = self._states
        if now >= self._next_sweep:
            self._sweep(now)
        outcomes: list[Outcome] = []
        allowed = True
        denied_by: str | None = None
        retry = 0.0
        for c in buckets:
            state = states.get(c.key)
            if c.algorithm == "fixed_window":
                window = c.window
                reset_at = now - now % window + window
                used = state[1] if state.__class__ is tuple and state[0] == reset_at else 0
                limit = c.limit
                if used + c.cost <= limit:
                    used += c.cost
                    outcomes.append(
                        _new(Outcome, (True, (reset_at, used), limit - used, reset_at, 0.0))
                    )
                    continue
                out = _new(
                    Outcome,
                    (False, state, limit - used if used < limit else 0, reset_at, reset_at - now),
                )
            else:
                out = gcra(
                    state if state.__class__ is int else None,
                    now,
                    c.limit,
                    c.window,
                    c.cost,
                )
                if out.allowed:
                    outcomes.append(out)
                    continue
            outcomes.append(out)
            if allowed:
                denied_by = c.name
                allowed = False
            if out.retry_after > retry:
                retry = out.retry_after
        if not allowed:
            return _new(Verdict, (False, outcomes, denied_by, retry, (), False))
        for p in pools:
            pool = self._pools.get(p.key)
            if pool is None:
                continue
            pool.purge(now)
            if len(pool.leases) >= p.limit:
                return Verdict(False, outcomes, p.name, pool.retry_after(p.limit, now), (), True)
        for i, c in enumerate(buckets):
            states[c.key] = outcomes[i][1]  # type: ignore[assignment]
        if not pools:
            return _new(Verdict, (True, outcomes, None, 0.0, (), False))
        taken = []
        for p in pools:
            pool = self._pools.get(p.key)
            if pool is None:
                pool = self._pools[p.key] = _Pool()
            token = str(next(self._tokens))
            pool.leases[token] = (now, now + p.lease)
            taken.append(Lease(p.key, token, now))
        return Verdict(True, outcomes, None, 0.0, tuple(taken))

    async def release(self, lease: Lease, now: float) -> None:
        """Give a pool slot back; releasing twice or after expiry is harmless."""
        with self._lock:
            pool = self._pools.get(lease.key)
            if pool is not None and pool.leases.pop(lease.token, None) is not None:
                pool.released(max(0.0, now - lease.acquired_at), now)

    async def peek(
        self, buckets: tuple[BucketCheck, ...], pools: tuple[PoolCheck, ...], now: float
    ) -> tuple[list[BucketStatus], list[PoolStatus]]:
        """Read buckets and pools without consuming anything."""
        with self._lock:
            out: list[BucketStatus] = []
            for c in buckets:
                state = self._states.get(c.key)
                if c.algorithm == "gcra":
                    used, reset_at, touched = gcra_peek(
                        state if isinstance(state, int) else None, now, c.limit, c.window
                    )
                else:
                    used, reset_at, touched = fixed_window_peek(
                        state if isinstance(state, tuple) else None, now, c.limit, c.window
                    )
                out.append(BucketStatus(used, max(0, c.limit - used), reset_at, touched))
            pool_out: list[PoolStatus] = []
            for p in pools:
                pool = self._pools.get(p.key)
                if pool is None:
                    pool_out.append(PoolStatus(0, 0.0))
                    continue
                pool.purge(now)
                pool_out.append(PoolStatus(len(pool.leases), pool.retry_after(p.limit, now)))
            return out, pool_out

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + SWEEP_INTERVAL
        now_us = now * MICROS
        dead = [
            k
            for k, st in self._states.items()
            if (st[0] <= now if isinstance(st, tuple) else st <= now_us)
        ]
        for k in dead:
            del self._states[k]
        # An idle pool keeps its measured hold time as long as Redis keeps it (an hour).
        idle = [
            k
            for k, p in self._pools.items()
            if not p.leases and now - p.last_release > HOLD_KEEP_SECONDS
        ]
        for key in idle:
            del self._pools[key]

    def __len__(self) -> int:
        """Counters held (for tests of boundedness)."""
        return len(self._states)

    async def aclose(self) -> None:
        """Nothing to release."""
