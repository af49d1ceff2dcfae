"""Poison-proof flushing, on SQLite and PostgreSQL: a batch the database refuses because
of a value is split per dimension set and bisected; every other call is written, the
refused ones become dead letters (counted, logged with their request id, listed); an
outage still keeps the batch and retries it."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.metering.test_aggregator import T0, call
from tests.metering.test_flusher import count_rows, totals
from tests.storage.support import postgres_database, run_with
from tollhouse.errors import StorageError
from tollhouse.metering import UsageMeter
from tollhouse.metering.aggregator import Aggregator
from tollhouse.metering.deadletters import COUNTS, list_dead_letters
from tollhouse.metering.flusher import join_batches, split_by_dimensions
from tollhouse.metering.schema import usage_calls, usage_dims, usage_rollup_1m
from tollhouse.schema import create_schema

#: A duration no 64-bit column holds (µs): SQLite's driver refuses to bind it, PostgreSQL
#: answers "bigint out of range" — poison on both engines.
HUGE_MS = 1e20


async def org_calls(engine: AsyncEngine, org: str) -> int:
    """Calls of ``org`` in the minute rollups."""
    r, d = usage_rollup_1m.c, usage_dims.c
    q = (
        select(func.coalesce(func.sum(r["count"]), 0))
        .select_from(usage_rollup_1m.join(usage_dims, r.dim_id == d.id))
        .where(d.org == org)
    )
    async with engine.connect() as conn:
        return int((await conn.execute(q)).scalar_one())


def test_split_and_join_keep_every_call() -> None:
    agg = Aggregator()
    for i in range(30):
        agg.record(call(T0 + i * 7, key_id=f"key_{i % 4}", request_id=f"req_{i}"))
    batch = agg.drain()
    parts = split_by_dimensions(batch)
    assert len(parts) == 4
    assert sum(p.call_count for p in parts) == 30 == batch.call_count
    assert sorted(t for p in parts for t, _, _ in p.log) == sorted(t for t, _, _ in batch.log)
    # Each cell remembers the first call counted in it.
    assert {c.request_id for p in parts for c in p.cells.values()} >= {"req_0", "req_1"}
    joined = join_batches(parts, batch.since)
    assert joined.call_count == 30 and [t for t, _, _ in joined.log] == sorted(
        t for t, _, _ in batch.log
    )


def test_refused_dimension_sets_are_set_aside_and_the_rest_written(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def go(engine: AsyncEngine) -> None:
        meter = UsageMeter(engine)
        before = COUNTS.rows["usage"]
        for i in range(200):  # 20 keys of org "good"
            meter.record(call(T0 + i, org="good", key_id=f"key_{i % 20}"))
        for i, key in enumerate(("bad_1", "bad_2", "bad_2")):  # two refused dimension sets
            meter.record(
                call(T0 + 50 + i, org="bad", key_id=key, duration_ms=HUGE_MS, request_id=f"r{i}")
            )
        with caplog.at_level(logging.WARNING, "tollhouse.metering.deadletters"):
            result = await meter.flush()
        assert (result.calls, result.set_aside) == (200, 3)
        assert await org_calls(engine, "good") == 200
        assert await org_calls(engine, "bad") == 0
        assert await count_rows(engine, usage_calls) == 200
        stats = meter.stats()
        assert (stats.set_aside_calls, stats.buffered_calls, stats.flush_failures) == (3, 0, 0)
        assert not meter.has_pending  # nothing put back to be retried forever
        assert COUNTS.rows["usage"] - before == 3
        letters = await list_dead_letters(engine, kind="usage")
        assert sorted((d.org, d.rows, d.request_id) for d in letters) == [
            ("bad", 1, "r0"),
            ("bad", 2, "r1"),
        ]
        two = next(d for d in letters if d.rows == 2)
        assert two.payload["dimensions"]["keyId"] == "bad_2"
        assert [m["count"] for m in two.payload["minutes"]] == [2]
        assert two.payload["requestIds"] == ["r1"] and len(two.payload["log"]) == 2
        assert "out of range" in two.error or "too large" in two.error
        logged = [r for r in caplog.records if r.name == "tollhouse.metering.deadletters"]
        assert sorted(getattr(r, "request_id", "") for r in logged) == ["r0", "r1"]
        # The next flush is an ordinary one.
        meter.record(call(T0 + 300, org="good"))
        assert (await meter.flush()).calls == 1
        assert await org_calls(engine, "good") == 201

    run_with(database_url, go)


def test_an_outage_while_setting_aside_keeps_the_refused_calls_for_later(
    database_url: str,
) -> None:
    """The good calls are written; the refused ones cannot be set aside (the dead-letter
    table is gone, as if the database failed there): they go back into the meter, and
    the next flush sets them aside."""

    async def go(engine: AsyncEngine) -> None:
        meter = UsageMeter(engine)
        for i in range(10):
            meter.record(call(T0 + i, org="good", key_id=f"key_{i}"))
        meter.record(call(T0 + 20, org="bad", duration_ms=HUGE_MS, request_id="r_bad"))
        async with engine.begin() as conn:
            await conn.execute(text("DROP TABLE dead_letters"))
        with pytest.raises(StorageError):
            await meter.flush()
        assert await org_calls(engine, "good") == 10  # written before the failure
        stats = meter.stats()
        assert (stats.buffered_calls, stats.flush_failures, stats.set_aside_calls) == (1, 1, 0)
        await create_schema(engine)  # the table is back
        result = await meter.flush()
        assert (result.calls, result.set_aside) == (0, 1)
        [letter] = await list_dead_letters(engine)
        assert (letter.org, letter.request_id) == ("bad", "r_bad")
        assert await org_calls(engine, "good") == 10  # nothing written twice

    run_with(database_url, go)


@pytest.mark.postgres
def test_a_tenant_longer_than_its_column_does_not_stop_other_orgs(
    request: pytest.FixtureRequest,
) -> None:
    """The reported failure: PostgreSQL refuses a 300-character tenant (varchar(200));
    15 calls of another org recorded after it are counted by the next flush."""

    async def go(engine: AsyncEngine) -> None:
        meter = UsageMeter(engine)
        meter.record(call(T0, org="evil", tenant="t" * 300, request_id="req_long"))
        for i in range(15):
            meter.record(call(T0 + 1 + i, org="other"))
        result = await meter.flush()
        assert (result.calls, result.set_aside) == (15, 1)
        assert await org_calls(engine, "other") == 15
        [letter] = await list_dead_letters(engine)
        assert letter.request_id == "req_long"
        assert letter.payload["dimensions"]["tenant"] == "t" * 300
        assert "too long" in letter.error
        assert (await totals(engine, usage_rollup_1m))[0] == 15

    with postgres_database(request) as url:
        run_with(url, go)
