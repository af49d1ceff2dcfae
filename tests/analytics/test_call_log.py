"""The raw call log on both engines: keyset paging on (time, id), labels kept, scoping."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.analytics.support import DAY0, record
from tests.storage.support import run_with
from tollhouse.analytics.call_log import read_calls
from tollhouse.errors import BadRequest
from tollhouse.metering.meter import UsageMeter


def test_keyset_paging_walks_every_call_once_in_order(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        meter = UsageMeter(engine)
        for i in range(25):
            # Pairs of calls share a microsecond: the id breaks the tie.
            record(meter, DAY0 + i // 2, status=200 + i, labels={"db": f"db{i}"})
        record(meter, DAY0, org="globex")
        record(meter, DAY0, env="PRODUCTION")
        await meter.flush()
        for newest_first in (True, False):
            seen = []
            cursor = None
            while True:
                page, cursor = await read_calls(
                    engine,
                    org="acme",
                    environment="SANDBOX",
                    cursor=cursor,
                    limit=4,
                    newest_first=newest_first,
                )
                seen += page
                if cursor is None:
                    break
            assert len(seen) == 25 and len({c.id for c in seen}) == 25
            order = [(c.time, c.id) for c in seen]
            assert order == sorted(order, reverse=newest_first)
        oldest = seen[0]
        assert oldest.time == DAY0 and oldest.labels == {"db": "db0"}
        assert (oldest.method, oldest.route, oldest.status, oldest.duration_ms) == (
            "POST",
            "/v1/score",
            200,
            12.0,
        )
        ranged, _ = await read_calls(
            engine, org="acme", environment="SANDBOX", start=DAY0 + 3, end=DAY0 + 5, limit=100
        )
        assert sorted(c.status for c in ranged) == list(range(206, 212))
        with pytest.raises(BadRequest):
            await read_calls(engine, org="acme", environment="SANDBOX", cursor="%%%")
        with pytest.raises(BadRequest):
            await read_calls(engine, org="acme", environment="SANDBOX", limit=0)

    run_with(database_url, go)
