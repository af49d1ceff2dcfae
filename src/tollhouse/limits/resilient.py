"""Degraded mode for a shared limit store: a circuit breaker, and what an instance may
admit on its own while the shared store (Redis) cannot be asked.

Never a fresh local window
    An instance that cannot ask Redis knows nothing of what the others admitted since it
    last heard from it. So it admits only from a **share**: units of a bucket's current
    window it can prove nobody else will use.

    * With ``instances > 1``, a share is **set aside in Redis**: the first request an
      instance sends for a bucket in a window asks for ``⌊limit × reserve ÷ instances⌋``
      units more than it needs; Redis counts them as used at once (if they are left) and
      the instance keeps them. While Redis is slow or away it spends them; when Redis
      denies the bucket, the instance gives back what it still holds, so a busy fleet
      still admits the whole limit. A share lasts until the end of the window it was set
      aside in (GCRA: until the bucket would be whole again).
    * With ``instances == 1`` (this process is the only one on that Redis), what Redis
      last said was remaining is provably unused: that is the share. What is admitted
      from it is **written back** to Redis before anything else once it answers
      (``lua/settle.lua``), so the window goes on from the true count.

    A window that began while Redis was away (no answer of Redis covers it) gets a
    **local window** of ``limit ÷ instances``: an outage that cuts every instance off
    admits at most the limit across the fleet, and what was admitted is written back
    once Redis answers. Instances come back one by one: the first to write a local
    window back also has Redis count every other instance's ``limit ÷ instances`` as
    taken, and each later one puts its true count in place of that presumed share
    (``lua/settle.lua``), so no order of coming back admits more than the limit. A local
    window's unspent units are never given back (Redis never counted them). Beyond its
    share a request is denied with ``Retry-After``.
    Pools keep a local cap of ``limit ÷ instances`` slots (slots are not windows: they
    come back when requests end).

``on_store_failure`` (``[limits]`` in the policy)
    ``local`` (default) as above; ``deny``: every limited request is refused while Redis
    cannot be asked (fail closed); ``allow``: every request is admitted (fail open), and
    what was admitted is written back once Redis answers.

:class:`Breaker` is the pure part: it counts consecutive failed round trips and says when
to stop calling the shared store. Probing and closing again belong to the store, which
owns the connection (see :class:`tollhouse.limits.redis.RedisStore`).
"""

from __future__ import annotations

import logging
import math
from typing import Literal, NamedTuple

from tollhouse.errors import ConfigError
from tollhouse.limits.maths import Outcome
from tollhouse.limits.memory import MemoryStore
from tollhouse.limits.store import (
    BucketCheck,
    BucketStatus,
    Lease,
    PoolCheck,
    PoolStatus,
    Verdict,
)
from tollhouse.memo import remember

logger = logging.getLogger(__name__)

StoreFailure = Literal["local", "deny", "allow"]
#: The values of ``[limits] on_store_failure``.
STORE_FAILURES: tuple[StoreFailure, ...] = ("local", "deny", "allow")

#: Request shapes whose scaled pools are remembered (the gateway reuses check tuples).
SCALED_SHAPES = 4096
#: Bucket keys whose share is remembered (past this, all are forgotten at once).
SHARES = 65536
#: Seconds a refused request is told to wait when no share says better: about when
#: Redis is asked again.
UNSHARED_RETRY = 1.0
#: Default of the fraction of each limit the fleet keeps as shares (``instances > 1``).
DEFAULT_RESERVE = 0.1

_new = tuple.__new__


