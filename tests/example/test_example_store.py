"""The example upstream's store, on SQLite and PostgreSQL: scoping by org and environment,
bounds, atomic changes from several processes, and what a round trip keeps."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Table, event, func, inspect, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import free_port
from tests.storage.support import run_with
from tollhouse.errors import NotFound, StorageError
from tollhouse.example.schema import EXAMPLE_TABLES, example_jobs, example_results
from tollhouse.example.scoring import CriterionScore
from tollhouse.example.store import (
    Criterion,
    ExampleStore,
    JobChange,
    JobCriteria,
    Owner,
    ScoreResult,
    criterion_id,
    question_id,
)
from tollhouse.schema import LATEST
from tollhouse.storage.engine import make_engine
from tollhouse.storage.migrations import schema_version

NOW = datetime(2025, 1, 15, 10, 30, 0, 123456, tzinfo=UTC)
A = Owner("a")
A_SANDBOX = Owner("a", "SANDBOX")
A_LIVE = Owner("a", "PRODUCTION")
B = Owner("b")


def _job(job_id: str, *names: str) -> JobCriteria:
    return JobCriteria(
        job_id, tuple(Criterion(f"crit_{n}", n, "", 1.0) for n in (names or ("Python",)))
    )


def _result(scoring_job_id: str, application_id: str) -> ScoreResult:
    return ScoreResult(scoring_job_id, application_id, "job", 50.0, (), NOW)


async def _count(engine: AsyncEngine, t: Table, owner: Owner) -> int:
    async with engine.connect() as conn:
        found = await conn.execute(
            select(func.count())
            .select_from(t)
            .where(t.c.org == owner.org, t.c.environment == owner.environment)
        )
        return int(found.scalar_one())


def test_ids_are_sha1_of_org_job_and_name() -> None:
    digest = hashlib.sha1(b"acmejob-1Python").hexdigest()[:12]
    assert criterion_id("acme", "job-1", "Python") == "crit_" + digest
    assert question_id("acme", "job-1", "Python") == "q_" + digest


def test_bounds_must_be_positive(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'unused.db'}")  # never connected
    with pytest.raises(ValueError, match="at least 1"):
        ExampleStore(engine, max_jobs_per_org=0)
    with pytest.raises(ValueError, match="at least 1"):
        ExampleStore(engine, max_results_per_org=0)


def test_the_tables_come_from_a_migration_step(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        assert await schema_version(engine) == 0
        await ExampleStore(engine).prepare()
        assert await schema_version(engine) == LATEST
        async with engine.connect() as conn:
            names = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        assert {t.name for t in EXAMPLE_TABLES} <= names

    run_with(database_url, go, schema=False)


def test_owners_do_not_see_each_others_data(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        store = ExampleStore(engine)
        await store.replace_job(A_SANDBOX, _job("j"))
        await store.save_results(A_SANDBOX, [_result("sj_1", "app")])
        for other in (B, A, A_LIVE, Owner("b", "SANDBOX")):
            assert await store.get_job(other, "j") is None
            assert await store.get_jobs(other, ["j"]) == {}
            assert await store.get_result(other, "sj_1") is None
            assert await store.latest_result(other, "app") is None
            assert not await store.delete_job(other, "j")
        assert await store.get_job(A_SANDBOX, "j") == _job("j")
        assert (await store.get_jobs(A_SANDBOX, ["j", "nope"])).keys() == {"j"}
        # The same job id elsewhere is another job.
        await store.replace_job(A_LIVE, _job("j", "Go"))
        assert await store.get_job(A_SANDBOX, "j") == _job("j")

    run_with(database_url, go)


def test_jobs_past_the_bound_go_least_recently_changed_first(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        store = ExampleStore(engine, max_jobs_per_org=2)
        await store.replace_job(A, _job("j1"))
        await store.replace_job(A, _job("j2"))
        # j1 changed again: j2 is now the oldest.
        await store.change_job(A, "j1", lambda job: _job("j1", "Python", "Go"))
        await store.replace_job(A, _job("j3"))
        assert await store.get_job(A, "j2") is None
        assert await store.get_job(A, "j1") is not None
        assert await store.get_job(A, "j3") is not None
        await store.replace_job(B, _job("j9"))  # bounds are per owner
        await store.replace_job(A_SANDBOX, _job("j9"))
        assert await store.get_job(A, "j1") is not None
        assert await _count(engine, example_jobs, A) == 2

    run_with(database_url, go)


def test_results_past_the_bound_go_oldest_first(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        store = ExampleStore(engine, max_results_per_org=2)
        await store.save_results(A, [_result("sj_1", "app-1")])
        await store.save_results(A, [_result("sj_2", "app-2")])
        await store.save_results(A, [_result("sj_3", "app-2")])
        assert await store.get_result(A, "sj_1") is None
        assert await store.latest_result(A, "app-1") is None
        latest = await store.latest_result(A, "app-2")
        assert latest is not None and latest.scoring_job_id == "sj_3"
        # A batch keeps its order: its last result of an application is the latest.
        await store.save_results(B, [_result("sj_4", "app"), _result("sj_5", "app")])
        latest = await store.latest_result(B, "app")
        assert latest is not None and latest.scoring_job_id == "sj_5"

    run_with(database_url, go)


def test_large_bounds_are_kept_within_a_few_percent(database_url: str) -> None:
    """Past 100, pruning runs on about one write in (bound ÷ 100): an owner never goes
    below its bound, and overshoots it by a few rows at most."""

    async def go(engine: AsyncEngine) -> None:
        store = ExampleStore(engine, max_results_per_org=300)
        for i in range(400):
            await store.save_results(A, [_result(f"sj_{i}", f"app-{i}")])
        kept = await _count(engine, example_results, A)
        # Each write prunes with a chance of 1/3: 60 writes in a row without one would
        # happen once in 10^10 runs.
        assert 300 <= kept <= 360
        assert await store.get_result(A, "sj_399") is not None

    run_with(database_url, go)


def test_results_keep_everything_the_api_shows(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        store = ExampleStore(engine)
        breakdown = (
            CriterionScore("crit_1", "Python", 0.3333333333333333, 87.5, ("Python", "python")),
            CriterionScore("crit_2", "Go \u2014 \u00e9t\u00e9 \U0001f600", 0.1, 0.0, ()),
        )
        result = ScoreResult("sj_0123456789abcdef", "app-\u00e9", "job-1", 61.3, breakdown, NOW)
        await store.save_results(A, [result])
        assert await store.get_result(A, result.scoring_job_id) == result
        assert await store.latest_result(A, "app-\u00e9") == result

    run_with(database_url, go)


def test_change_job_is_atomic_across_processes(database_url: str) -> None:
    """Two stores on their own engines (two processes, as far as the database can tell)
    add criteria to one job at once, the first ones racing to create it: none is lost."""

    async def go(engine: AsyncEngine) -> None:
        other = make_engine(database_url)
        try:
            stores = [ExampleStore(engine), ExampleStore(other)]
            await asyncio.gather(*(s.prepare() for s in stores))

            def add(name: str) -> JobChange:
                def change(job: JobCriteria | None) -> JobCriteria:
                    job = job or JobCriteria("j", ())
                    criterion = Criterion(f"crit_{name}", name, "", 0.1)
                    return replace(job, criteria=(*job.criteria, criterion))

                return change

            names = [f"c{i}" for i in range(20)]
            await asyncio.gather(
                *(stores[i % 2].change_job(A, "j", add(name)) for i, name in enumerate(names))
            )
            job = await stores[1].get_job(A, "j")
            assert job is not None
            assert sorted(c.name for c in job.criteria) == sorted(names)
        finally:
            await other.dispose()

    run_with(database_url, go)


def test_a_change_that_raises_changes_nothing(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        store = ExampleStore(engine)
        await store.replace_job(A, _job("j"))

        def refuse(job: JobCriteria | None) -> JobCriteria:
            raise NotFound("no")

        with pytest.raises(NotFound):
            await store.change_job(A, "j", refuse)
        with pytest.raises(NotFound):
            await store.change_job(A, "new", refuse)
        assert await store.get_job(A, "j") == _job("j")
        assert await store.get_job(A, "new") is None
        # Returning the job as it was writes nothing and reports it.
        same = await store.get_job(A, "j")
        assert await store.change_job(A, "j", lambda job: job or _job("x")) == same

    run_with(database_url, go)


def test_delete_needs_criteria_and_leaves_results(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        store = ExampleStore(engine)
        await store.replace_job(A, _job("j"))
        await store.save_results(A, [_result("sj_1", "app")])
        emptied = await store.change_job(A, "j", lambda job: JobCriteria("j", (), NOW))
        assert emptied.criteria == () and emptied.archived_at == NOW
        assert not await store.delete_job(A, "j")  # no criteria: nothing to delete
        await store.change_job(A, "j", lambda job: _job("j"))
        assert await store.delete_job(A, "j")
        assert await store.get_job(A, "j") is None
        assert await store.get_result(A, "sj_1") is not None

    run_with(database_url, go)


class _Statements:
    """Counts the statements an engine sends that touch one table."""

    def __init__(self, engine: AsyncEngine, verb: str, table: Table) -> None:
        self.count = 0
        self.verb, self.table = verb, table.name
        event.listen(engine.sync_engine, "before_cursor_execute", self._seen)

    def _seen(self, *args: Any) -> None:
        statement = str(args[2]).lstrip().upper()
        if statement.startswith(self.verb) and self.table.upper() in statement:
            self.count += 1


def test_concurrent_reads_and_writes_share_statements(database_url: str) -> None:
    """Requests arriving together share one SELECT and one INSERT, and each still gets
    its own answer."""

    async def go(engine: AsyncEngine) -> None:
        store = ExampleStore(engine)
        await store.prepare()
        await store.replace_job(A, _job("j1"))
        await store.replace_job(B, _job("j2", "Go"))
        reads = _Statements(engine, "SELECT", example_jobs)
        asked = [(A, "j1"), (B, "j2"), (A, "j2"), (A_SANDBOX, "j1"), (B, "j2")] * 20
        found = await asyncio.gather(*(store.get_job(o, j) for o, j in asked))
        expected = {(A, "j1"): _job("j1"), (B, "j2"): _job("j2", "Go")}
        assert found == [expected.get(key) for key in asked]
        assert 1 <= reads.count <= 2

        inserts = _Statements(engine, "INSERT", example_results)
        results = [_result(f"sj_{i}", f"app-{i % 7}") for i in range(100)]
        await asyncio.gather(*(store.save_results(A, [r]) for r in results))
        assert 1 <= inserts.count <= 2
        for r in (results[0], results[99]):
            assert await store.get_result(A, r.scoring_job_id) == r
        latest = await store.latest_result(A, "app-1")
        assert latest is not None and latest.scoring_job_id == "sj_99"  # 99 % 7 == 1

    run_with(database_url, go)


def test_a_failing_shared_statement_fails_every_caller() -> None:
    async def go() -> None:
        engine = make_engine(f"postgresql://nobody@127.0.0.1:{free_port()}/none")
        try:
            store = ExampleStore(engine)
            store._prepared = True  # the point is the shared read, not the migration
            outcomes = await asyncio.gather(
                *(store.get_job(A, f"j{i}") for i in range(5)), return_exceptions=True
            )
            assert all(isinstance(o, StorageError) for o in outcomes), outcomes
        finally:
            await engine.dispose()

    asyncio.run(go())
