"""The gateway's cache of built checks per route match and caller."""

from __future__ import annotations

import pytest

from tollhouse.http import checks as checks_module
from tollhouse.http.checks import CheckCache
from tollhouse.keys.model import Identity
from tollhouse.policy.load import parse_policy
from tollhouse.policy.match import Router
from tollhouse.policy.model import Bucket, Pool

POLICY = """
[[buckets]]
name = "per_key"
limit = 10
window = "1m"
routes = ["GET /v1/*"]
scope = "key"

[[buckets]]
name = "per_ip"
limit = 10
window = "1m"
routes = ["GET /open/*"]
scope = "ip"
"""

SCOPE = {"type": "http", "client": ("198.51.100.7", 4000)}


def limit_of(bucket: object, identity: Identity) -> int:
    return 10


def test_checks_are_built_once_per_caller_and_route() -> None:
    router = Router(parse_policy(POLICY, "test"))
    match = router.match("GET", "/v1/things")
    cache = CheckCache()
    acme = Identity("key_1", "acme", "PRODUCTION", "backend")

    first = cache.get(match, acme, SCOPE, limit_of)

    assert cache.get(match, acme, SCOPE, limit_of) is first
    tenant = Identity("key_1", "acme", "PRODUCTION", "backend", tenant="t-1")
    assert cache.get(match, tenant, SCOPE, limit_of) is not first
    cache.clear()
    assert cache.get(match, acme, SCOPE, limit_of) is not first


def test_ip_scoped_checks_are_built_per_request() -> None:
    match = Router(parse_policy(POLICY, "test")).match("GET", "/open/x")
    cache = CheckCache()
    acme = Identity("key_1", "acme", "PRODUCTION", "backend")

    assert cache.get(match, acme, SCOPE, limit_of) is not cache.get(match, acme, SCOPE, limit_of)


def test_a_flood_of_callers_and_routes_keeps_the_cache_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Distinct callers fill one route's checks only up to their bound, and distinct
    route matches only up to theirs (both lowered here)."""
    monkeypatch.setattr(checks_module, "CHECKS_PER_MATCH", 4)
    monkeypatch.setattr(checks_module, "MATCHES", 3)
    router = Router(parse_policy(POLICY, "test"))
    cache = CheckCache()
    most_matches = most_callers = 0
    for i in range(20):
        match = router.match("GET", f"/v1/things/{i % 6}")
        for k in range(10):
            caller = Identity(f"key_{k}", "acme", "PRODUCTION", "backend")
            built = cache.get(match, caller, SCOPE, limit_of)
            assert cache.get(match, caller, SCOPE, limit_of) is built
            most_matches = max(most_matches, len(cache._by_match))
            most_callers = max(most_callers, *map(len, cache._by_match.values()))
    assert (most_matches, most_callers) == (3, 4)


def test_a_pool_check_carries_the_callers_limit_until_the_cache_is_cleared() -> None:
    """A pool's limit comes from ``limit_of`` (overrides), as a bucket's does; it is built
    into the cached checks, so a change applies once the cache is emptied."""
    policy = parse_policy(
        POLICY + '\n[[pools]]\nname = "inflight"\nlimit = 4\nroutes = ["GET /v1/*"]\n', "test"
    )
    match = Router(policy).match("GET", "/v1/things")
    cache = CheckCache()
    acme = Identity("key_1", "acme", "PRODUCTION", "backend")
    limits = {"per_key": 10, "inflight": 6}

    def overridden(limited: Bucket | Pool, identity: Identity) -> int:
        return limits[limited.name]

    [pool] = cache.get(match, acme, SCOPE, overridden).pools
    assert (pool.name, pool.limit) == ("inflight", 6)
    limits["inflight"] = 1
    assert cache.get(match, acme, SCOPE, overridden).pools[0].limit == 6  # cached
    cache.clear()
    assert cache.get(match, acme, SCOPE, overridden).pools[0].limit == 1