class Breaker:
    """Opens after ``threshold`` consecutive failed attempts; closed again by :meth:`close`.

    Attempts are consecutive in time: a failure counts only if its attempt began after
    the last counted failure. Round trips in flight together fail together on one blip;
    they count once, so Redis always gets a fresh try before it is given up on.

    Args:
        threshold: consecutive failed attempts that open the breaker (one success in
            between starts the count over).
    """

    __slots__ = ("failures", "is_open", "last_failure", "threshold")

    def __init__(self, threshold: int = 3) -> None:
        if threshold < 1:
            raise ConfigError(f"breaker threshold {threshold}: must be at least 1")
        self.threshold = threshold
        self.failures = 0
        self.is_open = False
        self.last_failure = -math.inf

    def failure(self, started: float, now: float) -> bool:
        """Count one failed attempt begun at ``started`` and failed at ``now`` (any
        monotonic clock); True when this one opened the breaker."""
        if started <= self.last_failure:
            return False  # in flight with an already counted failure
        self.last_failure = now
        self.failures += 1
        if not self.is_open and self.failures >= self.threshold:
            self.is_open = True
            return True
        return False

    def success(self) -> None:
        """An attempt went through: failures so far were a blip."""
        self.failures = 0

    def close(self) -> None:
        """The shared store answers again."""
        self.failures = 0
        self.is_open = False


class Unsettled(NamedTuple):
    """Units admitted locally that Redis has not counted yet."""

    check: BucketCheck
    window_end: float
    """The window they were admitted in (fixed window; ignored for GCRA)."""
    units: int
    local_window: bool = False
    """Admitted from a local window (one no answer of Redis covered) with several
    instances: the other instances may be admitting from theirs, unknown to Redis."""


