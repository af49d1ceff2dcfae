"""Jobs emit their own product events: one ``job`` event per finished job, in the
``product_events`` table ``POST /v1/events`` writes, never counted twice."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from tests.jobs.conftest import FakeClock, database, run
from tollhouse.analytics.events import epoch_us
from tollhouse.jobs import NewJob, QueueSettings, open_queue
from tollhouse.jobs.events import record_job_events
from tollhouse.metering.schema import product_events


def _new(org: str, n: int = 1) -> list[NewJob]:
    return [
        NewJob(org=org, route="POST /v1/score", payload={}, environment="PRODUCTION")
        for _ in range(n)
    ]


async def _events(engine: Any) -> dict[str, Any]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(product_events))).all()
    return {r.event_id: r for r in rows}


def test_finished_jobs_record_one_event_each(db_url: str) -> None:
    clock = FakeClock()

    async def go() -> None:
        async with database(db_url) as engine:
            settings = QueueSettings(max_attempts=2, lease_seconds=10)
            queue = open_queue(engine, settings, clock=clock)
            ok, bad, flaky, lost = (e.job for e in await queue.enqueue(_new("acme", 4)))
            clock.advance(2)
            leases = {lease.job.id: lease for lease in await queue.claim("w", 4)}
            await queue.enqueue(_new("other"))  # queued, never finished: no event
            clock.advance(3)
            assert await queue.complete(leases[ok.id], {"score": 1}) == "completed"
            assert await queue.fail(leases[bad.id], {"code": "NO"}, retryable=False) == "failed"
            # A retry is not an outcome: no event yet.
            assert await queue.fail(leases[flaky.id], {"code": "X"}, retryable=True) == "retrying"
            assert set(await _events(engine)) == {ok.id, bad.id}
            clock.advance(60)
            # `lost`'s lease expired: requeued once, then dead at its second expiry.
            assert await queue.reap() == 1
            for _ in range(2):
                for lease in await queue.claim("w", 4):
                    if lease.job.org == "other":
                        await queue.release(lease)
                    elif lease.job.id == flaky.id:
                        assert await queue.fail(lease, {"code": "X"}, retryable=True) == "dead"
                clock.advance(60)
            assert await queue.reap() == 1
            events = await _events(engine)
            assert set(events) == {ok.id, bad.id, flaky.id, lost.id}
            done = events[ok.id]
            assert (done.org, done.environment, done.type) == ("acme", "PRODUCTION", "job")
            assert done.data == {
                "job_id": ok.id,
                "route": "POST /v1/score",
                "status": "completed",
                "attempts": 1,
                "duration_ms": 3000.0,
                "queue_ms": 2000.0,
            }
            assert (done.status, done.duration_us) == ("completed", 3_000_000)
            assert done.time_us == epoch_us(ok.created_at) + 5_000_000
            assert events[bad.id].data["status"] == "failed"
            # Dead jobs read as failed, as on the wire.
            assert events[flaky.id].data["status"] == "failed"
            assert events[flaky.id].data["attempts"] == 2
            assert events[lost.id].data["status"] == "failed"
            assert events[lost.id].status == "failed"

    run(go())


def test_a_job_is_never_counted_twice(db_url: str) -> None:
    clock = FakeClock()

    async def go() -> None:
        async with database(db_url) as engine:
            queue = open_queue(engine, clock=clock)
            await queue.enqueue(_new("acme"))
            [lease] = await queue.claim("w", 1)
            await queue.complete(lease, {})
            # A replayed outcome is refused by the fencing token; a second write of the
            # same job's event (the reaper racing a worker) is ignored by (org, id).
            assert await queue.complete(lease, {}) is None
            job = await queue.get("acme", lease.job.id, environment="PRODUCTION")
            assert job is not None
            before = await _events(engine)
            clock.advance(60)
            async with engine.begin() as conn:
                await record_job_events(conn, [job], clock())
            after = await _events(engine)
            assert len(after) == 1
            assert after[job.id].received_us == before[job.id].received_us

    run(go())
