"""The raw call log partitioned by day on PostgreSQL: the layout step 15 makes (and
converts an existing log to), partitions made ahead by the flusher, retention by dropping
partitions, and COPY writing every call exactly once. SQLite keeps its plain table."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.metering.test_aggregator import T0, call
from tests.storage.support import ENGINES, postgres_database, run_with, sqlite_url
from tollhouse.metering import Retention, UsageMeter, prune
from tollhouse.metering.partitions import (
    AHEAD_DAYS,
    DAY_US,
    DEFAULT_PARTITION,
    MIGRATION_DAYS,
    day_of,
    day_of_partition,
    days_ahead,
    days_between,
    days_of,
    expired_days,
    is_partitioned,
    partition_calls,
    partition_days,
    partition_name,
)
from tollhouse.metering.schema import usage_calls, usage_rollup_1m
from tollhouse.schema import LATEST, MIGRATIONS, create_schema, migrate
from tollhouse.storage.migrations import schema_version

DAY = 86400
#: The step that partitions the raw call log.
STEP = next(m.version for m in MIGRATIONS if m.apply is partition_calls)


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Any:
    with postgres_database(request) as url:
        yield url


async def _days(engine: AsyncEngine) -> set[int]:
    async with engine.connect() as conn:
        return await conn.run_sync(partition_days)


async def _where_rows_are(engine: AsyncEngine) -> Counter[str]:
    """Rows per partition (the table each row is stored in)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT tableoid::regclass::text, count(*) FROM usage_calls GROUP BY 1")
        )
        return Counter({str(name): int(n) for name, n in rows})


async def _log(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(select(usage_calls).order_by("id"))]


def test_days_and_names() -> None:
    day = day_of(round(T0 * 1e6))
    assert partition_name(day) == "usage_calls_p20260101"
    assert day_of_partition("usage_calls_p20260101") == day
    assert day_of_partition(DEFAULT_PARTITION) is None
    assert day_of(day * DAY_US - 1) == day - 1
    assert list(days_between(day * DAY_US - 1, (day + 1) * DAY_US)) == [day - 1, day, day + 1]
    assert days_of([]) == set()
    assert days_of([day * DAY_US, (day + 1) * DAY_US]) == {day, day + 1}
    assert days_of([day * DAY_US, (day + 5) * DAY_US + 1, day * DAY_US + 7]) == {day, day + 5}
    assert list(days_ahead(T0 + 3600)) == [day + i for i in range(AHEAD_DAYS + 1)]
    # Only days wholly older than the cutoff go: the day holding it stays.
    assert expired_days([day + 2, day, day + 1], (day + 1) * DAY_US + 1) == [day]
    assert expired_days([day], (day + 1) * DAY_US) == [day]