class Fallback:
    """What an instance admits while the shared store cannot be asked (see the module).

    Args:
        instances: how many instances share the limits (workers × replicas).
        on_failure: ``local``, ``deny`` or ``allow``.
        reserve: fraction of each limit set aside as shares across the fleet (only with
            ``instances > 1``); 0 keeps none, so such an instance denies while degraded.

    Raises:
        ConfigError: an argument is out of range.
    """

    def __init__(
        self, instances: int = 1, on_failure: str = "local", reserve: float = DEFAULT_RESERVE
    ) -> None:
        if instances < 1:
            raise ConfigError(f"instances {instances}: must be at least 1")
        if on_failure not in STORE_FAILURES:
            raise ConfigError(f"on_store_failure {on_failure!r}: use local, deny or allow")
        if not 0 <= reserve <= 1:
            raise ConfigError(f"reserve {reserve}: must be between 0 and 1")
        self.instances = instances
        self.on_failure = on_failure
        self.reserve = reserve
        #: Whether this instance is alone on the shared store: Redis's last word on each
        #: bucket is its share (else shares are set aside in Redis).
        self.alone = instances == 1
        self.pools = MemoryStore()
        #: key → the outcome whose ``remaining`` (until ``reset_at``) may be spent here.
        self.shares: dict[str, Outcome] = {}
        #: key → (the share spent from, units spent from it).
        self.spent: dict[str, tuple[Outcome, int]] = {}
        #: key → units admitted here that Redis has not counted yet.
        self.unsettled: dict[str, Unsettled] = {}
        #: key → the share of a window Redis never answered for (see
        #: :meth:`_local_window`); what is spent from it is written back.
        self.local: dict[str, Outcome] = {}
        self._scaled: dict[
            tuple[int, int], tuple[tuple[PoolCheck, ...], tuple[PoolCheck, ...]]
        ] = {}

    # ---- shares ------------------------------------------------------------------------

    def share_size(self, check: BucketCheck) -> int:
        """Units to set aside for this instance in ``check``'s window (0: none)."""
        if self.alone or self.on_failure != "local":
            return 0
        return int(check.limit * self.reserve / self.instances)

    def observe(self, buckets: tuple[BucketCheck, ...], outcomes: list[Outcome]) -> None:
        """Redis's answer for ``buckets`` (alone on Redis: its remaining is this
        instance's share). Within one window the smallest remaining wins: answers of
        round trips in flight together may arrive out of order."""
        shares = self.shares
        if len(shares) >= SHARES:
            shares.clear()
        for c, o in zip(buckets, outcomes, strict=True):
            old = shares.get(c.key)
            if old is None or o.reset_at > old.reset_at or o.remaining < old.remaining:
                shares[c.key] = o

    def granted(self, check: BucketCheck, units: int, until: float) -> None:
        """Redis set ``units`` of ``check`` aside for this instance, until ``until``."""
        if len(self.shares) >= SHARES:
            self.shares.clear()
        self.shares[check.key] = _new(Outcome, (True, None, units, until, 0.0))

    def pending(self, check: BucketCheck, until: float) -> None:
        """A share of ``check`` was asked for: ask no more until ``until`` (its answer
        replaces this)."""
        self.shares[check.key] = _new(Outcome, (False, None, 0, until, 0.0))

    def wants(self, key: str, now: float) -> bool:
        """Whether this instance holds no share of ``key`` for ``now``'s window."""
        share = self.shares.get(key)
        return share is None or share.reset_at <= now

    def held(self, check: BucketCheck, now: float) -> int:
        """Units of ``check`` this instance may still admit on its own at ``now``."""
        share = self.shares.get(check.key)
        if share is None or (
            share.reset_at <= now and not (self.alone and check.algorithm == "gcra")
        ):
            # Alone on Redis, a GCRA bucket's remaining only grows with time.
            if self.on_failure != "local" or (share is not None and share.reset_at > now):
                return 0
            share = self._local_window(check, now)
        spent = self.spent.get(check.key)
        used = spent[1] if spent is not None and spent[0] is share else 0
        unsettled = self.unsettled.get(check.key)
        if self.alone and unsettled is not None:
            # Not yet in what Redis said: admitted here, written back later.
            used = max(used, unsettled.units)
        return max(0, share.remaining - used)

    def _local_window(self, check: BucketCheck, now: float) -> Outcome:
        """A share for a window no answer of Redis covers (Redis has been away since
        before it began): ``limit ÷ instances`` of it, so an outage that cuts every
        instance off admits at most the limit across the fleet, and nothing more than a
        window's worth on its own. What is admitted from it is written back to Redis
        when it answers (:attr:`unsettled`), so the window goes on from the true count."""
        if check.algorithm == "fixed_window":
            end = now - now % check.window + check.window
        else:
            end = now + check.window
        share = _new(Outcome, (True, None, check.limit // self.instances, end, 0.0))
        if len(self.shares) >= SHARES:
            self.shares.clear()
            self.local.clear()
        self.shares[check.key] = share
        self.local[check.key] = share
        return share

    def give_back(self, check: BucketCheck, now: float) -> int:
        """Drop this instance's share of ``check``; returns the units it still held that
        Redis set aside for it (a local window's were never set aside: dropped, 0)."""
        units = self.held(check, now)
        share = self.shares.get(check.key)
        if share is not None:
            self.spent[check.key] = (share, share.remaining)
            if self.local.get(check.key) is share:
                # Redis counts only what was admitted from it (written back): giving the
                # rest back would free units Redis never counted as taken.
                return 0
        return units

    # ---- deciding ----------------------------------------------------------------------

    def decide(
        self, buckets: tuple[BucketCheck, ...], pools: tuple[PoolCheck, ...], now: float
    ) -> Verdict:
        """Decide without the shared store (never waits)."""
        mode = self.on_failure
        if mode == "deny":
            return self._deny(buckets, pools, now, {})
        held: dict[int, int] = {}
        if mode == "local":
            for i, c in enumerate(buckets):
                units = self.held(c, now)
                if units < c.cost:
                    return self._deny(buckets, pools, now, held, i)
                held[i] = units
        leases: tuple[Lease, ...] = ()
        if pools and mode == "local":
            verdict = self.pools.decide_nowait((), self._scale(pools), now)
            if not verdict.allowed:
                return self._deny(buckets, pools, now, held, None, verdict)
            leases = verdict.leases
        outcomes: list[Outcome] = []
        for i, c in enumerate(buckets):
            share = self.shares.get(c.key)
            if mode == "local":
                assert share is not None
                spent = self.spent.get(c.key)
                used = spent[1] if spent is not None and spent[0] is share else 0
                self.spent[c.key] = (share, used + c.cost)
                remaining = held[i] - c.cost
                reset_at = share.reset_at
            else:
                remaining = self.held(c, now) if share is not None else c.limit
                reset_at = share.reset_at if share is not None and share.reset_at > now else now
            if (
                self.alone
                or mode == "allow"
                or (share is not None and self.local.get(c.key) is share)
            ):
                self._unsettle(
                    c, share, now, not self.alone and mode == "local" and share is not None
                )
            outcomes.append(_new(Outcome, (True, None, max(0, remaining), reset_at, 0.0)))
        return Verdict(True, outcomes, None, 0.0, leases)

    def _unsettle(
        self, c: BucketCheck, share: Outcome | None, now: float, local_window: bool = False
    ) -> None:
        window_end = (
            share.reset_at
            if share is not None and c.algorithm == "fixed_window" and share.reset_at > now
            else now - now % c.window + c.window
        )
        old = self.unsettled.get(c.key)
        units = old.units if old is not None and old.window_end == window_end else 0
        self.unsettled[c.key] = Unsettled(c, window_end, units + c.cost, local_window)

    def _deny(
        self,
        buckets: tuple[BucketCheck, ...],
        pools: tuple[PoolCheck, ...],
        now: float,
        held: dict[int, int],
        first: int | None = 0,
        pool_verdict: Verdict | None = None,
    ) -> Verdict:
        """Refuse: each bucket without a share waits until Redis is asked again; one whose
        share is spent, until its window ends."""
        outcomes: list[Outcome] = []
        retry = 0.0
        for i, c in enumerate(buckets):
            units = held.get(i)
            if units is None:
                units = self.held(c, now) if self.on_failure == "local" else 0
            share = self.shares.get(c.key)
            if units >= c.cost and (first is None or i != first):
                outcomes.append(
                    _new(Outcome, (True, None, units, share.reset_at if share else now, 0.0))
                )
                continue
            wait = UNSHARED_RETRY
            if share is not None and share.reset_at > now and c.algorithm == "fixed_window":
                wait = max(wait, share.reset_at - now)
            retry = max(retry, wait)
            outcomes.append(_new(Outcome, (False, None, units, now + wait, wait)))
        if pool_verdict is not None:
            return Verdict(
                False, outcomes, pool_verdict.denied_by, pool_verdict.retry_after, (), True
            )
        if not buckets:
            return Verdict(
                False, outcomes, pools[0].name if pools else None, UNSHARED_RETRY, (), True
            )
        denied_by = next(c.name for c, o in zip(buckets, outcomes, strict=True) if not o.allowed)
        return Verdict(False, outcomes, denied_by, retry, (), False)

    def _scale(self, pools: tuple[PoolCheck, ...]) -> tuple[PoolCheck, ...]:
        """The pools with every limit replaced by this instance's part, ``limit ÷
        instances`` (at least 1)."""
        if self.instances == 1:
            return pools
        key = (id(pools), 0)
        hit = self._scaled.get(key)
        if hit is not None and hit[0] is pools:
            return hit[1]
        scaled = tuple(
            PoolCheck(p.key, p.name, max(1, p.limit // self.instances), p.lease) for p in pools
        )
        remember(self._scaled, SCALED_SHAPES, key, (pools, scaled))
        return scaled

    async def release(self, lease: Lease, now: float) -> None:
        """Give back a slot taken locally."""
        await self.pools.release(lease, now)

    async def peek(
        self, buckets: tuple[BucketCheck, ...], pools: tuple[PoolCheck, ...], now: float
    ) -> tuple[list[BucketStatus], list[PoolStatus]]:
        """What this instance could admit on its own (its shares) and its local slots."""
        stats = []
        for c in buckets:
            units = self.held(c, now)
            share = self.shares.get(c.key)
            reset_at = share.reset_at if share is not None and share.reset_at > now else now
            stats.append(BucketStatus(c.limit - units, units, reset_at, units < c.limit))
        _, pool_stats = await self.pools.peek((), self._scale(pools), now)
        return stats, pool_stats
