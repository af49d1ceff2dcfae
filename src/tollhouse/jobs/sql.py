"""The job queue on SQLAlchemy Core: SQLite (embedded) and PostgreSQL (scale).

:class:`SqlJobQueue` is :class:`tollhouse.jobs.queue.JobQueue` assembled from parts, one
module per seam:

* :mod:`tollhouse.jobs.statements` — rows ↔ values, and the hot statements built once;
* :mod:`tollhouse.jobs.machine` — the state machine (enqueue, claim, heartbeat,
  complete/fail, release, reap), one transaction per change, counters moved with it;
* :mod:`tollhouse.jobs.reads` — the read model (a job, a page, standings, counters);
* :mod:`tollhouse.jobs.wakeups` — in-process subscribers and PostgreSQL ``LISTEN``;
* :mod:`tollhouse.jobs.outbox` — webhook deliveries and job events written in the
  finishing transaction;
* :mod:`tollhouse.jobs.retention` — pruning finished jobs and webhook deliveries.

This module only wires them together and forwards the protocol's methods, so callers
keep one object and the parts stay small enough to read whole.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.jobs import retention
from tollhouse.jobs.machine import QueueMachine
from tollhouse.jobs.model import (
    PRODUCTION,
    Clock,
    Enqueued,
    Finish,
    Job,
    JobPage,
    Lease,
    NewJob,
    OrgCounters,
    Outcome,
    QueueSettings,
    Standing,
    Topic,
    Wakeup,
    WireStatus,
    utc_now,
)
from tollhouse.jobs.reads import QueueReads
from tollhouse.jobs.statements import QueueStatements, new_job_id, row_job
from tollhouse.jobs.wakeups import NOTIFY_CHANNEL, PgListener, Wakeups

# Names importers used when everything lived here.
__all__ = ["NOTIFY_CHANNEL", "PgListener", "SqlJobQueue", "new_job_id", "row_job"]


class SqlJobQueue:
    """:class:`tollhouse.jobs.queue.JobQueue` on SQLite or PostgreSQL.

    Args:
        engine: an async engine (``sqlite+aiosqlite`` or ``postgresql+asyncpg``).
        settings: caps, leases and retries.
        clock: returns aware UTC datetimes; tests pass a fake one and never sleep.
        rng: randomness for backoff jitter.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        settings: QueueSettings | None = None,
        *,
        clock: Clock = utc_now,
        rng: random.Random | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings or QueueSettings()
        self.clock = clock
        self.rng = rng or random.Random()
        self.dialect = engine.dialect.name
        self.wakeups = Wakeups()
        sql = QueueStatements(self.dialect, self.settings.default_cap)
        self.machine = QueueMachine(
            engine, self.settings, sql, self.wakeups, clock=clock, rng=self.rng
        )
        self.reads = QueueReads(engine, self.settings, sql, clock=clock)

    # --- wakeups -------------------------------------------------------------------------

    def subscribe(self, wakeup: Wakeup, topic: Topic = "jobs") -> None:
        """Call ``wakeup`` when this process adds work: ``jobs`` (enqueue, retries) or
        ``deliveries`` (a job finished and webhooks were staged)."""
        self.wakeups.subscribe(wakeup, topic)

    def listen(self) -> PgListener | None:
        """On PostgreSQL, a :class:`PgListener` waking this queue's subscribers when any
        process adds work; None on SQLite (dispatchers poll)."""
        return None if self.dialect == "sqlite" else PgListener(self.engine, self.wakeups)

    # --- the state machine ---------------------------------------------------------------

    async def enqueue(self, new: Sequence[NewJob]) -> list[Enqueued]:
        """Store jobs in one transaction; see :meth:`JobQueue.enqueue`."""
        return await self.machine.enqueue(new)

    async def claim(self, worker_id: str, limit: int) -> list[Lease]:
        """Take up to ``limit`` ready jobs; see :meth:`JobQueue.claim`."""
        return await self.machine.claim(worker_id, limit)

    async def heartbeat(self, leases: Sequence[Lease]) -> set[str]:
        """Extend leases still held; returns their job ids."""
        return await self.machine.heartbeat(leases)

    async def complete(self, lease: Lease, result: dict[str, Any]) -> Outcome | None:
        """Mark the leased job completed; None (and no change) when the lease is stale."""
        return await self.machine.complete(lease, result)

    async def fail(self, lease: Lease, error: dict[str, Any], *, retryable: bool) -> Outcome | None:
        """End an attempt that failed: retried after a backoff while attempts remain and
        the failure is retryable, else ``failed`` (permanent) or ``dead`` (exhausted)."""
        return await self.machine.fail(lease, error, retryable=retryable)

    async def finish_many(self, items: Sequence[Finish]) -> list[Outcome | None]:
        """End many attempts in one transaction; per item as :meth:`complete`/:meth:`fail`."""
        return await self.machine.finish_many(items)

    async def finish_and_claim(
        self, items: Sequence[Finish], worker_id: str, limit: int
    ) -> tuple[list[Outcome | None], list[Lease]]:
        """:meth:`finish_many`, then :meth:`claim`, in one transaction."""
        return await self.machine.finish_and_claim(items, worker_id, limit)

    async def release(self, lease: Lease) -> bool:
        """Give a claimed job back untried (the attempt is not counted)."""
        return await self.machine.release(lease)

    async def reap(self) -> int:
        """Requeue (or kill, past ``max_attempts``) jobs whose lease expired."""
        return await self.machine.reap()

    async def record_worker(self, worker_id: str) -> None:
        """Record that a worker runs now (see :meth:`JobQueue.record_worker`)."""
        await self.machine.record_worker(worker_id)

    async def forget_worker(self, worker_id: str) -> None:
        """Remove a stopped worker's record."""
        await self.machine.forget_worker(worker_id)

    async def workers_running(self) -> bool:
        """True when a worker recorded itself recently."""
        return await self.reads.workers_running()

    async def set_cap(self, org: str, cap: int | None, *, environment: str = PRODUCTION) -> None:
        """Give ``org`` its own cap in ``environment`` (None: the default again)."""
        await self.machine.set_cap(org, cap, environment=environment)

    # --- retention -----------------------------------------------------------------------

    async def prune(self) -> dict[str, int]:
        """Delete finished jobs and finished deliveries past their retention
        (:mod:`tollhouse.jobs.retention`); returns the rows deleted per table."""
        return await retention.prune(self.engine, self.settings, self.clock())

    # --- the read model ------------------------------------------------------------------

    async def get(self, org: str, job_id: str, *, environment: str) -> Job | None:
        """The job ``job_id`` of ``org`` in ``environment``, or None (also for another
        org's or another environment's job)."""
        return await self.reads.get(org, job_id, environment=environment)

    async def get_many(self, org: str, job_ids: Sequence[str], *, environment: str) -> JobPage:
        """The jobs among ``job_ids`` of ``org`` in ``environment``, in the order asked,
        with the standings of the queued ones; see :meth:`JobQueue.get_many`."""
        return await self.reads.get_many(org, job_ids, environment=environment)

    async def latest_for_application(
        self, org: str, application_id: str, *, environment: str
    ) -> Job | None:
        """The most recent job for ``application_id`` of ``org`` in ``environment``."""
        return await self.reads.latest_for_application(org, application_id, environment=environment)

    async def standing(self, job: Job) -> Standing | None:
        """Where a job stands now, if still queued."""
        return await self.reads.standing(job)

    async def org_counters(self, org: str, *, environment: str) -> OrgCounters:
        """``org``'s counters in ``environment`` (zeros and the default cap before any job)."""
        return await self.reads.org_counters(org, environment=environment)

    async def page(
        self,
        org: str,
        *,
        environment: str,
        status: WireStatus | None = None,
        limit: int = 20,
        before: tuple[datetime, str] | None = None,
    ) -> JobPage:
        """``org``'s jobs in ``environment`` newest first; see :meth:`JobQueue.page`."""
        return await self.reads.page(
            org, environment=environment, status=status, limit=limit, before=before
        )

    async def counters(self) -> list[OrgCounters]:
        """Every org's counters."""
        return await self.reads.counters()

    async def volume(
        self, org: str, start: datetime, end: datetime, granularity: str, *, environment: str
    ) -> list[tuple[datetime, int, int]]:
        """Finished jobs of ``org`` in ``environment`` per bucket: ``(bucket start,
        completed, failed)``."""
        return await self.reads.volume(org, start, end, granularity, environment=environment)
