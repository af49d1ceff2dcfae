"""Schema version 4: rollups made before it get the ``redirects`` counter (both engines)
and, on SQLite, the covering count index."""

from __future__ import annotations

from sqlalchemy import Column, Connection, MetaData, Table, inspect, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.metering.test_aggregator import T0, call
from tests.storage.support import run_with
from tollhouse.analytics.catalogue import CATALOGUE
from tollhouse.analytics.metrics import run_metric
from tollhouse.metering import UsageMeter
from tollhouse.metering.schema import ROLLUPS, upgrade_rollups_unknown
from tollhouse.schema import LATEST, MIGRATIONS, create_schema
from tollhouse.storage.schema import schema_info

#: The step that adds the rollups' ``unknown`` counter.
UNKNOWN_STEP = next(m.version for m in MIGRATIONS if m.apply is upgrade_rollups_unknown)


def _old_layout(conn: Connection) -> None:
    """The rollups as schema version 3 made them (no ``redirects``), one 2xx row each."""
    old = MetaData()
    for table in ROLLUPS:
        conn.exec_driver_sql(f"DROP TABLE {table.name}")
        columns = [
            Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
            for c in table.columns
            if c.name != "redirects"
        ]
        Table(table.name, old, *columns)
    old.create_all(conn)
    conn.execute(update(schema_info).values(version=3))


def _columns(conn: Connection, name: str) -> set[str]:
    return {c["name"] for c in inspect(conn).get_columns(name)}


def _indexes(conn: Connection, name: str) -> dict[str, list[str | None]]:
    return {str(i["name"]): i["column_names"] for i in inspect(conn).get_indexes(name)}


def test_rollups_without_redirects_are_migrated(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            await conn.run_sync(_old_layout)
            for table in ROLLUPS:
                assert "redirects" not in await conn.run_sync(_columns, table.name)
        await create_schema(engine)
        await create_schema(engine)  # a second run changes nothing
        async with engine.connect() as conn:
            for table in ROLLUPS:
                assert "redirects" in await conn.run_sync(_columns, table.name)
                covering = (await conn.run_sync(_indexes, table.name)).get(
                    f"ix_{table.name}_counts"
                )
                if engine.dialect.name == "sqlite":  # counts read from the index alone
                    assert covering == ["dim_id", "bucket", "count"]
                else:  # PostgreSQL keeps HOT updates
                    assert covering is None
            version = (await conn.execute(schema_info.select())).one().version
        assert version == LATEST >= 4
        meter = UsageMeter(engine)
        for status in (200, 302, 304, 404, 429, 503):
            meter.record(call(T0 + 5, status=status))
        await meter.flush()
        body = await run_metric(
            engine,
            CATALOGUE["api_calls_by_status_class"],
            org="acme",
            environment="SANDBOX",
            start=T0,
            end=T0 + 3599,
            now=T0 + 3600,
        )
        totals = {"2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0, "unknown": 0}
        for bar in body["value"]["values"]:
            for k, v in bar["values"].items():
                totals[k] += v
        assert totals == {"2xx": 1, "3xx": 2, "4xx": 2, "5xx": 1, "unknown": 0}

    run_with(database_url, go)


def _before_unknown(conn: Connection) -> None:
    """Back to the step before the rollups' ``unknown`` counter: the column dropped (rows
    written then counted a call of status 0 among the 2xx)."""
    for table in ROLLUPS:
        conn.exec_driver_sql(f"ALTER TABLE {table.name} DROP COLUMN unknown")
    conn.execute(update(schema_info).values(version=UNKNOWN_STEP - 1))


def test_rollups_without_the_unknown_counter_are_migrated(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        await create_schema(engine)
        meter = UsageMeter(engine)
        meter.record(call(T0 + 5, status=0))
        await meter.flush()
        async with engine.begin() as conn:
            await conn.run_sync(_before_unknown)
            for table in ROLLUPS:
                assert "unknown" not in await conn.run_sync(_columns, table.name)
        await create_schema(engine)
        await create_schema(engine)  # a second run changes nothing
        async with engine.connect() as conn:
            for table in ROLLUPS:
                assert "unknown" in await conn.run_sync(_columns, table.name)
            version = (await conn.execute(schema_info.select())).one().version
        assert version == LATEST >= UNKNOWN_STEP
        meter = UsageMeter(engine)
        for status in (0, 0, 200, 503):
            meter.record(call(T0 + 65, status=status))
        await meter.flush()
        body = await run_metric(
            engine,
            CATALOGUE["api_calls_by_status_class"],
            org="acme",
            environment="SANDBOX",
            start=T0,
            end=T0 + 3599,
            now=T0 + 3600,
        )
        totals = {"2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0, "unknown": 0}
        for bar in body["value"]["values"]:
            for k, v in bar["values"].items():
                totals[k] += v
        # The old row's call of status 0 stays a 2xx; the new ones are unknown.
        assert totals == {"2xx": 2, "3xx": 0, "4xx": 0, "5xx": 1, "unknown": 2}

    run_with(database_url, go)
