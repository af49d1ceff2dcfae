"""The migration runner: ordered, idempotent, all-or-nothing, concurrent-safe, on both engines."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from sqlalchemy import Connection, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.storage.support import run_with
from tollhouse.errors import StorageError
from tollhouse.jobs import NewJob, open_queue
from tollhouse.jobs.schema import JOB_TABLES, create_job_schema
from tollhouse.keys.schema import api_keys, orgs
from tollhouse.keys.store import KeyStore
from tollhouse.metering import schema as usage
from tollhouse.schema import LATEST, MIGRATIONS, SCHEMA_VERSION, create_schema, migrate
from tollhouse.storage.engine import _postgres_url, make_engine
from tollhouse.storage.migrations import Migration, create_tables, schema_version
from tollhouse.storage.schema import schema_info

USAGE_TABLES = {
    usage.DIMS,
    usage.ROLLUP_1M,
    usage.ROLLUP_1H,
    usage.ROLLUP_1D,
    usage.CALLS,
    usage.EVENTS,
}


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


def test_schema_version_names_the_last_step() -> None:
    assert SCHEMA_VERSION == LATEST == MIGRATIONS[-1].version
    assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1))


def test_fresh_database_gets_every_table_and_reruns_change_nothing(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        assert await schema_version(engine) == 0
        assert await migrate(engine) == (0, LATEST)
        assert USAGE_TABLES | {"orgs", "api_keys", "tollhouse_schema"} <= await _tables(engine)
        assert await migrate(engine) == (LATEST, LATEST)
        await create_schema(engine)
        assert await schema_version(engine) == LATEST

    run_with(database_url, go, schema=False)


def test_database_made_before_the_runner_is_adopted(database_url: str) -> None:
    """The layout the first create_schema made: keys tables and version 1."""

    async def go(engine: AsyncEngine) -> None:
        def old_layout(conn: Connection) -> None:
            create_tables(conn, (schema_info, orgs, api_keys))
            conn.execute(schema_info.insert().values(id=1, version=1))
            # A key as the code of that time wrote it (no audit log yet).
            now = datetime.now(UTC)
            conn.execute(orgs.insert().values(id="acme", created_at=now))
            conn.execute(
                api_keys.insert().values(
                    id="key_old", org_id="acme", environment="SANDBOX", role="root", name="old",
                    prefix="sk_test_old0", secret_hash="0" * 64, created_at=now,
                )
            )  # fmt: skip

        async with engine.begin() as conn:
            await conn.run_sync(old_layout)
        store = KeyStore(engine)
        before = SimpleNamespace(id="key_old")
        await create_schema(engine)
        assert await schema_version(engine) == LATEST
        assert await _tables(engine) >= USAGE_TABLES
        after, _ = await store.create("acme", "live", "manager", "new")
        assert {k.id for k in await store.list_keys("acme")} == {before.id, after.id}

    run_with(database_url, go, schema=False)


def test_fresh_database_gets_the_jobs_tables_from_their_step(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        await create_schema(engine)
        assert {t.name for t in JOB_TABLES} <= await _tables(engine)
        await create_job_schema(engine)  # the queue-only path finds nothing to do
        assert await schema_version(engine) == LATEST

    run_with(database_url, go, schema=False)


@pytest.mark.parametrize("recorded", [0, 6])
def test_jobs_tables_made_before_their_step_are_adopted(database_url: str, recorded: int) -> None:
    """A database whose jobs tables create_job_schema made (one index added since missing),
    with the runner never run (0) or at the last version before the jobs step (6)."""

    async def go(engine: AsyncEngine) -> None:
        await create_job_schema(engine)
        queue = open_queue(engine)
        [accepted] = await queue.enqueue([NewJob(org="acme", route="POST /v1/score", payload={})])
        async with engine.begin() as conn:
            await conn.execute(text("DROP INDEX ix_jobs_scope_created"))
        if recorded:
            assert await migrate(engine, MIGRATIONS[:recorded]) == (0, recorded)
        assert await schema_version(engine) == recorded

        assert await migrate(engine) == (recorded, LATEST)
        async with engine.connect() as conn:
            indexes = await conn.run_sync(lambda c: inspect(c).get_indexes("jobs"))
        assert "ix_jobs_scope_created" in {ix["name"] for ix in indexes}
        job = await queue.get("acme", accepted.job.id, environment="PRODUCTION")
        assert job is not None and job.state == "queued"
        assert await migrate(engine) == (LATEST, LATEST)

    run_with(database_url, go, schema=False)


def test_a_failing_step_leaves_the_database_as_it_was(database_url: str) -> None:
    def broken(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE half_done (id INTEGER PRIMARY KEY)"))
        raise RuntimeError("step 2 failed")

    steps = (MIGRATIONS[0], Migration(2, "breaks", broken))

    async def go(engine: AsyncEngine) -> None:
        with pytest.raises(RuntimeError, match="step 2 failed"):
            await migrate(engine, steps)
        assert "half_done" not in await _tables(engine)
        assert await schema_version(engine) in (0, 1)  # SQLite creates the version table early
        assert await migrate(engine) == (0, LATEST)

    run_with(database_url, go, schema=False)


def test_concurrent_migrations_apply_each_step_once(database_url: str) -> None:
    applied: list[int] = []

    def counting(step: Migration) -> Migration:
        def apply(conn: Connection) -> None:
            applied.append(step.version)
            step.apply(conn)

        return Migration(step.version, step.name, apply)

    steps = tuple(counting(m) for m in MIGRATIONS)

    async def go(_: AsyncEngine) -> None:
        engines = [make_engine(database_url) for _ in range(4)]
        try:
            results = await asyncio.gather(*(migrate(e, steps) for e in engines))
        finally:
            for e in engines:
                await e.dispose()
        assert sorted(applied) == [m.version for m in MIGRATIONS]
        assert sorted(r[1] for r in results) == [LATEST] * 4
        assert sum(1 for r in results if r[0] == 0) == 1

    run_with(database_url, go, schema=False)


def test_version_row_is_single(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        await create_schema(engine)
        async with engine.connect() as conn:
            rows = (await conn.execute(select(schema_info))).all()
        assert [(r.id, r.version) for r in rows] == [(1, LATEST)]

    run_with(database_url, go)


def test_unreachable_database_is_a_storage_error() -> None:
    async def go() -> None:
        engine = make_engine("postgresql://nobody@127.0.0.1:9/none")
        try:
            with pytest.raises(StorageError):
                await migrate(engine)
        finally:
            await engine.dispose()

    asyncio.run(go())


def test_postgres_urls_are_translated_for_asyncpg() -> None:
    url, args = _postgres_url("postgres://u:p@db:5433/app?sslmode=require&application_name=x")
    assert url == "postgresql+asyncpg://u:p@db:5433/app?application_name=x"
    assert args["ssl"] == "require"
    assert args["server_settings"]["timezone"] == "UTC"
    url, args = _postgres_url("postgresql://db/app?sslmode=disable")
    assert url == "postgresql+asyncpg://db/app" and "ssl" not in args
