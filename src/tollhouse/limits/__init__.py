"""Rate limits and in-flight pools: pure maths, one store protocol, a backend per URL scheme."""

from __future__ import annotations

from typing import Any

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
from tollhouse.urls import shown_url

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


#: The URL forms of the Redis limit stores, for error messages.
STORE_URLS = (
    "redis://host:port/db, rediss://host:port/db?ssl_ca_certs=/path/ca.pem (TLS), "
    "redis+cluster://host:port[,host:port…] or "
    "rediss+cluster://host:port[,host:port…]?ssl_ca_certs=/path/ca.pem (TLS)"
)


def open_store(
    url: str,
    *,
    instances: int = 1,
    timeout: float | None = None,
    failures_to_open: int | None = None,
    probe_interval: float | None = None,
    reserve: float | None = None,
    on_store_failure: str = "local",
) -> LimitStore:
    """The limit store for ``url``.

    Args:
        url: empty or ``memory://`` keeps limits in this process;
            ``redis://[user:password@]host:port/db`` shares them through Redis
            (:class:`tollhouse.limits.redis.RedisStore`, connected lazily), and
            ``rediss://…[?ssl_ca_certs=/path/ca.pem]`` over TLS (its certificate is
            checked here); ``redis+cluster://[user:password@]host:port[,host:port…]``
            through a Redis Cluster whose startup nodes these are
            (:class:`tollhouse.limits.cluster.ClusterStore`: they are asked once here), and
            ``rediss+cluster://…[?ssl_ca_certs=/path/ca.pem]`` over TLS
            (:mod:`tollhouse.limits.tls`).
        instances: how many tollhouse instances share the limits (workers × replicas).
        timeout: seconds a Redis round trip may take before it counts as failed.
        failures_to_open: consecutive failed round trips that stop asking Redis.
        probe_interval: seconds between two probes of Redis while it is not asked.
        reserve: fraction of each limit the instances keep as shares for when Redis
            cannot be asked (``instances > 1``).
        on_store_failure: ``local``, ``deny`` or ``allow`` while Redis cannot be asked
            (:mod:`tollhouse.limits.resilient`). None of these apply to memory.

    Raises:
        ConfigError: the scheme is not supported, the URL is malformed, the Redis
            client is not installed, no startup node of a cluster answers, or over TLS a
            server's certificate is not trusted.
    """
    if not url or url.startswith("memory://"):
        return MemoryStore()
    if url.startswith(("redis://", "rediss://", "redis+cluster://", "rediss+cluster://")):
        try:
            # Imported here: the embedded default must not need a Redis client.
            from tollhouse.limits.cluster import ClusterStore
            from tollhouse.limits.redis import RedisStore
        except ImportError as exc:
            if exc.name not in ("redis", "hiredis") and not str(exc.name).startswith("redis."):
                raise
            raise ConfigError(
                f"redis_url {shown_url(url)!r} needs the Redis client: "
                "pip install 'redis[hiredis]>=5' "
                "(or leave [storage] redis_url empty to keep limits in process memory)"
            ) from exc
        options: dict[str, Any] = {
            name: value
            for name, value in (
                ("timeout", timeout),
                ("failures_to_open", failures_to_open),
                ("probe_interval", probe_interval),
                ("reserve", reserve),
            )
            if value is not None
        }
        cluster = url.startswith(("redis+cluster://", "rediss+cluster://"))
        store = ClusterStore if cluster else RedisStore
        return store(url, instances=instances, on_store_failure=on_store_failure, **options)
    raise ConfigError(f"limit store URL {shown_url(url)!r}: use memory://, {STORE_URLS}")
