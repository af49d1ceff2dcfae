"""The pass's claim on its interval, on SQLite and PostgreSQL: passes running at once on
one database (each with its own engine and event loop, as separate processes have) pass
each interval exactly once, and a pass that fails after its claim puts the watermark
back, so the next one does the same interval again."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from sqlalchemy import select

from tests.storage.support import run_with
from tollhouse.errors import StorageError
from tollhouse.fairuse import FairUseTap, PassResult, run_pass
from tollhouse.fairuse.schema import fair_use_flags, fair_use_state
from tollhouse.policy.model import FAIR_USE_DEFAULTS
from tollhouse.storage.engine import make_engine

RULES = tuple(FAIR_USE_DEFAULTS.values())
PASSES = 3
ROUNDS = 4


def regeneration_loop(job_id: str, t: float) -> FairUseTap:
    """A tap holding four generations of ``job_id`` (more than the default 3)."""
    tap = FairUseTap()
    for i in range(4):
        tap.generation("acme", "SANDBOX", "/v1/criteria/generate", job_id, t + i)
    return tap


def us(t: float) -> int:
    return round(t * 1_000_000)


def watermark(url: str) -> int | None:
    """The stored watermark, µs."""

    async def go(engine: Any) -> int | None:
        async with engine.connect() as conn:
            found = (await conn.execute(select(fair_use_state.c.watermark_us))).scalar()
            return None if found is None else int(found)

    return run_with(url, go, schema=False)


def passes_at_once(url: str, now: float) -> list[PassResult | None]:
    """:data:`PASSES` passes at ``now``, each in its own thread, engine and event loop,
    released together."""
    start = threading.Barrier(PASSES)
    results: list[PassResult | BaseException | None] = [None] * PASSES

    def one(i: int) -> None:
        async def go() -> PassResult | None:
            engine = make_engine(url)
            try:
                async with engine.connect():
                    pass  # connected before the start: the passes race on the claim only
                start.wait(timeout=30)
                return await run_pass(engine, RULES, now=now)
            finally:
                await engine.dispose()

        try:
            results[i] = asyncio.run(go())
        except BaseException as exc:  # reported below, in the test's thread
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(PASSES)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return [r for r in results if not isinstance(r, BaseException)]


def test_passes_at_once_pass_each_interval_once(database_url: str) -> None:
    base = time.time()
    run_with(database_url, lambda e: asyncio.sleep(0))  # the schema
    previous: float | None = None
    for round_ in range(ROUNDS):
        now = base + 60 * round_
        # A new loop in each interval, so each interval's pass has a flag to record.
        run_with(database_url, regeneration_loop(f"job_{round_}", now - 5).flush, schema=False)
        results = passes_at_once(database_url, now)
        done = [r for r in results if r is not None]
        assert len(done) == 1, (round_, results)  # exactly one did the interval
        [result] = done
        assert result.until == now
        # The intervals follow each other: the first looks a day back, then each
        # starts where the last ended.
        assert us(result.since) == us(now - 86400.0 if previous is None else previous)
        assert [r.signal for _, _, r in result.flagged] == ["regeneration_loop"]
        assert watermark(database_url) == us(now)
        previous = now


def test_a_failed_pass_leaves_the_watermark_for_the_next(database_url: str) -> None:
    base = time.time()
    first = run_with(database_url, lambda e: run_pass(e, RULES, now=base))
    assert first is not None and first.flagged == []
    assert watermark(database_url) == us(base)

    # A loop in the next interval; the pass over it fails after its claim (the flags
    # table is gone: a real database error, not a stand-in).
    run_with(database_url, regeneration_loop("job_loop", base + 10).flush)

    async def drop(engine: Any) -> None:
        async with engine.begin() as conn:
            await conn.run_sync(fair_use_flags.drop)

    run_with(database_url, drop, schema=False)
    failed_at = base + 60

    async def fails(engine: Any) -> None:
        try:
            await run_pass(engine, RULES, now=failed_at)
        except StorageError:
            return
        raise AssertionError("the pass did not fail")

    run_with(database_url, fails, schema=False)
    assert watermark(database_url) == us(base)  # put back, not left at failed_at

    async def restore(engine: Any) -> None:
        async with engine.begin() as conn:
            await conn.run_sync(fair_use_flags.create)

    run_with(database_url, restore, schema=False)
    again = run_with(database_url, lambda e: run_pass(e, RULES, now=base + 120), schema=False)
    assert again is not None
    assert (us(again.since), again.until) == (us(base), base + 120)  # the failed interval, redone
    assert [r.signal for _, _, r in again.flagged] == ["regeneration_loop"]
    assert [r.subjects[0].id for _, _, r in again.flagged] == ["job_loop"]
    assert watermark(database_url) == us(base + 120)
