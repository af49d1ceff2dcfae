"""The Lua scripts and the memory store agree: the same random call sequences, replayed
on both with the same explicit clock, get the same answers (one maths:
:mod:`tollhouse.limits.maths`)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.services import RedisServer
from tollhouse.limits import BucketCheck, Lease, MemoryStore, PoolCheck, Verdict
from tollhouse.limits.redis import RedisStore

pytestmark = pytest.mark.redis

START = 1_800_000_000.0
TOLERANCE = 1e-6


@pytest.fixture
def redis_url(redis_service: RedisServer) -> str:
    """The session's redis-server, emptied for this test (each example uses fresh keys)."""
    with redis.Redis.from_url(redis_service.url) as client:
        client.flushall()
    return redis_service.url


def same(a: Verdict, b: Verdict) -> None:
    """Every field the gateway reads, floats within ``TOLERANCE``."""
    assert (a.allowed, a.denied_by, a.pool_denied) == (b.allowed, b.denied_by, b.pool_denied)
    assert a.retry_after == pytest.approx(b.retry_after, abs=TOLERANCE)
    assert len(a.leases) == len(b.leases)
    assert len(a.outcomes) == len(b.outcomes)
    for x, y in zip(a.outcomes, b.outcomes, strict=True):
        assert (x.allowed, x.remaining) == (y.allowed, y.remaining)
        assert x.reset_at == pytest.approx(y.reset_at, abs=TOLERANCE)
        assert x.retry_after == pytest.approx(y.retry_after, abs=TOLERANCE)


def replay(url: str, steps: Any) -> None:
    """Run ``steps(memory, redis)`` (a coroutine function) on a fresh pair of stores."""

    async def main() -> None:
        memory = MemoryStore()
        shared = RedisStore(url, caller_clock=True, timeout=5.0, failures_to_open=1)
        try:
            await steps(memory, shared)
            assert not shared.degraded, "the Redis store fell back to local limits"
        finally:
            await shared.aclose()

    asyncio.run(main())


windows = st.sampled_from([0.1, 0.3, 1.0, 2.0, 7.0, 60.0, 3600.0])
gaps = st.one_of(st.just(0.0), st.floats(0, 0.2), st.floats(0, 5.0))
bucket_ops = st.lists(
    st.tuples(
        gaps,
        st.integers(1, 3),  # cost
        st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True),  # which buckets
        st.booleans(),  # peek afterwards
    ),
    min_size=1,
    max_size=60,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    ops=bucket_ops,
    limits=st.tuples(st.integers(1, 10), st.integers(1, 10), st.integers(1, 50)),
    wins=st.tuples(windows, windows, windows),
    offset=st.floats(0, 10_000),
)
def test_buckets_agree_with_the_memory_store(
    redis_url: str,
    ops: list[tuple[float, int, list[int], bool]],
    limits: tuple[int, int, int],
    wins: tuple[float, float, float],
    offset: float,
) -> None:
    tag = f"{{t{uuid.uuid4().hex}:SANDBOX}}"
    algorithms = ("fixed_window", "gcra", "fixed_window")

    def check(i: int, cost: int) -> BucketCheck:
        return BucketCheck(f"{tag}:b:{i}", f"b{i}", limits[i], wins[i], algorithms[i], cost)

    async def steps(memory: MemoryStore, shared: RedisStore) -> None:
        now = START + offset
        for gap, cost, which, peek in ops:
            now += gap
            checks = tuple(check(i, cost) for i in which)
            same(memory.decide_nowait(checks, (), now), await shared.decide(checks, (), now))
            if peek:
                everything = tuple(check(i, 1) for i in range(3))
                expected, _ = await memory.peek(everything, (), now)
                got, _ = await shared.peek(everything, (), now)
                for x, y in zip(expected, got, strict=True):
                    assert (x.used, x.remaining, x.touched) == (y.used, y.remaining, y.touched)
                    assert x.reset_at == pytest.approx(y.reset_at, abs=TOLERANCE)

    replay(redis_url, steps)


pool_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("take"),
            st.floats(0, 0.3),
            st.lists(st.integers(0, 1), min_size=1, max_size=2, unique=True),  # pools
            st.booleans(),  # with a bucket
        ),
        st.tuples(st.just("release"), st.floats(0, 0.3), st.integers(0, 50), st.booleans()),
    ),
    min_size=1,
    max_size=30,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    ops=pool_ops,
    limits=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 6)),
    leases=st.tuples(st.sampled_from([0.5, 1.0, 2.5]), st.sampled_from([0.5, 1.0, 2.5])),
)
def test_pools_agree_with_the_memory_store(
    redis_url: str,
    ops: list[tuple[str, float, Any, bool]],
    limits: tuple[int, int, int],
    leases: tuple[float, float],
) -> None:
    """Slots taken, refused, released and expired, with the retry estimate from the
    average hold time. (Under 10 s of clock in all: the memory store forgets the hold
    times of idle pools when it sweeps, every 10 s.)"""
    tag = f"{{t{uuid.uuid4().hex}:SANDBOX}}"
    pools = tuple(PoolCheck(f"{tag}:p:{j}", f"p{j}", limits[j], leases[j]) for j in range(2))
    b = BucketCheck(f"{tag}:b:0", "b", limits[2], 1.0, "fixed_window", 1)

    async def steps(memory: MemoryStore, shared: RedisStore) -> None:
        now = START
        held: list[tuple[Lease, Lease]] = []
        for kind, gap, arg, flag in ops:
            now += gap
            if kind == "release":
                if held:
                    mine, theirs = held.pop(arg % len(held))
                    await memory.release(mine, now)
                    await shared.release(theirs, now)
                continue
            wanted = tuple(pools[j] for j in arg)
            buckets = (b,) if flag else ()
            expected = memory.decide_nowait(buckets, wanted, now)
            got = await shared.decide(buckets, wanted, now)
            same(expected, got)
            held += zip(expected.leases, got.leases, strict=True)
        mine_stats = await memory.peek((), pools, now)
        their_stats = await shared.peek((), pools, now)
        for x, y in zip(mine_stats[1], their_stats[1], strict=True):
            assert x.active == y.active
            assert x.retry_after == pytest.approx(y.retry_after, abs=TOLERANCE)

    replay(redis_url, steps)
