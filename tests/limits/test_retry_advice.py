"""Retry advice a client can follow: waiting exactly ``Retry-After`` (or until
``X-RateLimit-Reset``) gets through, for a pair of buckets and for an in-flight pool.

The gateway runs with an injected clock and the limit store decides at that clock
(memory, and Redis with ``caller_clock=True``): time moves only when the test says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.services import RedisServer
from tollhouse.http.gateway import Gateway
from tollhouse.keys.cache import KeyCache
from tollhouse.keys.store import KeyStore
from tollhouse.limits import LimitStore, MemoryStore
from tollhouse.policy.load import parse_policy
from tollhouse.schema import create_schema
from tollhouse.storage.engine import make_engine

#: Aligned with minutes: the per-minute window runs from NOW to NOW + 60.
NOW = 1_800_000_000.0

POLICY = """
[[buckets]]
name = "per_second"
display_name = "Per second"
limit = 1
window = "1s"
routes = ["GET /v1/things/{thingId}"]

[[buckets]]
name = "per_minute"
display_name = "Per minute"
limit = 2
window = "60s"
routes = ["GET /v1/things/{thingId}"]

[[pools]]
name = "slow_inflight"
limit = 1
lease = "60s"
routes = ["GET /slow/{n}"]
"""


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def make_store(request: pytest.FixtureRequest) -> Callable[[], LimitStore]:
    if request.param == "memory":
        return MemoryStore
    from tollhouse.limits.redis import RedisStore

    service: RedisServer = request.getfixturevalue("redis_service")
    with redis.Redis.from_url(service.url) as client:
        client.flushall()
    return lambda: RedisStore(service.url, caller_clock=True, timeout=5.0, failures_to_open=1)


Get = Callable[[str], Awaitable[httpx.Response]]


@asynccontextmanager
async def gateway(
    tmp_path: Path, store: LimitStore, clock: Clock, gates: dict[str, asyncio.Event]
) -> AsyncIterator[Get]:
    """The gateway in front of an app whose ``/slow/{n}`` answers once ``gates[n]`` is set."""

    async def thing(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["thingId"]})

    async def slow(request: Request) -> JSONResponse:
        n = request.path_params["n"]
        gates.setdefault("entered:" + n, asyncio.Event()).set()
        await gates.setdefault(n, asyncio.Event()).wait()
        return JSONResponse({"n": request.path_params["n"]})

    engine = make_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    await create_schema(engine)
    _, secret = await KeyStore(engine).create("acme", "live", "root")
    app = Starlette(routes=[Route("/v1/things/{thingId}", thing), Route("/slow/{n}", slow)])
    gw = Gateway(
        app,
        policy=parse_policy(POLICY, "t"),
        limits=store,
        keys=KeyCache(KeyStore(engine)),
        clock=clock,
    )
    transport = httpx.ASGITransport(app=gw)  # type: ignore[arg-type]
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

            async def get(path: str) -> httpx.Response:
                return await client.get(path, headers={"X-API-Key": secret})

            yield get
    finally:
        await store.aclose()
        await engine.dispose()


def moment(r: httpx.Response, now: float) -> tuple[int, int, set[int]]:
    """``(Retry-After, X-RateLimit-Reset, {t of every RateLimit item with r=0})``."""
    items = [item.strip() for item in r.headers["ratelimit"].split(",")]
    out = {int(i.split(";t=")[1]) for i in items if ";r=0;" in i}
    return int(r.headers["retry-after"]), int(r.headers["x-ratelimit-reset"]), out


def test_two_buckets_out_all_advice_names_the_later_one(
    tmp_path: Path, make_store: Callable[[], LimitStore]
) -> None:
    async def main() -> None:
        clock = Clock(NOW + 30.5)
        async with gateway(tmp_path, make_store(), clock, {}) as get:
            assert (await get("/v1/things/a")).status_code == 200  # per-second out
            clock.now += 1.0
            assert (await get("/v1/things/b")).status_code == 200  # both out now
            denied = await get("/v1/things/c")
            assert denied.status_code == 429
            retry_after, reset, ts = moment(denied, clock.now)
            # The per-second bucket frees up at NOW + 32, the per-minute one at NOW + 60:
            # everything says NOW + 60 (28.5 s from now, in whole seconds).
            assert retry_after == 29
            assert reset == NOW + 60
            assert ts == {29}
            assert denied.headers["x-ratelimit-limit"] == "2"  # the per-minute bucket
            assert denied.headers["x-ratelimit-remaining"] == "0"
            # A client that follows X-RateLimit-Reset gets through …
            clock.now = reset
            assert (await get("/v1/things/d")).status_code == 200

    asyncio.run(main())


def test_waiting_exactly_retry_after_gets_through(
    tmp_path: Path, make_store: Callable[[], LimitStore]
) -> None:
    async def main() -> None:
        clock = Clock(NOW + 30.5)
        async with gateway(tmp_path, make_store(), clock, {}) as get:
            assert (await get("/v1/things/a")).status_code == 200
            clock.now += 1.0
            assert (await get("/v1/things/b")).status_code == 200
            denied = await get("/v1/things/c")
            assert denied.status_code == 429
            clock.now += int(denied.headers["retry-after"])  # … and so does one that
            assert (await get("/v1/things/d")).status_code == 200  # waits Retry-After

    asyncio.run(main())


def test_a_pool_429_describes_the_pool_and_its_retry_after_gets_through(
    tmp_path: Path, make_store: Callable[[], LimitStore]
) -> None:
    async def main() -> None:
        clock = Clock(NOW)
        gates: dict[str, asyncio.Event] = {}
        async with gateway(tmp_path, make_store(), clock, gates) as get:

            async def hold(n: str) -> asyncio.Task[httpx.Response]:
                """Send ``/slow/{n}``; return once the app holds it (or it was answered)."""
                gates[n] = asyncio.Event()
                entered = gates["entered:" + n] = asyncio.Event()
                task = asyncio.ensure_future(get(f"/slow/{n}"))
                waiter = asyncio.ensure_future(entered.wait())
                await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                return task

            async def finish(n: str, task: asyncio.Task[httpx.Response]) -> None:
                gates[n].set()
                assert (await task).status_code == 200

            # One request held 10 s: the pool's observed duration.
            first = await hold("1")
            clock.now += 10
            await finish("1", first)

            # A holder began at NOW + 20; at NOW + 23 its slot is expected free in 7 s.
            clock.now = NOW + 20
            second = await hold("2")
            clock.now = NOW + 23
            denied = await get("/slow/3")
            assert denied.status_code == 429
            assert denied.json()["error"]["code"] == "CONCURRENCY_LIMITED"
            assert denied.headers["x-ratelimit-limit"] == "1"
            assert denied.headers["x-ratelimit-remaining"] == "0"
            assert denied.headers["ratelimit-policy"] == '"slow_inflight";q=1'
            assert moment(denied, clock.now) == (7, NOW + 30, {7})
            # The holder takes as long as holders do; waiting Retry-After gets through.
            clock.now += 7
            await finish("2", second)
            third = await hold("4")
            assert not third.done()  # admitted: held by the app

            # A holder past its expected end: the slot is certain to free when its lease
            # expires (NOW + 30 + 60), even if the holder never finishes.
            clock.now = NOW + 50
            late = await get("/slow/5")
            assert late.status_code == 429
            assert moment(late, clock.now) == (40, NOW + 90, {40})
            clock.now += 40
            fourth = await hold("6")
            assert not fourth.done()  # admitted: the stuck slot's lease expired
            await finish("6", fourth)
            await finish("4", third)

    asyncio.run(main())
