"""Redis killed under load: decisions keep coming without an exception, the store
reports ``degraded``, and when Redis is back (empty) it closes the breaker by itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import redis

from tests.services import RedisServer, redis_server
from tollhouse.limits import BucketCheck, PoolCheck
from tollhouse.limits.redis import RedisStore
from tollhouse.limits.resilient import Fallback

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


#: 10 per 10 s window; with two instances a local window is 5 on each.
SHARED = (BucketCheck("{acme:SANDBOX}:b:shared", "shared", 10, 10.0, "fixed_window", 1),)
#: A moment in the window [1000, 1010) (the stores decide at the caller's clock).
AT = 1001.0


def test_a_local_window_is_never_given_back() -> None:
    """Redis never counted a local window's unspent units: giving them back would free
    units nobody took."""
    fallback = Fallback(instances=2)
    for _ in range(2):
        assert fallback.decide(SHARED, (), AT).allowed  # from a local window of 5
    assert fallback.held(SHARED[0], AT) == 3
    assert fallback.give_back(SHARED[0], AT) == 0
    assert fallback.held(SHARED[0], AT) == 0


def _count(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        raw = client.get(SHARED[0].key)
    assert raw is not None
    return int(raw.split(b":")[1])


def test_instances_coming_back_one_by_one_never_admit_past_the_limit() -> None:
    """Both instances are cut off as the window begins: each admits its local window of
    5. The first back writes its 5 and presumes the other's 5 (which Redis cannot know
    of yet), so it admits nothing more; once the other is back and has written back its
    true count (2 here), the window goes on from 7."""

    async def cut_off(url: str, units: int, probe: float) -> RedisStore:
        store = RedisStore(
            url, instances=2, caller_clock=True, failures_to_open=1, probe_interval=probe
        )
        for _ in range(units):
            assert (await store.decide(SHARED, (), AT)).allowed
        assert store.degraded
        return store

    async def main(redis_server_: RedisServer) -> None:
        first = await cut_off(redis_server_.url, 5, 0.05)
        assert not (await first.decide(SHARED, (), AT)).allowed  # its window is spent
        second = await cut_off(redis_server_.url, 2, 0.05)
        # The other comes back only when told: its probing is held off meanwhile.
        prober = second._prober
        assert prober is not None
        prober.cancel()
        try:
            await asyncio.to_thread(redis_server_.start)
            await wait_for(lambda: not first.degraded)
            await first.peek(SHARED, (), AT)  # written back before anything else
            assert _count(redis_server_.url) == 10  # its 5, and 5 presumed for the other
            assert not (await first.decide(SHARED, (), AT + 1)).allowed
            second._prober = asyncio.ensure_future(second._probe())
            await wait_for(lambda: not second.degraded)
            await second.peek(SHARED, (), AT)
            assert _count(redis_server_.url) == 7  # the presumed 5 replaced by its 2
            admitted = [(await first.decide(SHARED, (), AT + 2)).allowed for _ in range(5)]
            assert admitted == [True, True, True, False, False]
        finally:
            await first.aclose()
            await second.aclose()

    with redis_server() as server:
        server.kill()  # away before the window begins
        asyncio.run(main(server))
