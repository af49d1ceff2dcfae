"""Retention: finished jobs and finished webhook deliveries (with their attempts) are
deleted after their configured age; nothing unfinished ever is. An injected clock moves
the days."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from tests.jobs.conftest import FakeClock, database, run
from tests.jobs.test_worker import until
from tollhouse.jobs import Dispatcher, Job, NewJob, QueueSettings, open_queue
from tollhouse.jobs.schema import job_volume, webhook_attempts, webhook_deliveries
from tollhouse.jobs.webhook_store import WebhookStore
from tollhouse.jobs.webhooks import AttemptResult

DAY = 86400.0


def _new(n: int) -> list[NewJob]:
    return [NewJob(org="acme", route="POST /v1/score", payload={"n": i}) for i in range(n)]


async def _count(engine: Any, table: Any) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


def test_prune_deletes_only_finished_rows_past_their_age(db_url: str) -> None:
    clock = FakeClock()

    async def go() -> None:
        async with database(db_url) as engine:
            # One row per transaction: the prune loops until nothing old is left.
            settings = QueueSettings(
                jobs_retention_days=60, deliveries_retention_days=30, prune_batch=1
            )
            queue = open_queue(engine, settings, clock=clock)
            store = WebhookStore(engine, clock=clock, allow_private_targets=True)
            await store.add_endpoint("acme", "http://127.0.0.1:9/hooks")
            done, failed, dead, running, queued = (e.job for e in await queue.enqueue(_new(5)))
            leases = {lease.job.id: lease for lease in await queue.claim("w", 4)}
            await queue.complete(leases[done.id], {})
            await queue.fail(leases[failed.id], {"code": "NO"}, retryable=False)
            await queue.fail(leases[dead.id], {"code": "NO"}, retryable=False)
            # Three deliveries staged: one delivered, one given up, one still retrying.
            tasks = await store.claim(10)
            assert len(tasks) == 3
            by_job = {}
            for task in tasks:
                async with engine.connect() as conn:
                    by_job[
                        (
                            await conn.execute(
                                select(webhook_deliveries.c.job_id).where(
                                    webhook_deliveries.c.id == task.id
                                )
                            )
                        ).scalar_one()
                    ] = task
            await store.record(by_job[done.id], AttemptResult(200, 1.0, None), clock())
            # A store with a one-attempt schedule gives up at the first failure.
            once = WebhookStore(engine, clock=clock, schedule=(0,), allow_private_targets=True)
            await once.record(by_job[failed.id], AttemptResult(500, 1.0, "HTTP 500"), clock())
            await store.record(by_job[dead.id], AttemptResult(500, 1.0, "HTTP 500"), clock())
            assert await _count(engine, webhook_attempts) == 3

            finished_at = clock()
            clock.advance(29 * DAY)
            # The rollup's minute row is past any range; its hour row stays.
            assert await queue.prune() == {
                "jobs": 0,
                "job_volume": 1,
                "webhook_deliveries": 0,
                "webhook_attempts": 0,
            }
            clock.advance(2 * DAY)
            assert await queue.prune() == {
                "jobs": 0,
                "job_volume": 0,
                "webhook_deliveries": 2,
                "webhook_attempts": 2,
            }
            left = await store.deliveries("acme", environment="PRODUCTION")
            assert [d.job_id for d in left] == [dead.id] and left[0].status == "pending"

            clock.advance(30 * DAY)
            assert await queue.prune() == {
                "jobs": 3,
                "job_volume": 0,
                "webhook_deliveries": 0,
                "webhook_attempts": 0,
            }
            # Queued and running jobs stay, however old; so does the org's counters row.
            for job in (done, failed, dead):
                assert await queue.get("acme", job.id, environment="PRODUCTION") is None
            still_running = await queue.get("acme", running.id, environment="PRODUCTION")
            assert still_running is not None and still_running.state == "running"
            still_queued = await queue.get("acme", queued.id, environment="PRODUCTION")
            assert still_queued is not None and still_queued.state == "queued"
            [counters] = await queue.counters()
            assert (counters.running, counters.queued) == (1, 1)
            assert await _count(engine, webhook_attempts) == 1
            assert sum((await queue.prune()).values()) == 0
            # The pruned jobs are still counted by the scoring volume (the rollup keeps
            # its hour rows 92 days), then trimmed once no range reaches them.
            day = finished_at.replace(hour=0, minute=0, second=0, microsecond=0)
            assert await queue.volume("acme", day, clock(), "day", environment="PRODUCTION") == [
                (day, 1, 2)
            ]
            clock.advance(32 * DAY)
            assert (await queue.prune())["job_volume"] == 1
            assert await _count(engine, job_volume) == 0

    run(go())


def test_none_keeps_forever(sqlite_url: str) -> None:
    clock = FakeClock()

    async def go() -> None:
        async with database(sqlite_url) as engine:
            settings = QueueSettings(jobs_retention_days=None, deliveries_retention_days=None)
            queue = open_queue(engine, settings, clock=clock)
            await queue.enqueue(_new(1))
            [lease] = await queue.claim("w", 1)
            await queue.complete(lease, {})
            clock.advance(10_000 * DAY)
            # Only the rollup's rows (minute and hour) go: no range reads them.
            assert await queue.prune() == {
                "jobs": 0,
                "job_volume": 2,
                "webhook_deliveries": 0,
                "webhook_attempts": 0,
            }
            assert await queue.get("acme", lease.job.id, environment="PRODUCTION") is not None

    run(go())


@pytest.mark.parametrize("field", ["jobs_retention_days", "deliveries_retention_days"])
def test_retention_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        QueueSettings(**{field: 0})


def test_the_dispatcher_prunes_in_its_housekeeping_loop(sqlite_url: str) -> None:
    clock = FakeClock()

    async def handler(job: Job) -> dict[str, Any]:
        return {}

    async def go() -> None:
        async with database(sqlite_url) as engine:
            queue = open_queue(engine, QueueSettings(jobs_retention_days=1), clock=clock)
            [accepted] = await queue.enqueue(_new(1))
            d = Dispatcher(queue, handler, poll_interval=0.02, prune_interval=0.02)
            await d.start()
            try:

                async def finished() -> bool:
                    job = await queue.get("acme", accepted.job.id, environment="PRODUCTION")
                    return job is not None and job.state == "completed"

                await until(finished, "the job to finish")
                clock.advance(2 * DAY)

                async def gone() -> bool:
                    return (
                        await queue.get("acme", accepted.job.id, environment="PRODUCTION") is None
                    )

                await until(gone, "the finished job to be pruned")
            finally:
                await d.stop()

    run(go())