@pytest.mark.postgres
def test_a_fresh_database_gets_the_partitioned_log(pg_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        async with engine.connect() as conn:
            assert await conn.run_sync(is_partitioned)
            key = await conn.execute(
                text(
                    "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                    "WHERE conrelid = 'usage_calls'::regclass AND contype = 'p'"
                )
            )
            assert key.scalar_one() == "PRIMARY KEY (time_us, id)"
        assert await _days(engine) == set()  # the default partition only, until calls come
        assert await _where_rows_are(engine) == Counter()

    run_with(pg_url, go)


@pytest.mark.postgres
def test_the_flusher_makes_partitions_ahead(pg_url: str) -> None:
    now = T0 + 5 * DAY + 3600
    today = int(now // DAY)

    async def go(engine: AsyncEngine) -> None:
        meter = UsageMeter(engine, flush_interval=0.01, clock=lambda: now)
        await meter.start()
        deadline = time.monotonic() + 10
        while not await _days(engine):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await meter.stop()
        assert await _days(engine) == {today + i for i in range(AHEAD_DAYS + 1)}
        # A call of the day after tomorrow lands in its own partition, not the default.
        meter = UsageMeter(engine)
        meter.record(call(now + AHEAD_DAYS * DAY))
        await meter.flush()
        assert await _where_rows_are(engine) == {partition_name(today + AHEAD_DAYS): 1}

    run_with(pg_url, go)


@pytest.mark.postgres
def test_a_batch_gets_the_partitions_of_its_days_and_the_default_is_emptied(pg_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        day = int(T0 // DAY)
        # A row written while its day had no partition (by hand, as another writer
        # might) sits in the default partition...
        async with engine.begin() as conn:
            await conn.execute(
                usage_calls.insert().values(
                    time_us=round((T0 + 60) * 1e6), org="acme", environment="SANDBOX",
                    key_id="key_a", method="GET", status=200, duration_us=5, labels={},
                )
            )  # fmt: skip
        assert await _where_rows_are(engine) == {DEFAULT_PARTITION: 1}
        # ...and moves into the day's partition when a batch makes it.
        meter = UsageMeter(engine)
        for t in (T0 - 1, T0, T0 + DAY - 0.5, T0 + DAY):
            meter.record(call(t))
        await meter.flush()
        assert await _days(engine) == {day - 1, day, day + 1}
        assert await _where_rows_are(engine) == {
            partition_name(day - 1): 1,
            partition_name(day): 3,
            partition_name(day + 1): 1,
        }

    run_with(pg_url, go)


@pytest.mark.postgres
def test_retention_drops_whole_partitions(pg_url: str) -> None:
    now = T0 + 100 * DAY + 6 * 3600  # 06:00

    async def go(engine: AsyncEngine) -> None:
        meter = UsageMeter(engine)
        ages = (0, 2, 29.9, 30.1, 45, 45.1, 60)
        for age in ages:
            meter.record(call(now - age * DAY))
        await meter.flush()
        days = await _days(engine)
        # 29.9 and 30.1 days ago share the cutoff's day, 45 and 45.1 days ago one day.
        assert len(days) == len(ages) - 2
        async with engine.connect() as conn:
            before = (await conn.execute(text("SELECT 'usage_calls'::regclass::oid"))).scalar()
        deleted = await prune(engine, Retention(), now)
        # 45, 45.1 and 60 days old: their days are wholly past the 30 days kept; the
        # call 30.1 days old shares its day with the cutoff, so it stays until that day
        # has passed — the price of never deleting row by row.
        assert deleted[usage_calls.name] == 3
        cutoff_day = int((now - 30 * DAY) // DAY)
        assert await _days(engine) == {d for d in days if d >= cutoff_day}
        for gone in days - await _days(engine):
            async with engine.connect() as conn:
                found = await conn.execute(
                    text("SELECT to_regclass(:n)"), {"n": partition_name(gone)}
                )
                assert found.scalar() is None  # dropped, not emptied
        counts = await _where_rows_are(engine)
        assert sum(counts.values()) == 4
        # The same parent table: nothing was rebuilt.
        async with engine.connect() as conn:
            after = (await conn.execute(text("SELECT 'usage_calls'::regclass::oid"))).scalar()
        assert after == before
        # The minute rollups are still deleted by age.
        assert deleted[usage_rollup_1m.name] == 5
        # The default partition's old rows go by DELETE (it is only a safety net).
        async with engine.begin() as conn:
            await conn.exec_driver_sql(
                f"ALTER TABLE usage_calls DETACH PARTITION {partition_name(int(now // DAY))}"
            )
            await conn.execute(
                usage_calls.insert().values(
                    time_us=round((now - 50 * DAY) * 1e6), org="acme", environment="SANDBOX",
                    key_id="key_a", method="GET", status=200, duration_us=5, labels={},
                )
            )  # fmt: skip
        assert (await _where_rows_are(engine))[DEFAULT_PARTITION] == 1
        assert (await prune(engine, Retention(), now))[usage_calls.name] == 1

    run_with(pg_url, go)


@pytest.mark.postgres
def test_copy_writes_every_call_once_with_the_rollups(pg_url: str) -> None:
    """Binary COPY of the raw log: every recorded call is one row with its exact time,
    status and duration, in the same transaction as the rollups (the totals agree)."""
    statuses = (200, 201, 302, 404, 429, 500, 0)

    async def go(engine: AsyncEngine) -> None:
        meter = UsageMeter(engine)
        assert meter.flusher.writer.bulk_postgres
        calls = [
            call(
                T0 - 3 * 3600 + i * 7.3,
                status=statuses[i % len(statuses)],
                duration_ms=(i % 50) * 0.3,
                key_id=f"key_{i % 3}",
                labels={"db": "movies"} if i % 2 else {},
            )
            for i in range(6000)
        ]
        for i, c in enumerate(calls):
            meter.record(c)
            if i % 1000 == 999:
                await meter.flush()
        await meter.flush()
        rows = await _log(engine)
        names = [c.name for c in usage_calls.columns]
        got = Counter(
            (r[names.index("time_us")], r[names.index("key_id")], r[names.index("status")],
             r[names.index("duration_us")], tuple(sorted(r[names.index("labels")].items())))
            for r in rows
        )  # fmt: skip
        want = Counter(
            (round(c.time * 1e6), c.key_id, c.status, round(c.duration_ms * 1000),
             tuple(sorted(c.labels.items())))
            for c in calls
        )  # fmt: skip
        assert got == want
        assert len({r[0] for r in rows}) == len(calls)  # ids unique
        async with engine.connect() as conn:
            counted = await conn.execute(select(func.sum(usage_rollup_1m.c["count"])))
            assert counted.scalar() == len(calls)
        # Spread over the two days' partitions, none in the default.
        assert DEFAULT_PARTITION not in await _where_rows_are(engine)

    run_with(pg_url, go)


@pytest.mark.parametrize("engine_name", ENGINES)
def test_step_15_converts_an_existing_log_and_loses_nothing(
    engine_name: str, request: pytest.FixtureRequest, tmp_path: Any
) -> None:
    def go_with(url: str) -> None:
        async def go(engine: AsyncEngine) -> None:
            assert await migrate(engine, MIGRATIONS[: STEP - 1]) == (0, STEP - 1)
            async with engine.connect() as conn:
                assert not await conn.run_sync(is_partitioned)
            # Calls flushed as the server wrote them before the step, over three days,
            # and one far older than the days the step makes partitions for.
            meter = UsageMeter(engine)
            for i in range(300):
                meter.record(call(T0 + i * 900, status=(200, 404, 500)[i % 3]))
            meter.record(call(T0 - (MIGRATION_DAYS + 10) * DAY))
            await meter.flush()
            before = await _log(engine)
            assert len(before) == 301
            assert await create_schema(engine) is None
            assert await schema_version(engine) == LATEST
            after = await _log(engine)
            assert after == before  # every row, same id, same values
            if engine.dialect.name == "postgresql":
                async with engine.connect() as conn:
                    assert await conn.run_sync(is_partitioned)
                first = int(T0 // DAY)
                last = int((T0 + 299 * 900) // DAY)
                assert await _days(engine) == set(range(first, last + 1))
                where = await _where_rows_are(engine)
                assert where[DEFAULT_PARTITION] == 1  # the very old call
                assert sum(where.values()) == 301
            # New calls continue the ids, and the flusher writes into the new layout.
            meter = UsageMeter(engine)
            meter.record(call(T0 + DAY))
            await meter.flush()
            newest = await _log(engine)
            assert len(newest) == 302
            assert newest[-1][0] > max(r[0] for r in before)
            # Running the migrations again changes nothing.
            await create_schema(engine)
            assert await _log(engine) == newest

        run_with(url, go, schema=False)

    if engine_name == "sqlite":
        go_with(sqlite_url(tmp_path))
        return
    with postgres_database(request) as url:
        go_with(url)


@pytest.mark.postgres
def test_a_failed_conversion_leaves_the_old_table(pg_url: str) -> None:
    """Step 15 is all-or-nothing: made to fail after the rows moved (a clashing table
    name), the migration rolls back and the unpartitioned log is there, rows and all."""

    async def go(engine: AsyncEngine) -> None:
        await migrate(engine, MIGRATIONS[: STEP - 1])
        meter = UsageMeter(engine)
        for i in range(10):
            meter.record(call(T0 + i))
        await meter.flush()
        before = await _log(engine)
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE usage_calls_default (x int)")
        with pytest.raises(Exception, match="usage_calls_default"):
            await create_schema(engine)
        assert await schema_version(engine) == STEP - 1
        async with engine.connect() as conn:
            assert not await conn.run_sync(is_partitioned)
        assert await _log(engine) == before

    run_with(pg_url, go, schema=False)
