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


def open_store(url: str, *, instances: int = 1) -> LimitStore:
    """The limit store for ``url``.

    Args:
        url: empty or ``memory://`` keeps limits in this process;
            ``redis://[user:password@]host:port/db`` or ``rediss://…`` shares them through
            Redis (:class:`tollhouse.limits.redis.RedisStore`, connected lazily).
        instances: how many tollhouse instances share the limits (workers × replicas);
            with Redis unreachable each enforces ``limit // instances`` locally.

    Raises:
        ConfigError: the scheme is not supported, the URL is malformed, or the Redis
            client is not installed.
    """
    if not url or url.startswith("memory://"):
        return MemoryStore()
    if url.startswith(("redis://", "rediss://")):
        try:
            # Imported here: the embedded default must not need a Redis client.
            from tollhouse.limits.redis import RedisStore
        except ImportError as exc:
            if exc.name not in ("redis", "hiredis") and not str(exc.name).startswith("redis."):
                raise
            raise ConfigError(
                f"redis_url {url!r} needs the Redis client: pip install 'redis[hiredis]>=5' "
                "(or leave [storage] redis_url empty to keep limits in process memory)"
            ) from exc
        return RedisStore(url, instances=instances)
    raise ConfigError(f"limit store URL {url!r}: use memory:// or redis://host:port/db")
