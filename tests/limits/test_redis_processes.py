"""Exact limits across processes: several processes, each with many concurrent tasks,
share one Redis. Admissions per window equal the limit exactly; pool slots in use never
exceed the pool's limit.

The processes are fresh interpreters, as separate server workers are (``forkserver``:
like ``spawn``, but this module is imported once in the server and the workers fork from
it, which saves a second of imports per worker). They decide on Redis's clock; the fixed
window is ~31 years long, so no window boundary can fall inside the test.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.context
import multiprocessing.synchronize
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import pytest
import redis

from tests.services import RedisServer
from tollhouse.limits import BucketCheck, PoolCheck
from tollhouse.limits.redis import RedisStore

pytestmark = pytest.mark.redis

PROCESSES = 4
TASKS = 64
#: Long enough that no epoch-aligned window ends during the test.
WINDOW = 1e9
BUCKETS = (
    BucketCheck("{acme:SANDBOX}:b:fw", "fw", 300, WINDOW, "fixed_window", 1),
    BucketCheck("{acme:SANDBOX}:b:gcra", "gcra", 150, WINDOW, "gcra", 1),
)
POOL = PoolCheck("{acme:SANDBOX}:p:inflight", "inflight", 5, 60.0)


@pytest.fixture
def redis_url(redis_service: RedisServer) -> str:
    with redis.Redis.from_url(redis_service.url) as client:
        client.flushall()
    return redis_service.url


def admit(url: str, start: multiprocessing.synchronize.Barrier, out: Any) -> None:
    """One process: TASKS tasks each try 2 requests per bucket; report admissions."""

    async def main() -> list[int]:
        # A generous timeout: this test is about the Redis path, not degraded mode.
        store = RedisStore(url, timeout=10.0, failures_to_open=1)
        try:

            async def task() -> list[bool]:
                return [
                    (await store.decide((c,), (), 0.0)).allowed for c in BUCKETS for _ in range(2)
                ]

            start.wait()
            results = await asyncio.gather(*(task() for _ in range(TASKS)))
            assert not store.degraded
            return [sum(r[i * 2] + r[i * 2 + 1] for r in results) for i in range(len(BUCKETS))]
        finally:
            await store.aclose()

    out.put(asyncio.run(main()))


def hold(
    url: str,
    start: multiprocessing.synchronize.Barrier,
    out: Any,
    active: Synchronized[int],
    peak: Synchronized[int],
) -> None:
    """One process: TASKS tasks take slots, hold them a moment, give them back."""

    async def main() -> int:
        store = RedisStore(url, timeout=10.0, failures_to_open=1)
        taken = 0
        try:

            async def task() -> int:
                mine = 0
                for _ in range(3):
                    verdict = await store.decide((), (POOL,), 0.0)
                    if not verdict.allowed:
                        await asyncio.sleep(0.002)
                        continue
                    mine += 1
                    # Counted only between admission and release: at most the slots held.
                    with active.get_lock():
                        active.value += 1
                        peak.value = max(peak.value, active.value)
                    await asyncio.sleep(0.005)
                    with active.get_lock():
                        active.value -= 1
                    await store.release(verdict.leases[0], 0.0)
                return mine

            start.wait()
            taken = sum(await asyncio.gather(*(task() for _ in range(TASKS))))
            assert not store.degraded
        finally:
            await store.aclose()
        return taken

    out.put(asyncio.run(main()))


def context() -> multiprocessing.context.ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def spawn(target: Any, *args: Any) -> list[Any]:
    ctx = context()
    start = ctx.Barrier(PROCESSES)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=target, args=(args[0], start, out, *args[1:])) for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=50) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)
    return results


def test_exact_admission_from_many_processes(redis_url: str) -> None:
    results = spawn(admit, redis_url)
    per_bucket = [sum(r[i] for r in results) for i in range(len(BUCKETS))]
    # 4 processes x 64 tasks x 2 tries = 512 tries per bucket: exactly the limit admitted.
    assert per_bucket == [c.limit for c in BUCKETS]


def test_pool_slots_never_exceed_the_limit_across_processes(redis_url: str) -> None:
    ctx = context()
    active = ctx.Value("i", 0)
    peak = ctx.Value("i", 0)
    taken = spawn(hold, redis_url, active, peak)
    assert sum(taken) >= POOL.limit  # slots were used and given back
    assert 1 <= peak.value <= POOL.limit
    assert active.value == 0
    with redis.Redis.from_url(redis_url) as client:
        assert client.zcard(POOL.key) == 0  # every slot released
