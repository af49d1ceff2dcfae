"""A real PostgreSQL stopped and restarted under the meter: memory stays bounded, the
oldest raw-log entries are dropped and counted, every count is kept and written after
recovery, and :meth:`UsageMeter.stats` reports it all."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import select

from tests.metering.test_aggregator import T0, call
from tests.metering.test_flusher import totals
from tests.services import postgres_server
from tollhouse.errors import StorageError
from tollhouse.metering import FlushResult, UsageMeter
from tollhouse.metering.schema import ROLLUPS, usage_calls
from tollhouse.schema import create_schema
from tollhouse.storage.engine import make_engine

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

CAP = 50
STATS = {"buffered_calls", "dropped_log_entries", "last_flush_at", "flush_lag_seconds"}


async def flush_until_written(meter: UsageMeter) -> FlushResult:
    """Flush, retrying while the restarted server finishes coming up."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return await meter.flush()
        except StorageError:
            assert time.monotonic() < deadline, meter.stats().last_error
            await asyncio.sleep(0.1)


def test_a_postgres_outage_bounds_memory_keeps_counts_and_reports_drops() -> None:
    now = [T0 + 60.0]
    with postgres_server() as server:
        url = server.create_database("outage")

        async def go() -> None:
            engine = make_engine(url)
            try:
                await create_schema(engine)
                meter = UsageMeter(engine, raw_log_cap=CAP, clock=lambda: now[0])
                meter.record(call(T0))
                await meter.flush()
                stats = meter.stats()
                assert set(stats) >= STATS and dict(stats)["buffered_calls"] == 0
                assert stats["last_flush_at"] == T0 + 60 and stats["flush_lag_seconds"] == 0.0

                await asyncio.to_thread(server.stop)
                # 40 minutes of traffic, 4 calls a minute, while the database is down.
                for i in range(160):
                    meter.record(call(T0 + 120 + i * 15, status=(200, 302, 404, 503)[i % 4]))
                now[0] = T0 + 3000
                with pytest.raises(StorageError):
                    await meter.flush()
                with pytest.raises(StorageError):
                    await meter.flush()
                stats = meter.stats()
                assert stats["buffered_calls"] == 160
                assert stats["buffered_log_entries"] == CAP  # bounded…
                assert stats["dropped_log_entries"] == 160 - CAP  # …oldest dropped, counted
                assert stats["buffered_cells"] == 40  # one per minute: counts kept, small
                assert stats["last_flush_at"] == T0 + 60  # the last success
                assert stats["flush_lag_seconds"] == 3000 - 120  # the oldest unwritten call
                assert stats["flush_failures"] == 2 and stats["last_error"]

                await asyncio.to_thread(server.start)
                now[0] = T0 + 3100
                result = await flush_until_written(meter)
                assert (result.calls, result.log_rows) == (160, CAP)
                for table in ROLLUPS:
                    assert (await totals(engine, table))[:4] == (161, 40, 40, 0), table.name
                async with engine.connect() as conn:
                    times = (await conn.execute(select(usage_calls.c.time_us))).scalars().all()
                # The first call and the newest CAP of the outage are in the raw log.
                newest = [round((T0 + 120 + i * 15) * 1e6) for i in range(160 - CAP, 160)]
                assert sorted(times) == [round(T0 * 1e6), *newest]
                stats = meter.stats()
                assert stats["buffered_calls"] == 0 and stats["flush_lag_seconds"] == 0.0
                assert stats["dropped_log_entries"] == 160 - CAP  # still reported
                assert stats["last_flush_at"] == T0 + 3100 and stats["last_error"] is None
            finally:
                await engine.dispose()

        asyncio.run(go())
