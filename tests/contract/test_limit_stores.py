"""The limit store contract, run against every backend (memory, Redis, and Redis over
TLS — one server and a cluster — as managed Redis services demand).

Every scenario passes an explicit ``now``: the Redis store is made with
``caller_clock=True`` so windows are crossed by moving the clock, never by sleeping.
The Redis store is also made with ``failures_to_open=1``: a single failed round trip
would switch it to local limits and show up as ``degraded`` at the end of the test,
instead of silently passing on the local fallback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from tests.services import RedisClusterNodes, RedisServer
from tollhouse.limits import BucketCheck, LimitStore, MemoryStore, PoolCheck

NOW = 1_800_000_000.0
ORG = "{acme:SANDBOX}"
OTHER = "{globex:SANDBOX}"

MakeStore = Callable[[], LimitStore]
Scenario = Callable[[LimitStore], Awaitable[None]]


def bucket(
    name: str,
    limit: int,
    window: float = 60.0,
    algorithm: str = "fixed_window",
    cost: int = 1,
    org: str = ORG,
) -> BucketCheck:
    return BucketCheck(f"{org}:b:{name}", name, limit, window, algorithm, cost)


def pool(name: str, limit: int, lease: float = 30.0, org: str = ORG) -> PoolCheck:
    return PoolCheck(f"{org}:p:{name}", name, limit, lease)


@pytest.fixture(
    params=[
        pytest.param("memory"),
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rediss", marks=pytest.mark.redis),
        pytest.param("rediss+cluster", marks=pytest.mark.redis),
    ],
)
def make_store(request: pytest.FixtureRequest) -> MakeStore:
    """A factory of fresh stores of one backend (a store belongs to one event loop)."""
    if request.param == "memory":
        return MemoryStore
    import redis

    from tollhouse.limits.cluster import ClusterStore
    from tollhouse.limits.redis import RedisStore

    if request.param == "rediss+cluster":
        cluster: RedisClusterNodes = request.getfixturevalue("redis_tls_cluster_service")
        assert cluster.tls is not None
        for port in {master for _, _, master in cluster.slot_map(cluster.ports[0])}:
            cluster.call(port, "FLUSHALL")
        url = cluster.url
        return lambda: ClusterStore(url, caller_clock=True, timeout=5.0, failures_to_open=1)
    service: RedisServer = request.getfixturevalue(
        "redis_tls_service" if request.param == "rediss" else "redis_service"
    )
    with redis.Redis.from_url(service.url) as client:
        client.flushdb()
    return lambda: RedisStore(service.url, caller_clock=True, timeout=5.0, failures_to_open=1)


def run(make_store: MakeStore, scenario: Scenario) -> None:
    async def main() -> None:
        store = make_store()
        try:
            await scenario(store)
            assert not store.degraded, "the store fell back to local limits"
        finally:
            await store.aclose()

    asyncio.run(main())


async def decide(
    store: LimitStore,
    buckets: tuple[BucketCheck, ...],
    pools: tuple[PoolCheck, ...] = (),
    now: float = NOW,
) -> bool:
    return (await store.decide(buckets, pools, now)).allowed


def test_all_buckets_consumed_together_and_a_rejection_costs_nothing(
    make_store: MakeStore,
) -> None:
    async def scenario(store: LimitStore) -> None:
        narrow, wide = bucket("narrow", 2), bucket("wide", 10)
        checks = (narrow, wide)
        for remaining in (1, 0):
            verdict = await store.decide(checks, (), NOW)
            assert verdict.allowed
            assert [o.remaining for o in verdict.outcomes] == [remaining, 8 + remaining]
        denied = await store.decide(checks, (), NOW + 1)
        assert not denied.allowed
        assert denied.denied_by == "narrow"
        assert not denied.pool_denied
        assert denied.retry_after == pytest.approx(59.0)
        assert len(denied.outcomes) == 2  # one per bucket, for the headers
        assert [o.allowed for o in denied.outcomes] == [False, True]
        stats, _ = await store.peek(checks, (), NOW + 1)
        assert [s.used for s in stats] == [2, 2]  # wide was not charged for the rejected call
        # The wide bucket alone still admits.
        assert await decide(store, (wide,), now=NOW + 1)

    run(make_store, scenario)


def test_cost_per_request(make_store: MakeStore) -> None:
    async def scenario(store: LimitStore) -> None:
        c = bucket("c", 5, cost=2)
        verdicts = [await store.decide((c,), (), NOW) for _ in range(4)]
        assert [v.allowed for v in verdicts] == [True, True, False, False]
        assert [v.outcomes[0].remaining for v in verdicts] == [3, 1, 1, 1]
        # A cheaper request still fits in what the dearer one could not use.
        assert await decide(store, (bucket("c", 5, cost=1),))

    run(make_store, scenario)


def test_scopes_are_independent(make_store: MakeStore) -> None:
    async def scenario(store: LimitStore) -> None:
        acme = bucket("scoring", 1)
        globex = bucket("scoring", 1, org=OTHER)
        acme_key = BucketCheck(f"{ORG}:b:scoring:k:key_1", "scoring", 1, 60.0, "fixed_window", 1)
        assert await decide(store, (acme,))
        assert not await decide(store, (acme,))
        assert await decide(store, (globex,))
        assert await decide(store, (acme_key,))
        assert not await decide(store, (acme_key,))

    run(make_store, scenario)


def test_a_changed_limit_applies_to_the_running_window(make_store: MakeStore) -> None:
    async def scenario(store: LimitStore) -> None:
        for _ in range(3):
            assert await decide(store, (bucket("b", 5),))
        assert not await decide(store, (bucket("b", 3),))
        assert await decide(store, (bucket("b", 10),))

    run(make_store, scenario)


def test_fixed_window_boundary(make_store: MakeStore) -> None:
    async def scenario(store: LimitStore) -> None:
        c = bucket("fw", 3, window=10.0)
        late = NOW + 9.75  # windows are aligned to the epoch: this one ends at NOW + 10
        for remaining in (2, 1, 0):
            verdict = await store.decide((c,), (), late)
            assert verdict.allowed
            assert verdict.outcomes[0].remaining == remaining
            assert verdict.outcomes[0].reset_at == NOW + 10
        denied = await store.decide((c,), (), late)
        assert not denied.allowed
        assert denied.outcomes[0].remaining == 0
        assert denied.outcomes[0].reset_at == NOW + 10
        assert denied.retry_after == pytest.approx(0.25)
        fresh = await store.decide((c,), (), NOW + 10)
        assert fresh.allowed
        assert fresh.outcomes[0].remaining == 2
        assert fresh.outcomes[0].reset_at == NOW + 20

    run(make_store, scenario)


def test_gcra_burst_then_smooth_refill(make_store: MakeStore) -> None:
    async def scenario(store: LimitStore) -> None:
        c = bucket("g", 5, window=10.0, algorithm="gcra")  # one unit every 2 s
        for remaining in (4, 3, 2, 1, 0):
            verdict = await store.decide((c,), (), NOW)
            assert verdict.allowed
            assert verdict.outcomes[0].remaining == remaining
        assert verdict.outcomes[0].reset_at == pytest.approx(NOW + 10)
        denied = await store.decide((c,), (), NOW + 0.5)
        assert not denied.allowed
        assert denied.retry_after == pytest.approx(1.5)
        assert await decide(store, (c,), now=NOW + 2)
        assert not await decide(store, (c,), now=NOW + 2)
        stats, _ = await store.peek((c,), (), NOW + 2)
        assert stats[0].used == 5 and stats[0].remaining == 0 and stats[0].touched

    run(make_store, scenario)


def test_pool_slots_taken_and_released(make_store: MakeStore) -> None:
    async def scenario(store: LimitStore) -> None:
        p = pool("inflight", 2)
        v1 = await store.decide((), (p,), NOW)
        v2 = await store.decide((), (p,), NOW)
        v3 = await store.decide((), (p,), NOW)
        assert (v1.allowed, v2.allowed, v3.allowed) == (True, True, False)
        assert len(v1.leases) == 1 and v1.leases[0].key == p.key
        assert v1.leases[0].token != v2.leases[0].token
        assert v3.pool_denied and v3.denied_by == "inflight" and v3.retry_after >= 1
        await store.release(v1.leases[0], NOW + 1)
        await store.release(v1.leases[0], NOW + 1)  # twice is harmless
        assert await decide(store, (), (p,), NOW + 1)
        assert not await decide(store, (), (p,), NOW + 1)

    run(make_store, scenario)


def test_pool_denial_consumes_no_bucket(make_store: MakeStore) -> None:
    async def scenario(store: LimitStore) -> None:
        b, p = bucket("b", 10), pool("p", 1)
        assert await decide(store, (b,), (p,))
        denied = await store.decide((b,), (p,), NOW)
        assert not denied.allowed and denied.pool_denied and denied.denied_by == "p"
        assert [o.allowed for o in denied.outcomes] == [True]
        stats, pools = await store.peek((b,), (p,), NOW)
        assert stats[0].used == 1
        assert pools[0].active == 1 and pools[0].retry_after >= 1

    run(make_store, scenario)


def test_bucket_denial_takes_no_slot(make_store: MakeStore) -> None:
    async def scenario(store: LimitStore) -> None:
        b, p = bucket("b", 1), pool("p", 5)
        assert await decide(store, (b,), (p,))
        denied = await store.decide((b,), (p,), NOW)
        assert not denied.allowed and not denied.pool_denied and denied.leases == ()
        _, pools = await store.peek((), (p,), NOW)
        assert pools[0].active == 1

    run(make_store, scenario)


def test_leases_expire_when_the_holder_vanishes(make_store: MakeStore) -> None:
    async def scenario(store: LimitStore) -> None:
        p = pool("p", 1, lease=30.0)
        held = await store.decide((), (p,), NOW)  # never released
        assert held.allowed
        assert not await decide(store, (), (p,), NOW + 29.9)
        _, pools = await store.peek((), (p,), NOW + 30.0)
        assert pools[0].active == 0 and pools[0].retry_after == 0
        assert await decide(store, (), (p,), NOW + 30.0)
        await store.release(held.leases[0], NOW + 31)  # expired: releasing changes nothing
        assert not await decide(store, (), (p,), NOW + 31)

    run(make_store, scenario)


def test_peek_consumes_nothing(make_store: MakeStore) -> None:
    async def scenario(store: LimitStore) -> None:
        fw, g, p = bucket("fw", 2), bucket("g", 2, algorithm="gcra"), pool("p", 1)
        stats, pools = await store.peek((fw, g), (p,), NOW)
        assert [(s.used, s.remaining, s.touched) for s in stats] == [(0, 2, False), (0, 2, False)]
        assert stats[0].reset_at == NOW + 60
        assert pools[0].active == 0 and pools[0].retry_after == 0
        for _ in range(5):
            await store.peek((fw, g), (p,), NOW)
        assert await decide(store, (fw, g), (p,))
        stats, pools = await store.peek((fw, g), (p,), NOW)
        assert [(s.used, s.remaining, s.touched) for s in stats] == [(1, 1, True), (1, 1, True)]
        assert stats[1].reset_at == pytest.approx(NOW + 30)
        assert pools[0].active == 1
        assert await decide(store, (fw, g))
        assert not await decide(store, (fw, g))

    run(make_store, scenario)


def test_nothing_to_check_is_allowed(make_store: MakeStore) -> None:
    async def scenario(store: LimitStore) -> None:
        verdict = await store.decide((), (), NOW)
        assert verdict.allowed and verdict.outcomes == [] and verdict.leases == ()
        assert await store.peek((), (), NOW) == ([], [])

    run(make_store, scenario)


def test_decide_nowait_agrees_with_decide(make_store: MakeStore) -> None:
    """``decide_nowait`` answers (memory always; Redis from its cache of denials) or
    returns None; when it answers, it says what ``decide`` would."""

    async def scenario(store: LimitStore) -> None:
        c = (bucket("hot", 2, window=10.0),)
        for _ in range(2):
            assert await decide(store, c)
        assert not await decide(store, c, now=NOW + 1)
        quick = store.decide_nowait(c, (), NOW + 2)
        if quick is not None:
            assert not quick.allowed and quick.denied_by == "hot"
            assert quick.retry_after == pytest.approx(8.0)
            assert quick.outcomes[0].reset_at == NOW + 10
        later = store.decide_nowait(c, (), NOW + 10)
        if later is not None:
            assert later.allowed

    run(make_store, scenario)
