"""Flushing into SQL on both engines: exact counts, upserts, outages, shutdown, retention."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.metering.test_aggregator import T0, call
from tests.storage.support import run_with
from tollhouse.errors import StorageError
from tollhouse.metering import Retention, UsageMeter, prune
from tollhouse.metering.flusher import dim_id
from tollhouse.metering.histogram import COLUMNS
from tollhouse.metering.record import CallRecord
from tollhouse.metering.schema import (
    ROLLUPS,
    product_events,
    usage_calls,
    usage_dims,
    usage_rollup_1d,
    usage_rollup_1h,
    usage_rollup_1m,
)
from tollhouse.storage.engine import make_engine


async def totals(engine: AsyncEngine, table: Any) -> tuple[int, int, int, int, int, int]:
    t = table.c
    hist = sum((t[h] for h in COLUMNS[1:]), t[COLUMNS[0]])
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    func.coalesce(func.sum(t["count"]), 0),
                    func.coalesce(func.sum(t.errors), 0),
                    func.coalesce(func.sum(t.client_errors), 0),
                    func.coalesce(func.sum(t.throttled), 0),
                    func.coalesce(func.sum(t.dur_sum_us), 0),
                    func.coalesce(func.sum(hist), 0),
                )
            )
        ).one()
    return tuple(int(v) for v in row)  # type: ignore[return-value]


async def count_rows(engine: AsyncEngine, table: Any) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


def test_every_recorded_call_is_counted_in_every_rollup_and_the_log(database_url: str) -> None:
    statuses = (200, 200, 201, 400, 404, 429, 500, 502)

    async def go(engine: AsyncEngine) -> None:
        meter = UsageMeter(engine)
        n = 2000
        for i in range(n):
            # 2000 calls over ~2.3 days, two keys, labels on half of them.
            meter.record(
                call(
                    T0 + i * 101.7,
                    key_id=f"key_{i % 2}",
                    status=statuses[i % len(statuses)],
                    duration_ms=0.2 + (i % 97) * 3.1,
                    labels={"db": f"db{i % 3}"} if i % 2 else {},
                )
            )
        result = await meter.flush()
        assert result.calls == n and result.log_rows == n
        expected_sum = sum(round((0.2 + (i % 97) * 3.1) * 1000) for i in range(n))
        for table in ROLLUPS:
            count, errors, client, throttled, dur, hist = await totals(engine, table)
            assert (count, errors, client, throttled) == (n, n // 4, n // 4, n // 8), table.name
            assert dur == expected_sum and hist == n
        assert await count_rows(engine, usage_calls) == n
        assert await count_rows(engine, usage_dims) == 4
        assert await count_rows(engine, usage_rollup_1d) == 4 * 3  # 3 UTC days
        assert meter.stats().recorded_calls == n and meter.stats().flushes == 1

    run_with(database_url, go)


def test_the_raw_log_holds_every_call_column_for_column(database_url: str) -> None:
    """Rows are made per dimension set at flush time: every column must still be the
    call's own — across full multi-row statements, remainders, many small dimension
    sets, the same set in two minutes, and (PostgreSQL) both the COPY and the per-row
    path."""

    def traffic(t0: float) -> list[CallRecord]:
        busy = [
            call(t0 + i * 0.05, status=(200, 404, 503)[i % 3], duration_ms=(i % 13) * 1.7)
            for i in range(700)
        ]
        varied = [
            call(
                t0 + 60 + i * 0.1,
                key_id=f"key_{i % 30}",
                tenant=f"tenant{i % 4}" if i % 2 else None,
                endpoint_group=None if i % 3 else "SCORING",
                route=None if i % 5 == 0 else "/v1/score",
                labels={"db": f"db{i % 3}", "scenario": "home"} if i % 2 else {},
            )
            for i in range(90)
        ]
        return busy + varied

    def as_row(c: CallRecord) -> tuple[Any, ...]:
        t, org, env, key, tenant, group, method, route, status, ms, labels, _ = c
        us = max(0, round(ms * 1000))
        return (round(t * 1e6), org, env, key, tenant, group, method, route, status, us, labels)

    async def go(engine: AsyncEngine) -> None:
        meter = UsageMeter(engine)
        calls: list[CallRecord] = []
        for bulk, t0 in ((True, T0), (False, T0 + 3600)):
            meter.flusher.writer.bulk_postgres = bulk
            batch = traffic(t0)
            for c in batch:
                meter.record(c)
            result = await meter.flush()
            assert result.log_rows == result.calls == len(batch)
            calls += batch
        async with engine.connect() as conn:
            rows = (await conn.execute(select(usage_calls).order_by(usage_calls.c.time_us))).all()
        got = [
            (
                r.time_us,
                r.org,
                r.environment,
                r.key_id,
                r.tenant,
                r.endpoint_group,
                r.method,
                r.route,
                r.status,
                r.duration_us,
                dict(r.labels),
            )
            for r in rows
        ]
        assert got == [as_row(c) for c in sorted(calls, key=lambda c: c.time)]

    run_with(database_url, go)


def test_flushes_add_up_and_keep_min_and_max(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        first, second = UsageMeter(engine), UsageMeter(engine)  # e.g. two processes
        first.record(call(T0 + 1, duration_ms=5))
        await first.flush()
        second.record(call(T0 + 2, duration_ms=1))
        second.record(call(T0 + 3, duration_ms=9, status=503))
        await second.flush()
        first.record(call(T0 + 4, duration_ms=7))
        await first.flush()
        async with engine.connect() as conn:
            rows = (await conn.execute(select(usage_rollup_1m))).all()
        assert len(rows) == 1
        row = rows[0]
        assert (row.count, row.errors, row.dur_min_us, row.dur_max_us) == (4, 1, 1000, 9000)
        assert row.dur_sum_us == 22_000 and row.bucket == int(T0)
        assert row.dim_id == dim_id(
            ("acme", "SANDBOX", "key_a", "", "SCORING", "POST", "/v1/score", ())
        )
        assert (await totals(engine, usage_rollup_1h))[0] == 4

    run_with(database_url, go)


def test_label_order_does_not_split_a_dimension_set(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        meter = UsageMeter(engine)
        meter.record(call(labels={"db": "main", "scenario": "home"}))
        meter.record(call(labels={"scenario": "home", "db": "main"}))
        await meter.flush()
        meter.record(call(labels={"scenario": "home", "db": "main"}))
        await meter.flush()
        async with engine.connect() as conn:
            rows = (await conn.execute(select(usage_rollup_1m))).all()
            dims = (await conn.execute(select(usage_dims))).all()
        assert [r.count for r in rows] == [3]
        assert [(d.db, d.scenario, d.labels) for d in dims] == [
            ("main", "home", {"db": "main", "scenario": "home"})
        ]

    run_with(database_url, go)


def test_an_outage_keeps_counts_and_caps_the_raw_log(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        down = make_engine("postgresql://nobody@127.0.0.1:9/usage")
        meter = UsageMeter(down, raw_log_cap=50)
        try:
            for i in range(80):
                meter.record(call(T0 + i * 30))
            with pytest.raises(StorageError):
                await meter.flush()
            for i in range(80, 120):
                meter.record(call(T0 + i * 30))
            with pytest.raises(StorageError):
                await meter.flush()
            stats = meter.stats()
            assert stats.flush_failures == 2 and stats.last_error
            assert stats.pending_calls == 50 and stats.dropped_calls == 70
            assert stats.pending_cells == 60
        finally:
            await down.dispose()
        meter.flusher.writer.engine = engine  # the database is back
        result = await meter.flush()
        assert result.calls == 120 and result.log_rows == 50
        assert (await totals(engine, usage_rollup_1m))[0] == 120
        async with engine.connect() as conn:
            times = (await conn.execute(select(usage_calls.c.time_us))).scalars().all()
        # The newest 50 calls survived.
        assert sorted(times) == [round((T0 + i * 30) * 1e6) for i in range(70, 120)]
        assert meter.stats().last_error is None

    run_with(database_url, go)


def test_stop_flushes_what_is_left_and_the_loop_flushes_by_itself(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        meter = UsageMeter(engine, flush_interval=0.02)
        await meter.start()
        await meter.start()  # idempotent
        meter.record(call(T0))
        deadline = time.monotonic() + 10
        while await count_rows(engine, usage_calls) == 0:
            assert time.monotonic() < deadline, "the background flusher never wrote"
            await asyncio.sleep(0.01)
        for i in range(1, 10):
            meter.record(call(T0 + i))
        await meter.stop()
        assert not meter.flusher.running
        assert await count_rows(engine, usage_calls) == 10
        assert (await totals(engine, usage_rollup_1d))[0] == 10
        assert not meter.has_pending

    run_with(database_url, go)


def test_stop_gives_up_after_its_grace_when_the_database_stays_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def go() -> None:
        down = make_engine("postgresql://nobody@127.0.0.1:9/usage")
        try:
            meter = UsageMeter(down)
            meter.record(call())
            await meter.stop(grace=0.2)
            assert meter.has_pending
        finally:
            await down.dispose()

    asyncio.run(go())
    assert "usage not flushed at shutdown" in caplog.text


def test_the_loop_survives_failures_and_recovers(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        down = make_engine("postgresql://nobody@127.0.0.1:9/usage")
        meter = UsageMeter(down, flush_interval=0.01)
        try:
            meter.record(call())
            await meter.start()
            deadline = time.monotonic() + 10
            while meter.stats().flush_failures < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            meter.flusher.writer.engine = engine
            while meter.has_pending:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            await meter.stop()
        finally:
            await down.dispose()
        assert await count_rows(engine, usage_calls) == 1

    run_with(database_url, go)


def test_prune_deletes_by_age_per_table(database_url: str) -> None:
    now = T0 + 500 * 86400

    async def go(engine: AsyncEngine) -> None:
        meter = UsageMeter(engine)
        for age_days in (0, 2, 10, 45, 450):
            meter.record(call(now - age_days * 86400))
        await meter.flush()
        async with engine.begin() as conn:
            for age_days in (1, 500):
                t = round((now - age_days * 86400) * 1e6)
                await conn.execute(
                    product_events.insert().values(
                        org="acme",
                        environment="SANDBOX",
                        event_id=f"e{age_days}",
                        type="flow_run",
                        time_us=t,
                        received_us=t,
                        data={},
                    )
                )
        deleted = await prune(engine, Retention(), now)
        assert deleted == {
            usage_calls.name: 2,  # 45 and 450 days (30 kept)
            usage_rollup_1m.name: 3,  # 10, 45, 450 (7 kept)
            usage_rollup_1h.name: 1,  # 450 (400 kept)
            product_events.name: 1,
        }
        assert await count_rows(engine, usage_rollup_1d) == 5  # kept forever
        everything = Retention(None, None, None, 1, None)
        assert await prune(engine, everything, now) == {usage_rollup_1d.name: 4}

    run_with(database_url, go)


def test_the_flusher_prunes_on_its_schedule(database_url: str) -> None:
    now = T0 + 100 * 86400

    async def go(engine: AsyncEngine) -> None:
        meter = UsageMeter(
            engine, flush_interval=0.01, retention=Retention(calls_days=1), clock=lambda: now
        )
        meter.record(call(T0))
        await meter.start()
        deadline = time.monotonic() + 10
        while meter.stats().flushes == 0 or await count_rows(engine, usage_calls):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await meter.stop()
        assert await count_rows(engine, usage_rollup_1d) == 1

    run_with(database_url, go)
