"""Schema step 13 on SQLite and PostgreSQL: a database whose ``fair_use_flags`` has the
layout of step 10 gets the new columns (its rows kept, ``involved`` 0), and a second run
changes nothing."""

from __future__ import annotations

from sqlalchemy import Connection, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.storage.support import run_with
from tollhouse.fairuse.schema import fair_use_flags
from tollhouse.schema import LATEST, MIGRATIONS, migrate

NEW = {"involved", "throttle_bucket", "throttle_limit", "throttle_until_us"}


def test_step_13_carries_flags_of_the_old_layout(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        assert await migrate(engine, MIGRATIONS[:12]) == (0, 12)
        async with engine.begin() as conn:
            # Back to the layout before step 13.
            await conn.execute(text("DROP INDEX ix_fair_use_flags_throttle_until"))
            for column in sorted(NEW):
                await conn.execute(text(f"ALTER TABLE fair_use_flags DROP COLUMN {column}"))
            await conn.execute(
                text(
                    "INSERT INTO fair_use_flags (org, environment, signal, window_start, value,"
                    " threshold, subjects, flagged_us, updated_us, action) VALUES ('acme',"
                    " 'SANDBOX', 'regeneration_loop', 0, 4, 3, '[]', 1, 2, 'flag')"
                )
            )

        def shape(c: Connection) -> tuple[set[str], set[str]]:
            found = inspect(c)
            columns = {col["name"] for col in found.get_columns("fair_use_flags")}
            indexes = {ix["name"] or "" for ix in found.get_indexes("fair_use_flags")}
            return columns, indexes

        async with engine.connect() as conn:
            columns, _ = await conn.run_sync(shape)
        assert not columns & NEW
        assert await migrate(engine) == (12, LATEST)
        assert await migrate(engine) == (LATEST, LATEST)
        async with engine.connect() as conn:
            columns, indexes = await conn.run_sync(shape)
            f = fair_use_flags.c
            row = (await conn.execute(select(f.org, f.involved, f.throttle_until_us))).one()
        assert columns >= NEW
        assert "ix_fair_use_flags_throttle_until" in indexes
        assert tuple(row) == ("acme", 0, None)

    run_with(database_url, go, schema=False)
