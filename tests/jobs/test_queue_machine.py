"""A Hypothesis state machine over the SQL queue: enqueue, claim, heartbeat, complete,
fail, crash, advance the clock, reap — with an injected clock, never sleeping.

After every step it checks against the database that

* each queue's (an org in one environment: SANDBOX and PRODUCTION queue apart) running
  jobs equal its counter and never exceed its cap, and its queued jobs equal the queued
  counter;
* every accepted job is in exactly one known state, and none is lost;
* every running job is held by exactly one live lease the model knows of;
* first attempts start in FIFO order per queue;
* the finished-jobs rollup holds, per queue, minute and hour, exactly the count of the
  jobs that finished there (completed; failed and dead);
* every queued job's position — from a poll (``standing``) and from ``get_many`` — is
  exactly its queue's queued jobs before it + 1 as counted, and every job placed above
  its queue's ``claimed_through`` is queued (what lets positions be read, not counted);

and on the way that a stale token can neither heartbeat nor complete, and that the
reaper takes exactly the leases that expired.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.jobs.conftest import FakeClock
from tollhouse.jobs import NewJob, QueueSettings
from tollhouse.jobs.model import STATES, Job, Lease
from tollhouse.jobs.schema import JOB_TABLES, create_job_schema, job_orgs, job_volume, jobs
from tollhouse.jobs.sql import SqlJobQueue
from tollhouse.jobs.statements import row_job
from tollhouse.jobs.volume import floor_to
from tollhouse.storage.engine import make_engine
from tollhouse.times import as_utc

ORGS = ("a", "b", "c")
ENVIRONMENTS = ("PRODUCTION", "SANDBOX")
DEFAULT_CAP = 2
CAPS = {"a": DEFAULT_CAP, "b": DEFAULT_CAP, "c": 1}
LEASE = 10.0
MAX_ATTEMPTS = 2


class _Live:
    """A lease the model holds, with the expiry the model expects."""

    def __init__(self, lease: Lease, expires: datetime) -> None:
        self.lease = lease
        self.expires = expires


def machine_for(url: str, loop: asyncio.AbstractEventLoop, engine: AsyncEngine) -> type:
    class QueueMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.clock = FakeClock()
            self.queue = SqlJobQueue(
                engine,
                QueueSettings(
                    default_cap=DEFAULT_CAP,
                    lease_seconds=LEASE,
                    max_attempts=MAX_ATTEMPTS,
                    retry_base_seconds=1.0,
                    retry_max_seconds=4.0,
                ),
                clock=self.clock,
                rng=random.Random(0),
            )
            self.held: list[_Live] = []
            self.crashed: list[_Live] = []
            self.stale: list[Lease] = []
            self.accepted = 0
            self.first_starts: dict[tuple[str, str], list[int]] = defaultdict(list)
            self.started: set[str] = set()

        def do(self, coro: Any) -> Any:
            return loop.run_until_complete(coro)

        @initialize()
        def fresh(self) -> None:
            async def wipe() -> None:
                async with engine.begin() as conn:
                    for table in (*JOB_TABLES, job_volume):
                        await conn.execute(delete(table))

            self.do(wipe())
            for environment in ENVIRONMENTS:
                self.do(self.queue.set_cap("c", CAPS["c"], environment=environment))

        # --- rules -------------------------------------------------------------------

        @rule(
            org=st.sampled_from(ORGS),
            environment=st.sampled_from(ENVIRONMENTS),
            n=st.integers(1, 3),
        )
        def enqueue(self, org: str, environment: str, n: int) -> None:
            new = [
                NewJob(org=org, route="POST /v1/score", payload={"n": i}, environment=environment)
                for i in range(n)
            ]
            out = self.do(self.queue.enqueue(new))
            assert all(e.created for e in out)
            self.accepted += n

        @rule(limit=st.integers(1, 4))
        def claim(self, limit: int) -> None:
            leases = self.do(self.queue.claim("w", limit))
            assert len(leases) <= limit
            for lease in leases:
                self.held.append(_Live(lease, lease.expires_at))
                if lease.job.id not in self.started:
                    self.started.add(lease.job.id)
                    scope = (lease.job.org, lease.job.environment)
                    self.first_starts[scope].append(lease.job.seq)

        @precondition(lambda self: self.held)
        @rule(data=st.data())
        def heartbeat(self, data: st.DataObject) -> None:
            live = data.draw(st.sampled_from(self.held))
            assert self.do(self.queue.heartbeat([live.lease])) == {live.lease.job.id}
            live.expires = self.clock.now + self.queue_lease()

        @precondition(lambda self: self.held)
        @rule(data=st.data())
        def complete(self, data: st.DataObject) -> None:
            live = data.draw(st.sampled_from(self.held))
            self.held.remove(live)
            assert self.do(self.queue.complete(live.lease, {"ok": True})) == "completed"
            self.stale.append(live.lease)

        @precondition(lambda self: self.held)
        @rule(data=st.data(), retryable=st.booleans())
        def fail(self, data: st.DataObject, retryable: bool) -> None:
            live = data.draw(st.sampled_from(self.held))
            self.held.remove(live)
            outcome = self.do(self.queue.fail(live.lease, {"code": "X"}, retryable=retryable))
            if not retryable:
                assert outcome == "failed"
            elif live.lease.job.attempts >= MAX_ATTEMPTS:
                assert outcome == "dead"
            else:
                assert outcome == "retrying"
            self.stale.append(live.lease)

        @precondition(lambda self: self.held)
        @rule(data=st.data())
        def release(self, data: st.DataObject) -> None:
            # A graceful shutdown gives the job back untried.
            live = data.draw(st.sampled_from(self.held))
            self.held.remove(live)
            assert self.do(self.queue.release(live.lease)) is True
            self.stale.append(live.lease)

        @precondition(lambda self: self.held)
        @rule(data=st.data())
        def crash(self, data: st.DataObject) -> None:
            # The worker vanishes: nobody heartbeats or completes this lease again.
            live = data.draw(st.sampled_from(self.held))
            self.held.remove(live)
            self.crashed.append(live)

        @rule(seconds=st.floats(0.5, 25.0))
        def advance(self, seconds: float) -> None:
            self.clock.advance(seconds)

        @rule()
        def reap(self) -> None:
            now = self.clock.now
            expired = [x for x in self.held + self.crashed if x.expires < now]
            assert self.do(self.queue.reap()) == len(expired)
            for x in expired:
                (self.held if x in self.held else self.crashed).remove(x)
                self.stale.append(x.lease)

        @precondition(lambda self: self.stale)
        @rule(data=st.data())
        def stale_token_is_refused(self, data: st.DataObject) -> None:
            lease = data.draw(st.sampled_from(self.stale))
            assert self.do(self.queue.heartbeat([lease])) == set()
            assert self.do(self.queue.complete(lease, {"late": True})) is None

        def queue_lease(self) -> Any:
            from datetime import timedelta

            return timedelta(seconds=LEASE)

        # --- invariants --------------------------------------------------------------

        @invariant()
        def database_agrees(self) -> None:
            async def read() -> tuple[list[Any], list[Any]]:
                async with engine.connect() as conn:
                    per = (
                        await conn.execute(
                            select(
                                jobs.c.org_id, jobs.c.environment, jobs.c.status, func.count()
                            ).group_by(jobs.c.org_id, jobs.c.environment, jobs.c.status)
                        )
                    ).all()
                    counters = (await conn.execute(select(job_orgs))).all()
                return per, counters

            per, counters = self.do(read())
            counts: Counter[tuple[str, str, str]] = Counter()
            total = 0
            for org, environment, status, n in per:
                assert status in STATES
                counts[(org, environment, status)] += n
                total += n
            assert total == self.accepted
            live = Counter(
                (x.lease.job.org, x.lease.job.environment) for x in self.held + self.crashed
            )
            for row in counters:
                scope = (row.org_id, row.environment)
                running = counts[(*scope, "running")]
                assert row.running == running
                assert running <= CAPS[row.org_id]
                assert row.queued == counts[(*scope, "queued")]
                assert live[scope] == running

        @invariant()
        def rollup_counts_finished(self) -> None:
            async def read() -> tuple[list[Any], list[Any]]:
                async with engine.connect() as conn:
                    done = (
                        await conn.execute(
                            select(
                                jobs.c.org_id, jobs.c.environment, jobs.c.status, jobs.c.finished_at
                            ).where(jobs.c.status.in_(("completed", "failed", "dead")))
                        )
                    ).all()
                    rolled = (await conn.execute(select(job_volume))).all()
                return done, rolled

            done, rolled = self.do(read())
            expected: dict[tuple[str, str, str, datetime], list[int]] = defaultdict(lambda: [0, 0])
            for org, environment, status, finished_at in done:
                for span in ("minute", "hour"):
                    at = floor_to(as_utc(finished_at), span)
                    expected[(org, environment, span, at)][status != "completed"] += 1
            assert {
                (r.org_id, r.environment, r.span, as_utc(r.bucket)): [r.completed, r.failed]
                for r in rolled
            } == expected

        @invariant()
        def fifo_first_attempts(self) -> None:
            for seqs in self.first_starts.values():
                assert seqs == sorted(seqs)

        @invariant()
        def positions_are_exact(self) -> None:
            async def read() -> tuple[list[Job], dict[tuple[str, str], int]]:
                async with engine.connect() as conn:
                    rows = (await conn.execute(select(jobs).order_by(jobs.c.seq))).all()
                    through = {
                        (r.org_id, r.environment): r.claimed_through
                        for r in (await conn.execute(select(job_orgs))).all()
                    }
                return [row_job(r) for r in rows], through

            found, through = self.do(read())
            expected: dict[str, int] = {}
            ahead: Counter[tuple[str, str]] = Counter()
            for job in found:  # in seq order
                scope = (job.org, job.environment)
                assert job.place is not None
                if job.place > through[scope]:
                    assert job.state == "queued"
                if job.state == "queued":
                    ahead[scope] += 1
                    expected[job.id] = ahead[scope]
            for org, environment in {(j.org, j.environment) for j in found}:
                mine = [j for j in found if (j.org, j.environment) == (org, environment)]
                ids = [j.id for j in mine]
                page = self.do(self.queue.get_many(org, ids, environment=environment))
                assert {i: s.position for i, s in page.standings.items()} == {
                    i: p for i, p in expected.items() if i in ids
                }
            # A poll of one job reads otherwise: the oldest and newest queued job (often
            # one back after a claim, and one never claimed).
            waiting = [j for j in found if j.state == "queued"]
            for job in {j.id: j for j in waiting[:1] + waiting[-1:]}.values():
                standing = self.do(self.queue.standing(job))
                assert standing is not None
                assert standing.position == expected[job.id]

    return QueueMachine


def _run_machine(url: str, examples: int) -> None:
    loop = asyncio.new_event_loop()
    engine = make_engine(url)
    try:
        loop.run_until_complete(create_job_schema(engine))
        machine = machine_for(url, loop, engine)
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=examples,
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        loop.run_until_complete(engine.dispose())
        loop.close()


# 60 examples of 30 steps, each step checked against a model: about a minute on a busy
# 2-core machine, so the hang guard is wider than the suite's default.
@pytest.mark.timeout(240)
def test_queue_state_machine_sqlite(sqlite_url: str) -> None:
    _run_machine(sqlite_url, examples=60)


@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_queue_state_machine_postgres(pg_url: str) -> None:
    _run_machine(pg_url, examples=30)
