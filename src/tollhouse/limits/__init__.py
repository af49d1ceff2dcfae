"""Rate limits and in-flight pools: pure maths, one store protocol, a backend per URL scheme."""

from __future__ import annotations

from tollhouse.errors import ConfigError
from tollhouse.limits.memory import MemoryStore
from tollhouse.limits.store import (
    BucketCheck,
    BucketStatus,
    Lease,
    LimitStore,
    PoolCheck,
    PoolStatus,
    Verdict,
)

__all__ = [
    "BucketCheck",
    "BucketStatus",
    "Lease",
    "LimitStore",
    "MemoryStore",
    "PoolCheck",
    "PoolStatus",
    "Verdict",
    "open_store",
]


def open_store(url: str) -> LimitStore:
    """The limit store for ``url``: empty or ``memory://`` keeps limits in this process.

    Raises:
        ConfigError: the scheme is not supported.
    """
    if not url or url.startswith("memory://"):
        return MemoryStore()
    if url.startswith(("redis://", "rediss://")):
        raise ConfigError(
            f"redis_url {url!r}: the Redis limit store is not available in this version; "
            "leave [storage] redis_url empty to keep limits in process memory"
        )
    raise ConfigError(f"limit store URL {url!r}: use memory:// or redis://host:port/db")
