"""Degraded mode for a shared limit store: a circuit breaker and limits kept locally.

While the shared store (Redis) is unreachable, every instance enforces its share of each
limit on its own: ``limit // instances`` (at least 1) in a :class:`MemoryStore`. With
``instances`` right, the whole fleet admits at most about the configured limit; with a
missing instance count it admits up to ``instances`` times more — the status endpoint
reports ``degraded: true`` meanwhile. Nothing is carried back into Redis when it
returns: counters there continue where they were, or start over if Redis restarted empty
(every key has a TTL, so there is no stale state to clean up either way).

:class:`Breaker` is the pure part: it counts consecutive failed round trips and says when
to stop calling the shared store. Probing and closing again belong to the store, which
owns the connection (see :class:`tollhouse.limits.redis.RedisStore`).
"""

from __future__ import annotations

import logging
import math

from tollhouse.errors import ConfigError
from tollhouse.limits.memory import MemoryStore
from tollhouse.limits.store import (
    BucketCheck,
    BucketStatus,
    Lease,
    PoolCheck,
    PoolStatus,
    Verdict,
)

logger = logging.getLogger(__name__)

#: Request shapes whose scaled checks are remembered (the gateway reuses check tuples).
SCALED_SHAPES = 4096


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

    def __init__(self, threshold: int = 2) -> None:
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


class LocalLimits:
    """This instance's share of every limit, enforced in process memory.

    Args:
        instances: how many instances share the limits (the server passes its number of
            workers times replicas); each enforces ``limit // instances``, at least 1.
    """

    def __init__(self, instances: int = 1) -> None:
        if instances < 1:
            raise ConfigError(f"instances {instances}: must be at least 1")
        self.instances = instances
        self.store = MemoryStore()
        # (id(buckets), id(pools)) → (buckets, pools, scaled buckets, scaled pools). The
        # originals are kept so their ids cannot be reused by other tuples meanwhile.
        self._scaled: dict[
            tuple[int, int],
            tuple[
                tuple[BucketCheck, ...],
                tuple[PoolCheck, ...],
                tuple[BucketCheck, ...],
                tuple[PoolCheck, ...],
            ],
        ] = {}

    def share(self, limit: int) -> int:
        """This instance's part of ``limit``."""
        return max(1, limit // self.instances)

    def scale(
        self, buckets: tuple[BucketCheck, ...], pools: tuple[PoolCheck, ...]
    ) -> tuple[tuple[BucketCheck, ...], tuple[PoolCheck, ...]]:
        """The checks with every limit replaced by this instance's share."""
        if self.instances == 1:
            return buckets, pools
        key = (id(buckets), id(pools))
        hit = self._scaled.get(key)
        if hit is not None and hit[0] is buckets and hit[1] is pools:
            return hit[2], hit[3]
        sb = tuple(
            BucketCheck(c.key, c.name, self.share(c.limit), c.window, c.algorithm, c.cost)
            for c in buckets
        )
        sp = tuple(PoolCheck(p.key, p.name, self.share(p.limit), p.lease) for p in pools)
        if len(self._scaled) >= SCALED_SHAPES:
            self._scaled.clear()
        self._scaled[key] = (buckets, pools, sb, sp)
        return sb, sp

    def decide(
        self, buckets: tuple[BucketCheck, ...], pools: tuple[PoolCheck, ...], now: float
    ) -> Verdict:
        """Decide locally against this instance's share (never waits)."""
        sb, sp = self.scale(buckets, pools)
        return self.store.decide_nowait(sb, sp, now)

    async def release(self, lease: Lease, now: float) -> None:
        """Give back a slot taken locally."""
        await self.store.release(lease, now)

    async def peek(
        self, buckets: tuple[BucketCheck, ...], pools: tuple[PoolCheck, ...], now: float
    ) -> tuple[list[BucketStatus], list[PoolStatus]]:
        """Read the local counters (``remaining`` is of this instance's share)."""
        sb, sp = self.scale(buckets, pools)
        return await self.store.peek(sb, sp, now)
