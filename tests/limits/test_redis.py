"""The Redis limit store beyond the shared contract: scripts, keys, round trips, the
local cache of denials, and degraded mode (tests/contract holds the shared behaviour)."""

from __future__ import annotations

import asyncio
import shutil
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.services import RedisServer, free_port
from tollhouse.errors import ConfigError, StorageError
from tollhouse.limits import BucketCheck, PoolCheck, open_store
from tollhouse.limits.redis import (
    DECIDE,
    HOLD_SUFFIX,
    KEY_SLACK_MS,
    PEEK,
    RELEASE,
    SETTLE,
    RedisStore,
    _Link,
)
from tollhouse.limits.resilient import Breaker, Fallback

pytestmark = pytest.mark.redis

NOW = 1_800_000_000.0
ORG = "{acme:SANDBOX}"


def bucket(
    name: str, limit: int, window: float = 60.0, algorithm: str = "fixed_window"
) -> BucketCheck:
    return BucketCheck(f"{ORG}:b:{name}", name, limit, window, algorithm, 1)


def pool(name: str, limit: int, lease: float = 30.0) -> PoolCheck:
    return PoolCheck(f"{ORG}:p:{name}", name, limit, lease)


@pytest.fixture
def redis_url(redis_service: RedisServer) -> str:
    """The session's redis-server, emptied for this test."""
    with redis.Redis.from_url(redis_service.url) as client:
        client.flushall()
        client.script_flush()
    return redis_service.url


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain synchronous client to look at what the store wrote."""
    with redis.Redis.from_url(redis_url) as c:
        yield c


def run(store: RedisStore, scenario: Callable[[RedisStore], Awaitable[None]]) -> None:
    async def main() -> None:
        try:
            await scenario(store)
        finally:
            await store.aclose()

    asyncio.run(main())


async def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll until ``condition`` holds; fail after ``seconds`` (a deadline, not a timing)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {seconds} s")
        await asyncio.sleep(0.02)


# ---- wiring ---------------------------------------------------------------------------


def test_open_store_returns_a_redis_store(redis_url: str) -> None:
    store = open_store(redis_url, instances=3)
    assert isinstance(store, RedisStore)  # rediss://: tests/limits/test_redis_tls.py
    asyncio.run(store.aclose())


def test_a_missing_redis_client_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "redis" or m.startswith("redis.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    monkeypatch.delitem(sys.modules, "tollhouse.limits.redis")
    with pytest.raises(ConfigError, match=r"pip install 'redis\[hiredis\]"):
        open_store("redis://127.0.0.1:6379/0")


def test_a_malformed_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="redis_url"):
        open_store("redis://127.0.0.1:notaport/0")


def test_scripts_ship_as_package_data() -> None:
    lua = resources.files("tollhouse.limits").joinpath("lua")
    names = sorted(p.name for p in lua.iterdir() if p.name.endswith(".lua"))
    assert names == ["decide.lua", "peek.lua", "release.lua", "settle.lua"]
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"limits/lua/*.lua"' in pyproject
    assert len({DECIDE.sha, PEEK.sha, RELEASE.sha, SETTLE.sha}) == 4


# ---- what is written ------------------------------------------------------------------


def test_the_server_clock_decides_and_the_callers_now_is_ignored(redis_url: str) -> None:
    async def scenario(store: RedisStore) -> None:
        before = time.time()
        verdict = await store.decide((bucket("b", 5, window=3600.0),), (), 0.0)  # `now` ignored
        after = time.time()
        outcome = verdict.outcomes[0]
        assert verdict.allowed and outcome.state is None  # the state lives in Redis
        ends = {t - t % 3600 + 3600 for t in (before, after)}
        assert outcome.reset_at in ends

    # A generous timeout: a round trip slowed by a busy machine must not fall back to
    # the local limits (which do use the caller's now).
    run(RedisStore(redis_url, timeout=5.0), scenario)


def test_every_key_has_a_ttl_and_the_request_hash_tag(redis_url: str, client: redis.Redis) -> None:
    fw, g, p = (
        bucket("fw", 5, window=10.0),
        bucket("g", 5, window=10.0, algorithm="gcra"),
        pool("p", 2),
    )

    async def scenario(store: RedisStore) -> None:
        verdict = await store.decide((fw, g), (p,), NOW)
        await store.release(verdict.leases[0], NOW + 1)
        await store.decide((fw, g), (p,), NOW + 1)

    run(RedisStore(redis_url, caller_clock=True), scenario)
    keys = sorted(k.decode() for k in client.keys("*"))
    assert keys == sorted([fw.key, g.key, p.key, p.key + HOLD_SUFFIX])
    assert all(k.startswith(ORG + ":") for k in keys)  # one hash tag: one Cluster slot
    for key in keys:
        assert client.pttl(key) > 0
    # The caller's clock is unrelated to Redis expiry, so caller-clock keys keep an hour.
    assert client.pttl(fw.key) <= 10_000 + 3_600_000


def test_server_clock_ttls_end_with_the_state(redis_url: str, client: redis.Redis) -> None:
    fw, g = bucket("fw", 5, window=10.0), bucket("g", 5, window=10.0, algorithm="gcra")

    async def scenario(store: RedisStore) -> None:
        await store.decide((fw, g), (), 0.0)

    run(RedisStore(redis_url), scenario)
    assert 0 < client.pttl(fw.key) <= 10_000 + KEY_SLACK_MS
    assert 0 < client.pttl(g.key) <= 2_000 + KEY_SLACK_MS  # one GCRA interval of 2 s


def test_concurrent_decisions_share_round_trips(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    trips: list[int] = []
    round_trip = _Link.round_trip

    async def counted(self: _Link, commands: list[bytes], slots: list[int]) -> list[Any]:
        trips.append(len(commands))
        return await round_trip(self, commands, slots)

    monkeypatch.setattr(_Link, "round_trip", counted)
    c = (bucket("shared", 150),)

    async def scenario(store: RedisStore) -> None:
        verdicts = await asyncio.gather(*(store.decide(c, (), NOW) for _ in range(200)))
        assert sum(v.allowed for v in verdicts) == 150
        assert sum(trips) == 200
        assert len(trips) <= 4  # a connection or two, one write each

    run(RedisStore(redis_url, caller_clock=True), scenario)


def test_denials_are_answered_from_the_local_cache(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    hot = (bucket("hot", 2, window=10.0), bucket("wide", 100))

    async def scenario(store: RedisStore) -> None:
        assert store.decide_nowait(hot, (), NOW) is None  # nothing known: ask Redis
        for _ in range(2):
            assert (await store.decide(hot, (), NOW)).allowed
        denied = await store.decide(hot, (), NOW + 1)
        assert not denied.allowed

        async def no_redis(self: _Link, commands: list[bytes], slots: list[int]) -> list[Any]:
            raise AssertionError("asked Redis")

        monkeypatch.setattr(_Link, "round_trip", no_redis)
        quick = store.decide_nowait(hot, (), NOW + 3)
        assert quick is not None and not quick.allowed
        assert quick.denied_by == "hot" and quick.retry_after == pytest.approx(7.0)
        assert [o.remaining for o in quick.outcomes] == [o.remaining for o in denied.outcomes]
        # Another cost or limit is another question; and after the window, Redis again.
        costly = (BucketCheck(hot[0].key, "hot", 5, 10.0, "fixed_window", 1), hot[1])
        assert store.decide_nowait(costly, (), NOW + 3) is None
        assert store.decide_nowait(hot, (), NOW + 10) is None
        monkeypatch.undo()

    run(RedisStore(redis_url, caller_clock=True), scenario)


def test_scripts_are_loaded_again_after_a_flush(redis_url: str, client: redis.Redis) -> None:
    c = (bucket("b", 3),)

    async def scenario(store: RedisStore) -> None:
        for _ in range(3):
            assert (await store.decide(c, (), NOW)).allowed
        assert not (await store.decide(c, (), NOW)).allowed
        # Redis restarted empty: no scripts, no counters. Limits start over, sanely.
        await asyncio.to_thread(client.flushall)
        await asyncio.to_thread(client.script_flush)
        assert (await store.decide(c, (), NOW)).allowed
        stats, _ = await store.peek(c, (), NOW)
        assert stats[0].used == 1
        assert not store.degraded

    run(RedisStore(redis_url, caller_clock=True, failures_to_open=1), scenario)


def test_release_feeds_the_hold_time_estimate(redis_url: str, client: redis.Redis) -> None:
    p = pool("p", 1)

    async def scenario(store: RedisStore) -> None:
        held = await store.decide((), (p,), NOW)
        await store.release(held.leases[0], NOW + 6)  # held 6 s: the first measure
        again = await store.decide((), (p,), NOW + 6)
        denied = await store.decide((), (p,), NOW + 6)
        assert again.allowed and not denied.allowed
        assert denied.retry_after == pytest.approx(6.0)
        await store.release(again.leases[0], NOW + 7)  # held 1 s: average 6 → 5
        assert (await store.decide((), (p,), NOW + 7)).allowed
        # Past its expected end (NOW + 12) a holder is certain to be gone only when its
        # lease expires (NOW + 37).
        late = await store.decide((), (p,), NOW + 20)
        assert late.pool_denied and late.retry_after == pytest.approx(17.0)

    run(RedisStore(redis_url, caller_clock=True), scenario)
    assert float(client.get(p.key + HOLD_SUFFIX) or 0) == pytest.approx(5.0)


# ---- degraded mode --------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_only() -> None:
    breaker = Breaker(threshold=2)
    assert not breaker.failure(started=0.0, now=1.0)
    breaker.success()
    assert not breaker.failure(started=2.0, now=3.0)
    # In flight together with the failure just counted: the same blip, counted once.
    assert not breaker.failure(started=2.5, now=3.0)
    assert not breaker.is_open
    assert breaker.failure(started=3.5, now=3.6) and breaker.is_open
    assert not breaker.failure(started=4.0, now=4.1)  # already open: reported once
    breaker.close()
    assert not breaker.is_open and breaker.failures == 0
    with pytest.raises(ConfigError):
        Breaker(threshold=0)


def test_a_window_redis_never_answered_for_is_a_local_window_of_limit_over_n() -> None:
    """Never a fresh local window inside a window Redis counted: a share set aside by Redis
    is what an instance may spend. A window no answer of Redis covers (a longer outage)
    gets limit ÷ instances, written back once Redis answers; pools keep a local cap of
    limit ÷ instances."""
    b, p = bucket("b", 10), pool("p", 4)
    local = Fallback(instances=3)
    # NOW is 1_800_000_000 (a multiple of 60): this 60 s window ends 60 s later.
    verdicts = [local.decide((b,), (), NOW) for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]  # 10 // 3
    assert verdicts[-1].denied_by == "b" and verdicts[-1].retry_after == pytest.approx(60.0)
    assert local.unsettled[b.key].units == 3  # counted in Redis once it answers
    assert [local.decide((), (p,), NOW).allowed for _ in range(2)] == [True, False]

    shared = Fallback(instances=3)
    shared.granted(b, 2, NOW + 60)  # what Redis set aside for this instance
    assert [shared.decide((b,), (), NOW).allowed for _ in range(3)] == [True, True, False]
    spent = shared.decide((b,), (), NOW)
    assert spent.retry_after == pytest.approx(60.0)  # the share's window ends then
    assert not shared.unsettled  # set aside in Redis: already counted there
    assert shared.share_size(b) == 0  # reserve 0.1 of 10 over 3 instances: none
    assert Fallback(instances=2, reserve=0.5).share_size(b) == 2
    with pytest.raises(ConfigError):
        Fallback(0)
    with pytest.raises(ConfigError):
        Fallback(2, "maybe")


def test_deny_and_allow_while_redis_cannot_be_asked() -> None:
    b = bucket("b", 2)
    closed = Fallback(instances=1, on_failure="deny")
    closed.observe((b,), [closed.decide((b,), (), NOW).outcomes[0]._replace(remaining=2)])
    assert not closed.decide((b,), (), NOW).allowed  # even with a share
    opened = Fallback(instances=2, on_failure="allow")
    assert all(opened.decide((b,), (), NOW).allowed for _ in range(5))
    assert opened.unsettled[b.key].units == 5  # written back once Redis answers


def test_unreachable_redis_degrades_then_recovers_by_itself(tmp_path: Path) -> None:
    binary = shutil.which("redis-server")
    assert binary is not None
    server = RedisServer(binary, tmp_path)
    server.port = free_port()  # nothing listens there yet
    b, p = bucket("b", 8), pool("p", 4)

    async def scenario(store: RedisStore) -> None:
        # Never raises. Redis never answered for this window: a local window of
        # 8 // 4 = 2 (written back once Redis answers); a pool keeps 4 // 4 = 1 slot.
        # (Real time here: what is written back lands in Redis's window of that time.)
        now = time.time()
        verdicts = [await store.decide((b,), (), now) for _ in range(3)]
        assert store.degraded
        assert [v.allowed for v in verdicts] == [True, True, False]
        assert store.decide_nowait((b,), (), now) is not None  # local: no waiting
        slot = await store.decide((), (p,), now)
        assert slot.allowed and not (await store.decide((), (p,), now)).allowed
        await store.release(slot.leases[0], now)
        stats, pools = await store.peek((b,), (p,), now)
        assert stats[0].remaining == 0 and pools[0].active == 0

        await asyncio.to_thread(server.start)
        try:
            await wait_for(lambda: not store.degraded)
            verdict = await store.decide((b,), (), time.time())
            # Redis's count: the 2 admitted locally were written back first, with the 3
            # other instances' local windows presumed spent (2 each, not written back
            # yet): the window is full. (Unless the minute turned meanwhile: then a
            # fresh window, 8 - 1.)
            local_end = now - now % 60 + 60
            same_window = verdict.outcomes[0].reset_at == pytest.approx(local_end)
            assert verdict.allowed is not same_window
            assert verdict.outcomes[0].remaining == (0 if same_window else 7)
        finally:
            await asyncio.to_thread(server.kill)

    url = f"redis://127.0.0.1:{server.port}/0"
    run(RedisStore(url, instances=4, probe_interval=0.05), scenario)


def test_a_stalled_redis_times_out_to_local_limits(redis_url: str) -> None:
    """A Redis that stops answering (here: busy in a long script) costs one timeout, then
    limits are local until it answers again."""
    stall = """
        local t = redis.call('TIME')
        local start = t[1] * 1000000 + t[2]
        repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > tonumber(ARGV[1])
        return 1
    """
    c = (bucket("b", 100),)

    async def scenario(store: RedisStore) -> None:
        assert (await store.decide(c, (), NOW)).allowed  # connected, scripts loaded
        started = threading.Event()

        def busy() -> None:
            with redis.Redis.from_url(redis_url) as other:
                started.set()
                other.eval(stall, 0, 400_000)

        stalled = asyncio.ensure_future(asyncio.to_thread(busy))
        await asyncio.to_thread(started.wait)
        # Until Redis is inside the stall, calls still go through; then one times out.
        while not store.degraded and not stalled.done():
            assert (await store.decide(c, (), NOW)).allowed  # never raises
            await asyncio.sleep(0.01)
        assert store.degraded and store.local_decisions >= 1
        assert (await store.decide(c, (), NOW)).allowed  # local while degraded
        await stalled
        await wait_for(lambda: not store.degraded)
        before = store.local_decisions
        verdict = await store.decide(c, (), NOW)
        assert verdict.allowed and store.local_decisions == before  # Redis's answer again
        # A timed-out call still queued in Redis counted there when it ran: a timeout
        # may count a request twice (locally and in Redis), never zero times.
        assert verdict.outcomes[0].remaining < 98

    run(
        RedisStore(
            redis_url, caller_clock=True, timeout=0.05, failures_to_open=1, probe_interval=0.05
        ),
        scenario,
    )


# ---- shares: what an instance may admit while Redis cannot be asked ---------------------


def test_a_share_set_aside_is_spent_without_redis_and_the_fleet_admits_the_limit(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two instances: each first request sets a share aside in Redis. One instance loses
    Redis and admits from its share only; the other gives its share back when Redis
    denies it. Together: exactly the limit, never more."""
    b = (bucket("b", 20),)
    real = _Link.round_trip

    async def scenario() -> None:
        a = RedisStore(redis_url, instances=2, reserve=0.5, caller_clock=True)
        other = RedisStore(redis_url, instances=2, reserve=0.5, caller_clock=True)
        try:
            first = await a.decide(b, (), NOW)
            assert first.allowed and first.outcomes[0].remaining == 14  # 1 + 5 set aside

            async def a_is_cut_off(
                link: _Link, commands: list[bytes], slots: list[int]
            ) -> list[Any]:
                if link in a._links:
                    raise StorageError("no answer from Redis")
                return await real(link, commands, slots)

            monkeypatch.setattr(_Link, "round_trip", a_is_cut_off)
            alone = [(await a.decide(b, (), NOW)).allowed for _ in range(7)]
            assert alone == [True] * 5 + [False] * 2  # its share of 5, then nothing
            assert a.local_decisions == 7 and not a.unsettled_units()
            shared = [(await other.decide(b, (), NOW)).allowed for _ in range(30)]
            assert sum(shared) == 14  # 1 + 8 left + its own share of 5 given back
            assert sum(alone) + 1 + sum(shared) == 20
        finally:
            monkeypatch.undo()
            await a.aclose()
            await other.aclose()

    asyncio.run(scenario())


