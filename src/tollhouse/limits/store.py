"""The limit store protocol, and the values that cross it.

A store answers one question per request, atomically: do all these buckets and pools
admit this request? If yes, every bucket is consumed and every pool slot taken; if not,
nothing changes (a rejected call costs nothing). Backends: :mod:`.memory` (one process),
Redis (several processes) — chosen by :func:`tollhouse.limits.open_store` from a URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

from tollhouse.limits.maths import Outcome


@dataclass(frozen=True, slots=True)
class BucketCheck:
    """One bucket counter a request is checked against."""

    key: str
    """Counter key: bucket name plus the scope it counts for (never the limit)."""
    name: str
    """The bucket's name, reported when it denies."""
    limit: int
    window: float
    algorithm: str
    cost: int


@dataclass(frozen=True, slots=True)
class PoolCheck:
    """One in-flight pool a request needs a slot of."""

    key: str
    name: str
    limit: int
    lease: float
    """Seconds after which an unreleased slot is reclaimed."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A slot held in a pool; give it back with :meth:`LimitStore.release`."""

    key: str
    token: str
    acquired_at: float


class Verdict(NamedTuple):
    """A store's answer for one request (a tuple: one is made per request)."""

    allowed: bool
    """Whether every bucket and pool admitted the request."""
    outcomes: list[Outcome]
    """One per bucket check, in the order given."""
    denied_by: str | None = None
    """Name of the first bucket or pool that said no."""
    retry_after: float = 0.0
    """Seconds until the request could be allowed (the largest of the denials)."""
    leases: tuple[Lease, ...] = ()
    """Pool slots taken (only when allowed)."""
    pool_denied: bool = False
    """True when a pool (not a bucket) denied."""


@dataclass(frozen=True, slots=True)
class BucketStatus:
    """A bucket read without consuming (status endpoint)."""

    used: int
    remaining: int
    reset_at: float
    touched: bool
    """False when nothing was counted in the current window."""


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """A pool read without consuming (status endpoint)."""

    active: int
    retry_after: float
    """Seconds until a slot may free up; 0 when one is free."""


class LimitStore(Protocol):
    """Where bucket counters and pool slots live."""

    degraded: bool
    """True while answers are best-effort estimates (a shared backend is unreachable)."""

    async def decide(
        self, buckets: tuple[BucketCheck, ...], pools: tuple[PoolCheck, ...], now: float
    ) -> Verdict:
        """Check every bucket and pool; consume them all if all admit, else nothing."""
        ...

    def decide_nowait(
        self, buckets: tuple[BucketCheck, ...], pools: tuple[PoolCheck, ...], now: float
    ) -> Verdict | None:
        """Answer without I/O when the store can (memory always; a shared store from its
        local cache of denials); None means: ``await decide(...)``."""
        ...

    async def release(self, lease: Lease, now: float) -> None:
        """Give a pool slot back (idempotent)."""
        ...

    async def peek(
        self, buckets: tuple[BucketCheck, ...], pools: tuple[PoolCheck, ...], now: float
    ) -> tuple[list[BucketStatus], list[PoolStatus]]:
        """Read buckets and pools without consuming anything."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
