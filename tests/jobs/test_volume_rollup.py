"""The scoring volume from the finished-jobs rollup (``job_volume``), on SQLite and
PostgreSQL.

* Jobs of two orgs in both environments finish over several days — completed, failed,
  dead after retries, dead when their lease ran out — and ``GET
  /v1/analytics/scoring-volume`` answers every ``timeRange`` for every scope exactly as
  a count of the finished jobs in the jobs table does.
* A database of the layout before the step (finished jobs, no rollup) gets a rollup
  that gives the same answers right after migrating, and later finishes add to its rows.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.jobs.conftest import FakeClock, run
from tests.jobs.test_jobs_app import POLICY, AsGateway
from tollhouse.http.jobs_app import create_jobs_app
from tollhouse.jobs import NewJob, QueueSettings, open_queue
from tollhouse.jobs.queue import JobQueue
from tollhouse.jobs.schema import add_volume_rollup, job_volume, jobs
from tollhouse.jobs.volume import TIME_RANGES, floor_to, volume_body, window
from tollhouse.jobs.webhook_store import WebhookStore
from tollhouse.schema import LATEST, MIGRATIONS, create_schema
from tollhouse.storage.engine import make_engine
from tollhouse.storage.schema import schema_info
from tollhouse.times import as_utc

#: The step that adds the rollup.
ROLLUP_STEP = next(m.version for m in MIGRATIONS if m.apply is add_volume_rollup)
SCOPES = [(org, env) for org in ("acme", "globex") for env in ("PRODUCTION", "SANDBOX")]
SETTINGS = QueueSettings(default_cap=4, max_attempts=2, lease_seconds=30, retry_base_seconds=5)


@asynccontextmanager
async def _client(engine: AsyncEngine, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    queue = open_queue(engine, SETTINGS, clock=clock)
    webhooks = WebhookStore(engine, allow_private_targets=True, clock=clock)
    app = create_jobs_app(queue=queue, policy=POLICY, webhooks=webhooks, clock=clock)
    transport = httpx.ASGITransport(app=AsGateway(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client


async def _work(
    queue: JobQueue,
    clock: FakeClock,
    steps: int,
    rng: random.Random,
    moves: tuple[float, ...] = (20.0, 45.0, 600.0, 3600.0, 5 * 3600.0),
) -> None:
    """Jobs of every scope enqueued, claimed and ended every way, the clock moving
    minutes to hours between steps (several days in all)."""
    for step in range(steps):
        org, environment = SCOPES[step % len(SCOPES)]
        # Unequal volumes per scope, so a count that crosses scopes shows.
        n = 1 + SCOPES.index((org, environment)) + rng.randrange(3)
        await queue.enqueue(
            [
                NewJob(org=org, route="POST /v1/score", payload={}, environment=environment)
                for _ in range(n)
            ]
        )
        for lease in await queue.claim("w", 6):
            roll = rng.random()
            if roll < 0.55:
                await queue.complete(lease, {"score": 1})
            elif roll < 0.7:
                await queue.fail(lease, {"code": "BAD"}, retryable=False)
            elif roll < 0.9:
                await queue.fail(lease, {"code": "BUSY"}, retryable=True)
            # else: abandoned; the reaper requeues it, or ends it dead.
        clock.advance(rng.choice(moves))
        await queue.reap()


async def _raw_bodies(engine: AsyncEngine, now: Any) -> dict[tuple[str, str, str], Any]:
    """Every scope's and range's answer counted from the jobs table."""
    async with engine.connect() as conn:
        done = (
            await conn.execute(
                select(jobs.c.org_id, jobs.c.environment, jobs.c.status, jobs.c.finished_at).where(
                    jobs.c.status.in_(("completed", "failed", "dead"))
                )
            )
        ).all()
    out = {}
    for org, environment in SCOPES:
        for time_range in TIME_RANGES:
            start, end, granularity = window(time_range, now)
            counted: dict[Any, list[int]] = {}
            for o, e, status, finished_at in done:
                at = as_utc(finished_at)
                if (o, e) == (org, environment) and start <= at <= end:
                    row = counted.setdefault(floor_to(at, granularity), [0, 0])
                    row[status != "completed"] += 1
            counts = [(b, c, f) for b, (c, f) in counted.items()]
            out[(org, environment, time_range)] = volume_body(start, end, granularity, counts)
    return out


async def _answers(client: httpx.AsyncClient) -> dict[tuple[str, str, str], Any]:
    out = {}
    for org, environment in SCOPES:
        for time_range in TIME_RANGES:
            r = await client.get(
                "/v1/analytics/scoring-volume",
                params={"timeRange": time_range},
                headers={"x-test-org": org, "x-test-env": environment},
            )
            assert r.status_code == 200, r.text
            out[(org, environment, time_range)] = r.json()
    return out


async def _statuses(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status))
        return {status: n for status, n in rows}


async def _finish_all(queue: JobQueue) -> None:
    """A job for acme's production, then every job claimable now completed."""
    await queue.enqueue([NewJob(org="acme", route="POST /v1/score", payload={})])
    leases = await queue.claim("w", 100)
    assert any(x.job.org == "acme" for x in leases)
    for x in leases:
        await queue.complete(x, {})


