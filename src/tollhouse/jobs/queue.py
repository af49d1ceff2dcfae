"""The job queue protocol, and the factory that opens one on an engine.

One implementation today: :class:`tollhouse.jobs.sql.SqlJobQueue` on SQLAlchemy Core, for
SQLite (embedded; writers serialised with ``BEGIN IMMEDIATE``) and PostgreSQL (claims
with ``SELECT … FOR UPDATE SKIP LOCKED``). The protocol is what the worker, the HTTP app
and the tests rely on.

Guarantees every implementation keeps. A *scope* is an org in one environment (SANDBOX or
PRODUCTION, its key's): an org's sandbox and production jobs are two scopes, as apart as
two orgs — reads, Idempotency-Keys, counters, caps and turns never mix them.

* FIFO per scope: a scope's queued jobs are claimed in submission order (retries wait out
  their backoff and then go first again, being older).
* A per-scope cap: a scope never has more than its cap running; the running counter
  changes in the same transaction as the job's state.
* Round robin across scopes: a claim serves the least recently served scopes first.
* Fencing: heartbeat, complete, fail and release need the lease's token; after a reap or
  a new claim the old token is refused.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.jobs.model import (
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
from tollhouse.jobs.sql import SqlJobQueue

# Clock, Topic and Wakeup are defined in tollhouse.jobs.model; importers that name them
# from here keep working.
__all__ = ["Clock", "JobQueue", "Listener", "Topic", "Wakeup", "open_queue"]


class Listener(Protocol):
    """A feed of wakeups from other processes (PostgreSQL ``LISTEN``): while started, it
    calls the queue's subscribers when any process adds work."""

    async def start(self) -> None:
        """Start listening (returns once the first connection attempt is over)."""
        ...

    async def stop(self) -> None:
        """Stop listening and release the connection."""
        ...


class JobQueue(Protocol):
    """A durable job queue with leases (see the module docstring for its guarantees)."""

    settings: QueueSettings

    async def enqueue(self, new: Sequence[NewJob]) -> list[Enqueued]:
        """Store jobs (one transaction); an Idempotency-Key match in the job's org and
        environment returns the existing job.

        Raises:
            IdempotencyKeyReused: a key was reused with another route or body.
        """
        ...

    async def claim(self, worker_id: str, limit: int) -> list[Lease]:
        """Take up to ``limit`` ready jobs under every org's cap, round robin across orgs."""
        ...

    async def heartbeat(self, leases: Sequence[Lease]) -> set[str]:
        """Extend leases; returns the ids of jobs whose lease is still held."""
        ...

    async def complete(self, lease: Lease, result: dict[str, Any]) -> Outcome | None:
        """Mark the job completed; None when the token is stale (nothing changes)."""
        ...

    async def fail(self, lease: Lease, error: dict[str, Any], *, retryable: bool) -> Outcome | None:
        """Fail an attempt: retry with backoff, or ``failed``/``dead``; None when stale."""
        ...

    async def finish_many(self, items: Sequence[Finish]) -> list[Outcome | None]:
        """End many attempts in one transaction; per item as :meth:`complete`/:meth:`fail`."""
        ...

    async def finish_and_claim(
        self, items: Sequence[Finish], worker_id: str, limit: int
    ) -> tuple[list[Outcome | None], list[Lease]]:
        """:meth:`finish_many` and :meth:`claim` in one transaction."""
        ...

    async def release(self, lease: Lease) -> bool:
        """Give a claimed job back untried (graceful shutdown); False when stale."""
        ...

    async def reap(self) -> int:
        """Requeue (or kill, past ``max_attempts``) jobs whose lease expired; returns how
        many were handled."""
        ...

    async def record_worker(self, worker_id: str) -> None:
        """Record that ``worker_id`` runs now (dispatchers call it every sixth of
        ``settings.worker_seen_seconds``); wait estimates are None while no worker did
        within ``worker_seen_seconds``."""
        ...

    async def forget_worker(self, worker_id: str) -> None:
        """Remove ``worker_id``'s record (a dispatcher that stops)."""
        ...

    async def workers_running(self) -> bool:
        """True when a worker recorded itself within ``settings.worker_seen_seconds``."""
        ...

    async def prune(self) -> dict[str, int]:
        """Delete finished jobs and finished webhook deliveries (with their attempts)
        older than the settings' retention; returns rows deleted per table."""
        ...

    async def get(self, org: str, job_id: str, *, environment: str) -> Job | None:
        """The job with that id of ``org`` in ``environment``, or None (another org's or
        another environment's job is None too)."""
        ...

    async def get_many(self, org: str, job_ids: Sequence[str], *, environment: str) -> JobPage:
        """The jobs of ``org`` in ``environment`` among ``job_ids``, in the order asked
        (each once), with the standing of each queued one (``standings``); unknown ids,
        and ids of another org or environment, are left out alike."""
        ...

    async def latest_for_application(
        self, org: str, application_id: str, *, environment: str
    ) -> Job | None:
        """The most recently submitted job for an application of ``org`` in
        ``environment``, or None."""
        ...

    async def standing(self, job: Job) -> Standing | None:
        """Where a queued job stands now; None once it left the queue."""
        ...

    async def org_counters(self, org: str, *, environment: str) -> OrgCounters:
        """One scope's counters (zeros and the default cap before its first job)."""
        ...

    async def page(
        self,
        org: str,
        *,
        environment: str,
        status: WireStatus | None = None,
        limit: int = 20,
        before: tuple[datetime, str] | None = None,
    ) -> JobPage:
        """The jobs of ``org`` in ``environment`` newest first by ``(created_at, id)``,
        strictly older than ``before`` when given; ``status`` filters on the wire status."""
        ...

    async def set_cap(self, org: str, cap: int | None, *, environment: str = "PRODUCTION") -> None:
        """Give an org its own cap in one environment (None: back to the default)."""
        ...

    async def counters(self) -> list[OrgCounters]:
        """Every scope's counters (for status pages and tests)."""
        ...

    async def volume(
        self, org: str, start: datetime, end: datetime, granularity: str, *, environment: str
    ) -> list[tuple[datetime, int, int]]:
        """Finished jobs of ``org`` in ``environment`` per bucket: ``(bucket start,
        completed, failed)``."""
        ...

    def subscribe(self, wakeup: Wakeup, topic: Topic = "jobs") -> None:
        """Call ``wakeup`` when this process adds work of ``topic``."""
        ...

    def listen(self) -> Listener | None:
        """A :class:`Listener` that also wakes subscribers for work other processes add;
        None where the engine has no such feed (SQLite: polling only)."""
        ...


def open_queue(
    engine: AsyncEngine,
    settings: QueueSettings | None = None,
    *,
    clock: Clock = utc_now,
    rng: random.Random | None = None,
) -> JobQueue:
    """The queue for an engine: SQLite or PostgreSQL, both through SQLAlchemy Core.

    Args:
        engine: from :func:`tollhouse.storage.engine.make_engine`.
        settings: caps, leases, retries; defaults to :class:`QueueSettings`.
        clock: returns aware UTC datetimes (injected in tests).
        rng: randomness for backoff jitter (seeded in tests).
    """
    return SqlJobQueue(engine, settings or QueueSettings(), clock=clock, rng=rng)