def test_one_failed_round_trip_keeps_the_breaker_closed_and_is_written_back(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alone on Redis, what Redis last said was remaining is this instance's share; a
    request decided from it while a round trip failed is written back to Redis before
    the next decision there."""
    b = (bucket("b", 4),)
    real = _Link.round_trip
    failures = [1]

    async def once(link: _Link, commands: list[bytes], slots: list[int]) -> list[Any]:
        if failures and failures.pop():
            raise StorageError("no answer from Redis within 0.1 s")
        return await real(link, commands, slots)

    async def scenario(store: RedisStore) -> None:
        assert [(await store.decide(b, (), NOW)).allowed for _ in range(2)] == [True, True]
        monkeypatch.setattr(_Link, "round_trip", once)
        local = await store.decide(b, (), NOW)
        assert local.allowed and local.outcomes[0].remaining == 1
        assert not store.degraded and store.local_decisions == 1  # one failure: closed
        assert store.unsettled_units() == 1
        last = await store.decide(b, (), NOW)  # the write-back goes first
        assert last.allowed and last.outcomes[0].remaining == 0
        assert not (await store.decide(b, (), NOW)).allowed
        assert store.unsettled_units() == 0
        stats, _ = await store.peek(b, (), NOW)
        assert stats[0].used == 4

    try:
        run(RedisStore(redis_url, caller_clock=True), scenario)
    finally:
        monkeypatch.undo()
