"""Positions read, not counted: each job's place in its queue and the queue's counters
(schema step :func:`tollhouse.jobs.schema.add_queue_places`), on SQLite and PostgreSQL.

* A poll of a job no claim has passed runs one statement and counts no jobs, however
  deep the backlog; a job back in the queue after a claim is counted, and both agree
  with the count of the queued jobs ahead.
* A database of the layout before the step, with queued, running, retrying and finished
  jobs in it, gets places and counters that give every queued job its exact position
  right after migrating, and new jobs continue the numbering.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import Connection, event, func, inspect, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.jobs.conftest import FakeClock, database, run
from tests.jobs.test_queue import job, queue_on
from tollhouse.jobs.model import Job
from tollhouse.jobs.schema import add_queue_places, job_orgs, jobs
from tollhouse.jobs.sql import SqlJobQueue
from tollhouse.jobs.statements import row_job
from tollhouse.schema import LATEST, MIGRATIONS, create_schema
from tollhouse.storage.engine import make_engine
from tollhouse.storage.schema import schema_info

#: The step that adds places.
PLACES_STEP = next(m.version for m in MIGRATIONS if m.apply is add_queue_places)


async def _queued_in_order(engine: AsyncEngine) -> list[Job]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(select(jobs).where(jobs.c.status == "queued").order_by(jobs.c.seq))
        ).all()
    return [row_job(r) for r in rows]


async def _check_positions(q: SqlJobQueue, engine: AsyncEngine) -> int:
    """Every queued job's poll and ``get_many`` position equal the count of its queue's
    queued jobs before it + 1; returns how many queued jobs were checked."""
    queued = await _queued_in_order(engine)
    ahead: Counter[tuple[str, str]] = Counter()
    for j in queued:
        ahead[(j.org, j.environment)] += 1
        standing = await q.standing(j)
        assert standing is not None
        assert standing.position == ahead[(j.org, j.environment)], j
        page = await q.get_many(j.org, [j.id], environment=j.environment)
        assert page.standings[j.id].position == standing.position
    return len(queued)


class _Statements:
    """The SQL an engine runs while counting (every statement, as sent)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.seen: list[str] = []
        self.engine = engine

    def __enter__(self) -> _Statements:
        event.listen(self.engine.sync_engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine.sync_engine, "before_cursor_execute", self._record)

    def _record(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.strip().upper() not in ("BEGIN", "COMMIT", "ROLLBACK"):
            self.seen.append(statement)


def test_a_poll_reads_the_position_without_counting(db_url: str, clock: FakeClock) -> None:
    async def body() -> None:
        async with database(db_url) as engine:
            q = queue_on(engine, clock, default_cap=2, retry_base_seconds=10)
            accepted = await q.enqueue([job("acme", i) for i in range(30)])
            [a, b] = await q.claim("w", 2)
            await q.enqueue([job("acme", i, environment="SANDBOX") for i in range(3)])
            # The first job fails and waits out its backoff: back in the queue, ahead of
            # the 28 never claimed.
            assert await q.fail(a, {"code": "X"}, retryable=True) == "retrying"
            fresh = accepted[20].job
            with _Statements(engine) as sql:
                standing = await q.standing(fresh)
            assert standing is not None and standing.position == 1 + 18 + 1
            assert len(sql.seen) == 1
            assert "count(" not in sql.seen[0].lower()
            retried = (await q.get("acme", a.job.id, environment="PRODUCTION")) or a.job
            with _Statements(engine) as sql:
                back = await q.standing(retried)
            assert back is not None and back.position == 1
            assert any("count(" in s.lower() for s in sql.seen)  # counted: it was claimed
            assert await _check_positions(q, engine) == 29 + 3
            # A page of the newest jobs: one statement for their standings.
            clock.advance(1)
            newest = await q.enqueue([job("acme", 100 + i) for i in range(5)])
            with _Statements(engine) as sql:
                page = await q.page("acme", environment="PRODUCTION", limit=5)
            assert len(sql.seen) == 2 and all("count(" not in s.lower() for s in sql.seen)
            assert {j.id: page.standings[j.id].position for j in page.jobs} == {
                e.job.id: 30 + n for n, e in enumerate(newest)
            }
            assert await q.complete(b, {}) == "completed"
            assert await _check_positions(q, engine) == 34 + 3

    run(body())


def _before_places(conn: Connection) -> None:
    """Back to the layout before the step: no places, no ``enqueued``/``claimed_through``."""
    conn.exec_driver_sql("ALTER TABLE jobs DROP COLUMN place")
    conn.exec_driver_sql("ALTER TABLE job_orgs DROP COLUMN enqueued")
    conn.exec_driver_sql("ALTER TABLE job_orgs DROP COLUMN claimed_through")
    conn.execute(update(schema_info).values(version=PLACES_STEP - 1))


def _columns(conn: Connection, name: str) -> set[str]:
    return {c["name"] for c in inspect(conn).get_columns(name)}


def test_queued_jobs_have_exact_positions_right_after_migrating(
    db_url: str, clock: FakeClock
) -> None:
    async def body() -> None:
        engine = make_engine(db_url)
        try:
            await create_schema(engine)
            q = queue_on(engine, clock, default_cap=3, retry_base_seconds=10)
            await q.enqueue([job("acme", i) for i in range(8)])
            await q.enqueue([job("acme", i, environment="SANDBOX") for i in range(4)])
            await q.enqueue([job("globex", i) for i in range(5)])
            leases = await q.claim("w", 6)
            by_org = {}
            for x in sorted(leases, key=lambda x: -x.job.seq):  # each queue's first wins
                by_org[(x.job.org, x.job.environment)] = x
            # acme's first is retrying (queued, claimed before), globex's first completed,
            # the sandbox's first released (queued, attempts back to 0); the rest run.
            assert await q.fail(by_org[("acme", "PRODUCTION")], {"code": "X"}, retryable=True)
            assert await q.complete(by_org[("globex", "PRODUCTION")], {}) == "completed"
            assert await q.release(by_org[("acme", "SANDBOX")])
            async with engine.begin() as conn:
                await conn.run_sync(_before_places)
                assert "place" not in await conn.run_sync(_columns, "jobs")
            await create_schema(engine)
            await create_schema(engine)  # a second run changes nothing
            async with engine.connect() as conn:
                version = (await conn.execute(schema_info.select())).one().version
                counters = {
                    (r.org_id, r.environment): (r.enqueued, r.claimed_through)
                    for r in (await conn.execute(select(job_orgs))).all()
                }
                places = (
                    await conn.execute(
                        select(jobs.c.org_id, jobs.c.environment, jobs.c.place).order_by(jobs.c.seq)
                    )
                ).all()
            assert version == LATEST >= PLACES_STEP
            numbered: dict[tuple[str, str], list[int]] = {}
            for org, environment, place in places:
                numbered.setdefault((org, environment), []).append(place)
            assert numbered == {
                ("acme", "PRODUCTION"): list(range(1, 9)),
                ("acme", "SANDBOX"): list(range(1, 5)),
                ("globex", "PRODUCTION"): list(range(1, 6)),
            }
            # Claimed through: the highest place that is not queued (each queue's second
            # job runs).
            assert counters == {
                ("acme", "PRODUCTION"): (8, 2),
                ("acme", "SANDBOX"): (4, 2),
                ("globex", "PRODUCTION"): (5, 2),
            }
            q = queue_on(engine, clock, default_cap=3, retry_base_seconds=10)
            assert await _check_positions(q, engine) == 7 + 3 + 3
            # New jobs continue the numbering; their 202 position agrees with polls.
            [new] = await q.enqueue([job("acme", 99)])
            assert new.job.place == 9
            assert new.standing is not None and new.standing.position == 8
            assert (await q.standing(new.job)) == new.standing
            clock.advance(60)
            await q.claim("w", 10)
            assert await _check_positions(q, engine) > 0
        finally:
            await engine.dispose()

    run(body())


def test_a_fresh_database_goes_through_the_step_unchanged(db_url: str) -> None:
    async def body() -> None:
        engine = make_engine(db_url)
        try:
            await create_schema(engine)
            async with engine.begin() as conn:
                await conn.run_sync(add_queue_places)
                assert (await conn.execute(select(func.count()).select_from(jobs))).scalar() == 0
                assert {"enqueued", "claimed_through"} <= await conn.run_sync(_columns, "job_orgs")
        finally:
            await engine.dispose()

    run(body())
