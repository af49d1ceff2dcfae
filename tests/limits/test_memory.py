"""The memory store: all-or-nothing decisions, pools and leases, bounded memory."""

from __future__ import annotations

import asyncio
import threading

from hypothesis import given
from hypothesis import strategies as st

from tollhouse.limits import BucketCheck, MemoryStore, PoolCheck, open_store
from tollhouse.limits.maths import fixed_window, gcra
from tollhouse.limits.memory import SWEEP_INTERVAL

NOW = 1_800_000_000.0


def bucket(
    key: str, limit: int, window: float = 60.0, algorithm: str = "fixed_window", cost: int = 1
) -> BucketCheck:
    return BucketCheck(key, key, limit, window, algorithm, cost)


def test_open_store_memory_by_default() -> None:
    assert isinstance(open_store(""), MemoryStore)
    assert isinstance(open_store("memory://"), MemoryStore)


def test_all_buckets_consumed_together_and_a_rejection_costs_nothing() -> None:
    store = MemoryStore()
    narrow, wide = bucket("narrow", 2), bucket("wide", 10)
    checks = (narrow, wide)
    for _ in range(2):
        assert store.decide_sync(checks, (), NOW).allowed
    denied = store.decide_sync(checks, (), NOW)
    assert not denied.allowed
    assert denied.denied_by == "narrow"
    assert denied.retry_after > 0
    stats, _ = asyncio.run(store.peek(checks, (), NOW))
    assert [s.used for s in stats] == [2, 2]  # wide was not charged for the rejected call


def test_cost_per_request() -> None:
    store = MemoryStore()
    c = bucket("c", 5, cost=2)
    results = [store.decide_sync((c,), (), NOW).allowed for _ in range(4)]
    assert results == [True, True, False, False]


def test_pool_slots_taken_and_released() -> None:
    store = MemoryStore()
    pool = PoolCheck("p", "p", 2, 30.0)
    v1 = store.decide_sync((), (pool,), NOW)
    v2 = store.decide_sync((), (pool,), NOW)
    v3 = store.decide_sync((), (pool,), NOW)
    assert (v1.allowed, v2.allowed, v3.allowed) == (True, True, False)
    assert v3.pool_denied and v3.denied_by == "p" and v3.retry_after >= 1
    asyncio.run(store.release(v1.leases[0], NOW + 1))
    asyncio.run(store.release(v1.leases[0], NOW + 1))  # twice is harmless
    assert store.decide_sync((), (pool,), NOW + 1).allowed
    assert not store.decide_sync((), (pool,), NOW + 1).allowed


def test_pool_denial_consumes_no_bucket() -> None:
    store = MemoryStore()
    b, pool = bucket("b", 10), PoolCheck("p", "p", 1, 30.0)
    assert store.decide_sync((b,), (pool,), NOW).allowed
    assert not store.decide_sync((b,), (pool,), NOW).allowed
    stats, pools = asyncio.run(store.peek((b,), (pool,), NOW))
    assert stats[0].used == 1
    assert pools[0].active == 1 and pools[0].retry_after >= 1


def test_leases_expire_when_the_holder_vanishes() -> None:
    store = MemoryStore()
    pool = PoolCheck("p", "p", 1, 30.0)
    assert store.decide_sync((), (pool,), NOW).allowed  # never released
    assert not store.decide_sync((), (pool,), NOW + 29.9).allowed
    assert store.decide_sync((), (pool,), NOW + 30.0).allowed


def test_exact_admission_from_many_threads() -> None:
    store = MemoryStore()
    c = bucket("t", 5, window=3600)
    admitted = []
    barrier = threading.Barrier(100)

    def worker() -> None:
        barrier.wait()
        admitted.append(store.decide_sync((c,), (), NOW).allowed)

    threads = [threading.Thread(target=worker) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert admitted.count(True) == 5


def test_expired_counters_are_swept() -> None:
    store = MemoryStore()
    for i in range(1000):
        store.decide_sync((bucket(f"k{i}", 5, window=1),), (), NOW)
    assert len(store) == 1000
    store.decide_sync((bucket("later", 5, window=1),), (), NOW + SWEEP_INTERVAL)
    assert len(store) == 1


ops = st.lists(
    st.tuples(st.floats(0, 3.0), st.integers(1, 3), st.booleans()), min_size=1, max_size=80
)


@given(ops=ops, limit=st.integers(1, 10), window=st.sampled_from([1.0, 5.0]))
def test_store_agrees_with_the_pure_maths(
    ops: list[tuple[float, int, bool]], limit: int, window: float
) -> None:
    """The store is the maths plus all-or-nothing: replay the same calls on the functions."""
    store = MemoryStore()
    fw = bucket("fw", limit, window)
    gc = bucket("gc", limit, window, "gcra")
    fw_state = None
    gc_state = None
    now = NOW
    for gap, cost, both in ops:
        now += gap
        a = BucketCheck("fw", "fw", limit, window, "fixed_window", cost)
        b = BucketCheck("gc", "gc", limit, window, "gcra", cost)
        checks = (a, b) if both else (a,)
        verdict = store.decide_sync(checks, (), now)
        fo = fixed_window(fw_state, now, limit, window, cost)
        go = gcra(gc_state, now, limit, window, cost) if both else None
        expected = fo.allowed and (go is None or go.allowed)
        assert verdict.allowed == expected
        # Compare everything but a denied call's state (expired states may have been swept).
        assert verdict.outcomes[0][:1] + verdict.outcomes[0][2:] == fo[:1] + fo[2:]
        if fo.allowed:
            assert verdict.outcomes[0].state == fo.state
        if go is not None:
            assert verdict.outcomes[1][:1] + verdict.outcomes[1][2:] == go[:1] + go[2:]
        if expected:
            fw_state = fo.state  # type: ignore[assignment]
            if go is not None:
                gc_state = go.state  # type: ignore[assignment]
    del fw, gc


@given(
    ops=ops,
    limits=st.tuples(st.integers(1, 10), st.integers(1, 10)),
    windows=st.tuples(st.sampled_from([1.0, 5.0]), st.sampled_from([1.0, 2.0, 60.0])),
)
def test_fixed_windows_together_agree_with_the_pure_maths(
    ops: list[tuple[float, int, bool]], limits: tuple[int, int], windows: tuple[float, float]
) -> None:
    """Fixed-window buckets alone (the store's fast path): each one's outcome is the
    maths', and a call one of them denies consumes neither."""
    store = MemoryStore()
    states: list[tuple[float, int] | None] = [None, None]
    now = NOW
    for gap, cost, both in ops:
        now += gap
        checks = tuple(
            BucketCheck(f"k{i}", f"b{i}", limits[i], windows[i], "fixed_window", cost)
            for i in range(2 if both else 1)
        )
        verdict = store.decide_sync(checks, (), now)
        expected = [
            fixed_window(states[i], now, limits[i], windows[i], cost) for i in range(len(checks))
        ]
        assert verdict.allowed == all(o.allowed for o in expected)
        for got, want in zip(verdict.outcomes, expected, strict=True):
            assert got[:1] + got[2:] == want[:1] + want[2:]
        if verdict.allowed:
            for i, o in enumerate(expected):
                states[i] = o.state  # type: ignore[assignment]
        else:
            denied = next(o for o, w in zip(checks, expected, strict=True) if not w.allowed)
            assert verdict.denied_by == denied.name
