"""A usage read racing the background flush: the batch being written counts as pending,
so the read's flush waits for it and the read sees every call (what the fault tests'
"counted == answered" relies on)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from tests.metering.test_aggregator import call
from tollhouse.metering import UsageMeter
from tollhouse.metering.schema import usage_calls
from tollhouse.schema import create_schema
from tollhouse.storage.engine import make_engine


def test_a_batch_being_written_is_pending(tmp_path: Path) -> None:
    async def go() -> int:
        engine = make_engine(f"sqlite:///{tmp_path / 'usage.db'}")
        try:
            await create_schema(engine)
            meter = UsageMeter(engine)
            writer = meter.flusher.writer
            write = writer.write
            entered, release = asyncio.Event(), asyncio.Event()

            async def held(batch: Any) -> Any:
                # The real write, held open so a read arrives while it is in flight.
                entered.set()
                await release.wait()
                return await write(batch)

            writer.write = held  # type: ignore[method-assign]
            meter.record(call())
            background = asyncio.create_task(meter.flush())
            await entered.wait()
            assert meter.has_pending, "a drained batch not yet written is pending"
            read = asyncio.create_task(meter.flush())  # what a usage read does first
            release.set()
            await asyncio.gather(background, read)
            assert not meter.has_pending
            async with engine.connect() as conn:
                return int(
                    (await conn.execute(select(func.count()).select_from(usage_calls))).scalar_one()
                )
        finally:
            await engine.dispose()

    assert asyncio.run(go()) == 1