def _totals(bodies: dict[tuple[str, str, str], Any], time_range: str) -> list[int]:
    return [sum(p["total"] for p in bodies[(org, env, time_range)]["data"]) for org, env in SCOPES]


def test_the_route_answers_what_the_jobs_table_counts(db_url: str) -> None:
    clock = FakeClock()

    async def body() -> None:
        engine = make_engine(db_url)
        try:
            await create_schema(engine)
            queue = open_queue(engine, SETTINGS, clock=clock)
            await _work(queue, clock, 60, random.Random(20))
            statuses = await _statuses(engine)
            # Every way to finish happened.
            assert {"completed", "failed", "dead"} <= set(statuses), statuses
            raw = await _raw_bodies(engine, clock())
            async with _client(engine, clock) as client:
                answers = await _answers(client)
            assert answers == raw
            # Every scope has its own, different volume: isolation is checked, not empty.
            totals = _totals(raw, "90d")
            assert all(totals) and len(set(totals)) == len(totals), totals
            assert sum(totals) == sum(statuses[s] for s in ("completed", "failed", "dead"))
            # The short ranges are not empty either (minute and hour rows are read).
            clock.advance(30)
            await _work(queue, clock, 4, random.Random(3), moves=(20.0, 45.0))
            raw = await _raw_bodies(engine, clock())
            assert sum(_totals(raw, "1h")) > 0 and sum(_totals(raw, "24h")) > 0
            async with _client(engine, clock) as client:
                assert await _answers(client) == raw
        finally:
            await engine.dispose()

    run(body())


def test_the_step_builds_the_rollup_from_finished_jobs(db_url: str) -> None:
    clock = FakeClock()

    async def body() -> None:
        engine = make_engine(db_url)
        try:
            await create_schema(engine)
            queue = open_queue(engine, SETTINGS, clock=clock)
            await _work(queue, clock, 40, random.Random(9))
            # Nothing left running; jobs finish now, in the minute and hour the next
            # finish (after the step) lands in too.
            clock.advance(SETTINGS.lease_seconds + 1)
            await queue.reap()
            await _finish_all(queue)
            before = await _raw_bodies(engine, clock())
            # Back to the layout before the step: finished jobs, no rollup.
            async with engine.begin() as conn:
                await conn.exec_driver_sql("DROP TABLE job_volume")
                await conn.execute(update(schema_info).values(version=ROLLUP_STEP - 1))
            await create_schema(engine)
            await create_schema(engine)  # a second run changes nothing
            async with engine.connect() as conn:
                version = (await conn.execute(schema_info.select())).one().version
            assert version == LATEST >= ROLLUP_STEP
            async with _client(engine, clock) as client:
                assert await _answers(client) == before
                assert sum(_totals(before, "1h")) > 0 and all(_totals(before, "90d"))
                # Jobs finishing in the same minute add to the rows the step built
                # (no twin row of another spelling of the same bucket).
                await _finish_all(queue)
                async with engine.connect() as conn:
                    rows = (
                        await conn.execute(
                            select(job_volume).where(
                                job_volume.c.org_id == "acme",
                                job_volume.c.environment == "PRODUCTION",
                            )
                        )
                    ).all()
                keys = [(r.span, as_utc(r.bucket)) for r in rows]
                assert len(keys) == len(set(keys))
                assert ("minute", floor_to(clock(), "minute")) in keys
                after = await _raw_bodies(engine, clock())
                assert after != before
                assert await _answers(client) == after
        finally:
            await engine.dispose()

    run(body())
