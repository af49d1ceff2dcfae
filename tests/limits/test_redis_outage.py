"""Redis killed under load: decisions keep coming without an exception, the store
reports ``degraded``, and when Redis is back (empty) it closes the breaker by itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import redis

from tests.services import RedisServer
from tollhouse.limits import BucketCheck, PoolCheck
from tollhouse.limits.redis import RedisStore

pytestmark = pytest.mark.redis

TASKS = 64
CHECKS = (BucketCheck("{acme:SANDBOX}:b:busy", "busy", 1_000_000, 60.0, "fixed_window", 1),)
POOLED = (BucketCheck("{acme:SANDBOX}:b:pooled", "pooled", 1_000_000, 60.0, "gcra", 1),)
POOL = (PoolCheck("{acme:SANDBOX}:p:inflight", "inflight", 1000, 30.0),)


async def wait_for(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    """Poll until ``condition`` holds; fail after ``seconds`` (a deadline, not a timing)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {seconds} s")
        await asyncio.sleep(0.02)


def test_redis_killed_under_load(redis_service: RedisServer) -> None:
    with redis.Redis.from_url(redis_service.url) as client:
        client.flushall()
    decided = 0
    local = 0

    async def main() -> None:
        nonlocal decided, local
        store = RedisStore(redis_service.url, instances=2, probe_interval=0.1)
        stop = asyncio.Event()

        async def caller(i: int) -> None:
            # As the gateway calls: decide_nowait first, then await decide.
            nonlocal decided, local
            pooled = i % 4 == 0
            buckets, pools = (POOLED, POOL) if pooled else (CHECKS, ())
            while not stop.is_set():
                now = time.time()
                verdict = store.decide_nowait(buckets, pools, now)
                if verdict is None:
                    verdict = await store.decide(buckets, pools, now)
                else:
                    local += 1
                assert verdict.allowed
                decided += 1
                for lease in verdict.leases:
                    await store.release(lease, time.time())
                await asyncio.sleep(0.001)

        callers = [asyncio.ensure_future(caller(i)) for i in range(TASKS)]
        try:
            await wait_for(lambda: decided > 500)
            assert not store.degraded and local == 0

            await asyncio.to_thread(redis_service.kill)
            await wait_for(lambda: store.degraded)
            before = decided
            await wait_for(lambda: decided > before + 500)  # local decisions keep coming
            assert store.degraded

            await asyncio.to_thread(redis_service.start)
            await wait_for(lambda: not store.degraded)
            before_local, before = local, decided
            await wait_for(lambda: decided > before + 500)
            assert local == before_local  # shared again: no more local answers
            assert not any(task.done() for task in callers)  # no caller raised
        finally:
            stop.set()
            await asyncio.gather(*callers)
            await store.aclose()

    try:
        asyncio.run(main())
    finally:
        if redis_service.proc is None:
            redis_service.start()  # leave the session's Redis as it was found
    with redis.Redis.from_url(redis_service.url) as client:
        # Redis came back empty; the counters started over in it.
        assert int(client.get(CHECKS[0].key).split(b":")[1]) > 0  # type: ignore[union-attr]
