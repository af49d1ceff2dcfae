"""The SQL job queue's contract, on SQLite and PostgreSQL, with an injected clock."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from tests.jobs.conftest import FakeClock, database, run
from tollhouse.jobs import NewJob, QueueSettings, open_queue
from tollhouse.jobs.model import Finish, IdempotencyKeyReused
from tollhouse.jobs.sql import SqlJobQueue
from tollhouse.jobs.webhook_store import WebhookStore

ROUTE = "POST /v1/score"


def job(org: str, i: int, **kw: object) -> NewJob:
    return NewJob(org=org, route=ROUTE, payload={"i": i, "applicationId": f"app_{i}"}, **kw)  # type: ignore[arg-type]


def queue_on(engine: object, clock: FakeClock, **settings: object) -> SqlJobQueue:
    q = open_queue(engine, QueueSettings(**settings), clock=clock, rng=random.Random(7))  # type: ignore[arg-type]
    assert isinstance(q, SqlJobQueue)
    return q


def test_fifo_per_org_and_cap(db_url: str, clock: FakeClock) -> None:
    async def body() -> None:
        async with database(db_url) as engine:
            q = queue_on(engine, clock, default_cap=3)
            await q.enqueue([job("acme", i) for i in range(5)])
            first = await q.claim("w1", 10)
            assert [lease.job.payload["i"] for lease in first] == [0, 1, 2]
            assert await q.claim("w2", 10) == []  # at the cap
            assert await q.complete(first[1], {"ok": True}) == "completed"
            nxt = await q.claim("w2", 10)
            assert [lease.job.payload["i"] for lease in nxt] == [3]
            [c] = await q.counters()
            assert (c.running, c.queued) == (3, 1)

    run(body())


def test_round_robin_across_orgs(db_url: str, clock: FakeClock) -> None:
    async def body() -> None:
        async with database(db_url) as engine:
            q = queue_on(engine, clock, default_cap=100)
            await q.enqueue([job("big", i) for i in range(20)])
            await q.enqueue([job("small", i) for i in range(2)])
            got = await q.claim("w", 4)
            orgs = sorted(lease.job.org for lease in got)
            assert orgs == ["big", "big", "small", "small"]
            # A claim of one slot at a time alternates between the orgs with work.
            clock.advance(1)
            await q.enqueue([job("small", 9)])
            served = []
            for _ in range(2):
                clock.advance(1)
                [lease] = await q.claim("w", 1)
                served.append(lease.job.org)
            assert sorted(served) == ["big", "small"]

    run(body())


def test_per_org_cap_override(db_url: str, clock: FakeClock) -> None:
    async def body() -> None:
        async with database(db_url) as engine:
            q = queue_on(engine, clock, default_cap=5)
            await q.set_cap("acme", 1)
            await q.enqueue([job("acme", i) for i in range(3)])
            assert len(await q.claim("w", 10)) == 1
            await q.set_cap("acme", None)
            assert len(await q.claim("w", 10)) == 2

    run(body())


def test_stale_token_is_fenced_after_reap(db_url: str, clock: FakeClock) -> None:
    async def body() -> None:
        async with database(db_url) as engine:
            q = queue_on(engine, clock, lease_seconds=10, retry_base_seconds=1)
            await q.enqueue([job("acme", 0)])
            [old] = await q.claim("w1", 1)
            clock.advance(11)
            assert await q.reap() == 1
            assert await q.heartbeat([old]) == set()
            clock.advance(5)  # past the backoff
            [new] = await q.claim("w2", 1)
            assert new.job.id == old.job.id and new.token != old.token
            assert new.job.attempts == 2
            assert await q.complete(old, {"late": True}) is None
            assert await q.fail(old, {"code": "X"}, retryable=True) is None
            assert await q.release(old) is False
            assert await q.complete(new, {"ok": True}) == "completed"
            done = await q.get("acme", new.job.id, environment="PRODUCTION")
            assert done is not None and done.result == {"ok": True} and done.state == "completed"

    run(body())


def test_heartbeat_keeps_the_lease(db_url: str, clock: FakeClock) -> None:
    async def body() -> None:
        async with database(db_url) as engine:
            q = queue_on(engine, clock, lease_seconds=10)
            await q.enqueue([job("acme", 0)])
            [lease] = await q.claim("w", 1)
            for _ in range(5):
                clock.advance(6)
                assert await q.heartbeat([lease]) == {lease.job.id}
                assert await q.reap() == 0
            assert await q.complete(lease, {}) == "completed"

    run(body())


def test_retries_back_off_then_dead(db_url: str, clock: FakeClock) -> None:
    async def body() -> None:
        async with database(db_url) as engine:
            q = queue_on(
                engine, clock, max_attempts=3, retry_base_seconds=10, retry_max_seconds=100
            )
            [e] = await q.enqueue([job("acme", 0)])
            outcomes = []
            for attempt in range(1, 4):
                [lease] = await q.claim("w", 1)
                assert lease.job.attempts == attempt
                outcomes.append(await q.fail(lease, {"code": "BOOM"}, retryable=True))
                if attempt < 3:
                    assert await q.claim("w", 1) == []  # backing off
                    waiting = await q.get("acme", e.job.id, environment="PRODUCTION")
                    assert waiting is not None
                    delay = (waiting.run_after - clock.now).total_seconds()
                    ceiling = min(100, 10 * 2 ** (attempt - 1))
                    assert ceiling / 2 <= delay <= ceiling
                    clock.advance(delay)
            assert outcomes == ["retrying", "retrying", "dead"]
            dead = await q.get("acme", e.job.id, environment="PRODUCTION")
            assert dead is not None and dead.status == "failed" and dead.error == {"code": "BOOM"}
            [c] = await q.counters()
            assert (c.running, c.queued) == (0, 0)

    run(body())


def test_permanent_failure_and_release(db_url: str, clock: FakeClock) -> None:
    async def body() -> None:
        async with database(db_url) as engine:
            q = queue_on(engine, clock)
            await q.enqueue([job("acme", 0), job("acme", 1)])
            a, b = await q.claim("w", 2)
            assert await q.fail(a, {"code": "BAD"}, retryable=False) == "failed"
            assert await q.release(b) is True
            again = await q.get("acme", b.job.id, environment="PRODUCTION")
            assert again is not None and again.state == "queued" and again.attempts == 0
            [c] = await q.counters()
            assert (c.running, c.queued) == (0, 1)

    run(body())


def test_idempotency_key(db_url: str, clock: FakeClock) -> None:
    async def body() -> None:
        async with database(db_url) as engine:
            q = queue_on(engine, clock)
            first = await q.enqueue([job("acme", 0, idempotency_key="k", request_hash="h1")])
            again = await q.enqueue([job("acme", 0, idempotency_key="k", request_hash="h1")])
            assert again[0].job.id == first[0].job.id and not again[0].created
            assert again[0].standing == first[0].standing
            other_org = await q.enqueue([job("other", 0, idempotency_key="k", request_hash="h1")])
            assert other_org[0].created
            with pytest.raises(IdempotencyKeyReused):
                await q.enqueue([job("acme", 1, idempotency_key="k", request_hash="h2")])
            [c, _] = await q.counters()
            assert c.queued == 1

    run(body())


def test_standing_follows_the_scoring_api_shape(db_url: str, clock: FakeClock) -> None:
    async def body() -> None:
        async with database(db_url) as engine:
            q = queue_on(engine, clock, default_cap=2)
            await q.record_worker("w1")  # estimates need a running worker
            made = await q.enqueue([job("acme", i) for i in range(6)])
            # Default 30 s before any measurement; 2 free slots take the first two.
            assert [(e.standing.position, e.standing.wait_seconds) for e in made if e.standing] == [
                (1, 0),
                (2, 0),
                (3, 15),
                (4, 30),
                (5, 45),
                (6, 60),
            ]
            leases = await q.claim("w", 2)
            clock.advance(10)
            for lease in leases:
                await q.complete(lease, {})
            await q.claim("w", 2)
            standing = await q.standing(made[5].job)
            # Now 2 running, mean 10 s: position 2 → (2 ÷ 2) × 10.
            assert standing is not None and (standing.position, standing.wait_seconds) == (2, 10)
            assert await q.standing(made[0].job) is None

    run(body())


def test_other_org_cannot_read(db_url: str, clock: FakeClock) -> None:
    async def body() -> None:
        async with database(db_url) as engine:
            q = queue_on(engine, clock)
            [e] = await q.enqueue([job("acme", 0, application_id="app_1")])
            assert await q.get("evil", e.job.id, environment="PRODUCTION") is None
            assert await q.latest_for_application("evil", "app_1", environment="PRODUCTION") is None
            await q.enqueue([job("acme", 1, application_id="app_1")])
            latest = await q.latest_for_application("acme", "app_1", environment="PRODUCTION")
            assert latest is not None and latest.payload["i"] == 1

    run(body())


def test_volume_and_outbox(db_url: str, clock: FakeClock) -> None:
    async def body() -> None:
        async with database(db_url) as engine:
            q = queue_on(engine, clock, default_cap=10)
            store = WebhookStore(engine, clock=clock, allow_private_targets=True)
            await store.add_endpoint("acme", "http://127.0.0.1:9/hook")
            await q.enqueue([job("acme", i) for i in range(3)])
            leases = await q.claim("w", 3)
            await q.complete(leases[0], {"score": 1})
            clock.advance(3600)
            await q.complete(leases[1], {"score": 2})
            await q.fail(leases[2], {"code": "NO"}, retryable=False)
            start = clock.now - timedelta(hours=3)
            hours = await q.volume("acme", start, clock.now, "hour", environment="PRODUCTION")
            assert [(c, f) for _, c, f in hours] == [(1, 0), (1, 1)]
            assert hours[0][0].minute == 0 and hours[0][0].tzinfo is not None
            assert await q.volume("other", start, clock.now, "hour", environment="PRODUCTION") == []
            deliveries = await store.deliveries("acme", environment="PRODUCTION")
            assert sorted(d.event_type for d in deliveries) == [
                "score.completed",
                "score.completed",
                "score.failed",
            ]

    run(body())


@pytest.mark.parametrize("with_stale", [False, True])
def test_a_batch_of_completions_moves_its_counters_once(
    db_url: str, clock: FakeClock, with_stale: bool
) -> None:
    """A batch of completions of one queue moves its counters and folds each job's time
    since its claim into the moving average, in order, exactly as one by one would — when
    every lease still holds and when one is stale (its job is left alone and not
    counted)."""

    async def body() -> None:
        async with database(db_url) as engine:
            q = queue_on(engine, clock, default_cap=10, ewma_alpha=0.5)
            await q.enqueue([job("acme", i) for i in range(6)])
            first = await q.claim("w1", 2)
            clock.advance(3)
            second = await q.claim("w1", 3)
            clock.advance(2)
            leases = [first[1], *second, first[0]]
            if with_stale:
                leases[1] = replace(leases[1], token="not-the-token")
            outcomes = await q.finish_many([Finish(lease, result={"ok": 1}) for lease in leases])
            assert outcomes == (
                ["completed", None, "completed", "completed", "completed"]
                if with_stale
                else ["completed"] * 5
            )
            # Seconds since each claim, in the batch's order: 5, 2, 2, 2, 5 (the stale
            # lease's 2 left out); the first sample starts the average.
            samples = [5.0, 2.0, 2.0, 5.0] if with_stale else [5.0, 2.0, 2.0, 2.0, 5.0]
            average = samples[0]
            for sample in samples[1:]:
                average += 0.5 * (sample - average)
            [c] = await q.counters()
            assert (c.running, c.queued) == ((1, 1) if with_stale else (0, 1))
            assert c.avg_seconds == pytest.approx(average)

    run(body())


def test_batched_finish_writes_each_outcome_and_fences_stale_leases(
    db_url: str, clock: FakeClock
) -> None:
    """One transaction of completions (each with its own result) and a stale lease; then
    a mixed batch (completion + failures): every outcome lands on its own job only."""

    def varied(i: int) -> dict[str, Any]:
        # Quotes, backslashes, non-ASCII and nesting: each result is stored exactly.
        return {"n": i, "text": f'say "hi" \\ é {i}', "nested": [i, {"x": None, "f": 1.5}]}

    async def body() -> None:
        async with database(db_url) as engine:
            q = queue_on(engine, clock, lease_seconds=10, retry_base_seconds=1)
            await q.enqueue([job("acme", i) for i in range(6)])
            leases = await q.claim("w1", 6)
            stale = replace(leases[3], token="not-the-token")
            outcomes = await q.finish_many(
                [Finish(lease, result=varied(i)) for i, lease in enumerate(leases[:3])]
                + [Finish(stale, result={"n": 99})]
            )
            assert outcomes == ["completed", "completed", "completed", None]
            for i, lease in enumerate(leases[:3]):
                done = await q.get("acme", lease.job.id, environment="PRODUCTION")
                assert done is not None and done.state == "completed"
                assert done.result == varied(i) and done.finished_at is not None
            untouched = await q.get("acme", leases[3].job.id, environment="PRODUCTION")
            assert untouched is not None and untouched.state == "running"
            assert untouched.result is None
            [c] = await q.counters()
            assert (c.running, c.queued) == (3, 0)
            mixed = await q.finish_many(
                [
                    Finish(leases[3], result={"n": 3}),
                    Finish(leases[4], error={"code": "X"}, retryable=False),
                    Finish(leases[5], error={"code": "Y"}, retryable=True),
                ]
            )
            assert mixed == ["completed", "failed", "retrying"]
            states = [
                await q.get("acme", lease.job.id, environment="PRODUCTION") for lease in leases[3:]
            ]
            assert [s.state if s else None for s in states] == ["completed", "failed", "queued"]
            assert states[0] is not None and states[0].result == {"n": 3}
            [c] = await q.counters()
            assert (c.running, c.queued) == (0, 1)

    run(body())
