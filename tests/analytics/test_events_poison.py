"""Events the database refuses, on SQLite and PostgreSQL: the batch is bisected, every
other event is stored, the refused ones are set aside as dead letters with the request
id, and the caller gets a 400 naming them — never a 503.

The refusal is the database's own: a CHECK constraint (PostgreSQL) or a trigger raising
ABORT (SQLite) on one ``run_id``, added by the test, stands for any value a column
cannot hold. A value too big for its column goes the same way (:func:`ingest` below).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.analytics.support import platform, who
from tests.analytics.test_events import NOW, flow, stored
from tests.storage.support import run_with
from tollhouse.analytics.events import ParsedEvent, ingest
from tollhouse.errors import DataRejected
from tollhouse.metering.deadletters import COUNTS, list_dead_letters


async def refuse_run_id(engine: AsyncEngine, run_id: str) -> None:
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(
                text(
                    "ALTER TABLE product_events ADD CONSTRAINT refused_run "
                    f"CHECK (run_id IS NULL OR run_id <> '{run_id}')"
                )
            )
        else:
            await conn.execute(
                text(
                    "CREATE TRIGGER refused_run BEFORE INSERT ON product_events "
                    f"WHEN NEW.run_id = '{run_id}' "
                    "BEGIN SELECT RAISE(ABORT, 'run_id refused'); END"
                )
            )


def test_refused_events_are_set_aside_and_answered_400(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        await refuse_run_id(engine, "evil")
        before = COUNTS.rows["event"]
        batch = [flow(i) for i in range(1, 9)]
        batch[5] = flow(6, run_id="evil")
        async with platform(engine, who("acme"), now=NOW) as acme:
            r = await acme.post("/v1/events", json=batch)
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert (error["code"], error["requestId"]) == ("BAD_REQUEST", "req_test")
            assert error["message"].startswith("events[5]: cannot be stored")
            assert "the other 7 events were stored" in error["message"]
            assert sorted(e.event_id for e in await stored(engine, "acme")) == sorted(
                f"evt_{i}" for i in (1, 2, 3, 4, 5, 7, 8)
            )
            # Sent again whole: the stored ones are duplicates, the refused one is refused.
            r = await acme.post("/v1/events", json=batch)
            assert r.status_code == 400
            r = await acme.post("/v1/events", json=[flow(9)])
            assert r.json() == {"received": 1, "inserted": 1, "duplicates": 0}
        letters = await list_dead_letters(engine, kind="event")
        assert len(letters) == 2 and COUNTS.rows["event"] - before == 2
        first = letters[0]
        assert (first.org, first.request_id, first.rows) == ("acme", "req_test", 1)
        assert first.payload["id"] == "evt_6" and first.payload["data"]["run_id"] == "evil"
        assert first.payload["index"] == 5

    run_with(database_url, go)


def test_a_value_too_big_for_its_column_is_set_aside(database_url: str) -> None:
    """Past validation (a caller of :func:`ingest` in code): an integer no 64-bit column
    holds is refused by either engine; the rest of the batch is stored."""

    async def go(engine: AsyncEngine) -> None:
        now = datetime.fromtimestamp(NOW, UTC)
        events = [
            ParsedEvent(f"e{i}", "llm_call", 1_000_000 * i, {"model": "m"}, {"model": "m"})
            for i in range(5)
        ]
        events[2] = ParsedEvent("e2", "llm_call", 2_000_000, {}, {"tokens_in": 2**70})
        with pytest.raises(DataRejected, match=r"^events\[2\]: cannot be stored") as caught:
            await ingest(engine, "acme", "SANDBOX", events, now, request_id="req_big")
        assert caught.value.status == 400
        assert sorted(e.event_id for e in await stored(engine)) == ["e0", "e1", "e3", "e4"]
        [letter] = await list_dead_letters(engine)
        assert (letter.kind, letter.request_id, letter.payload["id"]) == ("event", "req_big", "e2")

    run_with(database_url, go)
