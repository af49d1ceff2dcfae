"""What one caller's request on one route asks of the limit store, cached per caller and
route; and the rate-limit status, read without consuming anything.

A :class:`Checks` is built once per (route match, key, tenant) and reused: its bucket and
pool checks carry the caller's effective limits (overrides > policy) and the constant
parts of its headers. :class:`CheckCache` holds them; it is emptied when limits change
(an override was set) or when it fills.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from tollhouse.errors import ApiError, ConcurrencyLimited, RateLimited
from tollhouse.http.asgi import Header, Scope
from tollhouse.http.counters import GatewayCounters
from tollhouse.keys.model import Identity
from tollhouse.limits.headers import limit_headers, policy_header, retry_after_header
from tollhouse.limits.maths import Outcome
from tollhouse.limits.naming import bucket_key, ip_bucket_key, pool_key
from tollhouse.limits.store import BucketCheck, LimitStore, PoolCheck, Verdict
from tollhouse.memo import remember
from tollhouse.policy.match import RouteMatch
from tollhouse.policy.model import Bucket, Policy, Pool

__all__ = [
    "CHECKS_PER_MATCH",
    "CheckCache",
    "Checks",
    "bucket_check",
    "denial",
    "keyless_checks",
    "pool_check",
    "status_body",
]

#: Cached checks per route match (callers × tenants); that match's are emptied when full.
CHECKS_PER_MATCH = 1024
#: Route matches with cached checks; all are dropped when more are seen.
MATCHES = 8192

#: A bucket's or a pool's effective limit for a caller: ``(bucket or pool, identity) →
#: limit``.
LimitOf = Callable[[Bucket | Pool, Identity], int]


class Checks:
    """What one caller's request on one route asks of the limit store, and the constant
    parts of its headers (built once per caller and route, reused)."""

    __slots__ = ("buckets", "decided", "limits", "names", "policy", "pools", "shadow", "sizes")

    def __init__(
        self,
        buckets: tuple[BucketCheck, ...],
        pools: tuple[PoolCheck, ...],
        shadow: tuple[BucketCheck, ...] = (),
    ) -> None:
        self.buckets = buckets
        self.pools = pools
        self.shadow = shadow
        self.policy = policy_header(buckets) if buckets else None
        self.names = tuple(f'"{c.name}";r=' for c in buckets)
        #: Every bucket and pool an admitted request passed (the metrics' counter key).
        self.decided = tuple(c.name for c in buckets) + tuple(p.name for p in pools)
        self.limits = tuple(str(c.limit).encode() for c in buckets)
        self.sizes = tuple(c.limit for c in buckets)

    def headers(self, outcomes: list[Outcome], now: float) -> list[Header]:
        """All rate-limit headers for one decided request (without ``Retry-After``)."""
        assert self.policy is not None
        return limit_headers(outcomes, self.names, self.limits, self.sizes, self.policy, now)


def bucket_check(b: Bucket, identity: Identity, client_ip: str | None, limit: int) -> BucketCheck:
    """The store check of bucket ``b`` for a caller."""
    return BucketCheck(
        bucket_key(b, identity, client_ip), b.name, limit, b.window, b.algorithm, b.cost
    )


def keyless_checks(match: RouteMatch, client_ip: str | None) -> Checks:
    """The checks of a request answered without a key: its route's ``ip``-scoped buckets
    (no org to count the others for), at their policy limits."""
    return Checks(
        tuple(
            BucketCheck(ip_bucket_key(b, client_ip), b.name, b.limit, b.window, b.algorithm, b.cost)
            for b in match.buckets
            if b.scope == "ip" and not b.shadow
        ),
        (),
    )


def pool_check(p: Pool, identity: Identity, limit: int) -> PoolCheck:
    """The store check of pool ``p`` for a caller (``limit``: its effective limit)."""
    return PoolCheck(pool_key(p, identity), p.name, limit, p.lease)


class CheckCache:
    """Built :class:`Checks` per route match and caller (key, tenant); IP-scoped routes
    are built per request (their keys name the client address)."""

    def __init__(self) -> None:
        self._by_match: dict[RouteMatch, dict[tuple[str, str | None], Checks]] = {}

    def clear(self) -> None:
        """Drop every cached check (limits changed): they are rebuilt on next use."""
        self._by_match = {}

    def get(self, match: RouteMatch, identity: Identity, scope: Scope, limit_of: LimitOf) -> Checks:
        """The checks of ``identity``'s request on ``match`` (built on first use, with
        ``limit_of`` giving each bucket's and pool's effective limit for the caller)."""
        ip_scoped = match.ip_scoped
        key = (identity.key_id, identity.tenant)
        per_match = None
        if not ip_scoped:
            per_match = self._by_match.get(match)
            if per_match is not None:
                found = per_match.get(key)
                if found is not None:
                    return found
        client = scope.get("client")
        ip = client[0] if client else None
        built = Checks(
            tuple(
                bucket_check(b, identity, ip, limit_of(b, identity))
                for b in match.buckets
                if not b.shadow
            ),
            tuple(pool_check(p, identity, limit_of(p, identity)) for p in match.pools),
            tuple(
                bucket_check(b, identity, ip, limit_of(b, identity))
                for b in match.buckets
                if b.shadow
            ),
        )
        if not ip_scoped:
            if per_match is None:
                per_match = remember(self._by_match, MATCHES, match, {})
            remember(per_match, CHECKS_PER_MATCH, key, built)
        return built


def denial(verdict: Verdict, headers: list[Header]) -> ApiError:
    """The 429 of a request the store refused (``headers``: its rate-limit headers, to
    which ``Retry-After`` is added)."""
    headers.append(retry_after_header(verdict.retry_after))
    extra = {k.decode(): v.decode() for k, v in headers}
    if verdict.pool_denied:
        return ConcurrencyLimited(
            f"Too many requests in flight ({verdict.denied_by}); retry after "
            f"{extra['retry-after']} s.",
            headers=extra,
        )
    return RateLimited(
        "Rate limit exceeded. Please retry after the specified delay.", headers=extra
    )


def iso(ts: float) -> str:
    """Epoch seconds → ISO 8601 UTC with ``Z`` and milliseconds."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def status_body(
    policy: Policy,
    limits: LimitStore,
    limit_of: LimitOf,
    counters: GatewayCounters,
    identity: Identity,
    scope: Scope,
    now: float,
) -> bytes:
    """The partner rate-limit status and scoring API shapes' status (docs/api-shapes.md),
    read without consuming anything."""
    client = scope.get("client")
    ip = client[0] if client else None
    bchecks = tuple(bucket_check(b, identity, ip, limit_of(b, identity)) for b in policy.buckets)
    pchecks = tuple(pool_check(p, identity, limit_of(p, identity)) for p in policy.pools)
    bstats, pstats = await limits.peek(bchecks, pchecks, now)
    stamp = iso(now)
    categories = []
    buckets: dict[str, Any] = {}
    for b, c, s in zip(policy.buckets, bchecks, bstats, strict=True):
        reset = int(-(-s.reset_at // 1))
        category: dict[str, Any] = {
            "category": b.name,
            "displayName": b.display_name,
            "endpoints": list(b.endpoints),
            "limit": c.limit,
            "used": s.used,
            "remaining": s.remaining,
            "resetAt": reset if s.touched else 0,
            "windowSeconds": b.window_seconds,
        }
        bucket: dict[str, Any] = {
            "limit": c.limit,
            "remaining": s.remaining,
            "resetAt": reset,
            "resetInSeconds": max(0, reset - int(now)),
        }
        if b.shadow:
            # Additive fields: a shadow bucket denies nothing, it counts.
            denied = counters.shadow_denials.get((identity.org_scope, b.name), 0)
            for section in (category, bucket):
                section["shadow"] = True
                section["shadowDenied"] = denied
        categories.append(category)
        buckets[b.name] = bucket
    body: dict[str, Any] = {
        "partnerId": identity.org,
        "environment": identity.environment,
        "generatedAt": stamp,
        "degraded": bool(limits.degraded),
        "buckets": buckets,
    }
    for p, pc, s2 in zip(policy.pools, pchecks, pstats, strict=True):
        body[p.name] = {
            "limit": pc.limit,
            "active": s2.active,
            "retryAfterSeconds": int(-(-s2.retry_after // 1)),
        }
    body["categories"] = categories
    body["timestamp"] = stamp
    return orjson.dumps(body)
