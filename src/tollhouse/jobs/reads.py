"""The job queue's read model: a job, an application's latest, where a job stands, an
org's page of jobs, the counters and the finished volume.

Reads never write and take no write lock: they run on a plain connection
(:func:`tollhouse.storage.transactions.read_connection`), so polling callers never queue
behind claims and completions. Every read is scoped to an org *and* an environment
(SANDBOX or PRODUCTION, the caller key's): another org's job, or the same org's job of
the other environment, reads as missing, exactly like a job that does not exist.

Where a queued job stands is read, not counted: a job that no claim has passed yet (the
usual case) has its position from its place in the queue and the scope's counters, in
the statement that reads the job (:func:`tollhouse.jobs.eta.place_position`); only a job
back in the queue after a claim (a retry waiting out its backoff, a release, a reaped
lease) counts the queued jobs ahead of it, which are then all such jobs too — never
the fresh backlog. The wait estimate (:func:`tollhouse.jobs.eta.estimate_wait`)
comes from the scope's running count, cap and moving average of processing time — or
is None while no worker has recorded itself recently
(:attr:`~tollhouse.jobs.model.QueueSettings.worker_seen_seconds`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from tollhouse.jobs.eta import any_worker_running, place_position, quoted_wait
from tollhouse.jobs.model import (
    Clock,
    Job,
    JobPage,
    OrgCounters,
    QueueSettings,
    Standing,
    WireStatus,
    utc_now,
)
from tollhouse.jobs.schema import job_orgs, job_volume, job_workers, jobs
from tollhouse.jobs.statements import FAILED_STATES, QueueStatements, day_of, row_job
from tollhouse.jobs.volume import rollup_span
from tollhouse.storage.transactions import read_connection
from tollhouse.times import as_utc


class QueueReads:
    """The reads of :class:`tollhouse.jobs.sql.SqlJobQueue`.

    Args:
        engine: the queue's engine.
        settings: the default cap and processing time estimates start from.
        sql: the queue's prebuilt statements.
        clock: returns aware UTC datetimes (whether a worker was seen recently).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        settings: QueueSettings,
        sql: QueueStatements,
        *,
        clock: Clock = utc_now,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.sql = sql
        self.clock = clock
        self.dialect = engine.dialect.name

    async def _workers(self, conn: AsyncConnection, org_row: Any) -> bool:
        """Whether a worker ran recently, from the org estimate's row (or a read of its
        own when the org has no row)."""
        if org_row is not None:
            seen = org_row.workers_seen
        else:
            seen = (await conn.execute(select(func.max(job_workers.c.seen_at)))).scalar()
        return any_worker_running(as_utc(seen), self.clock(), self.settings.worker_seen_seconds)

    async def workers_running(self) -> bool:
        """True when a worker recorded itself within the settings' ``worker_seen_seconds``."""
        async with self._read() as conn:
            return await self._workers(conn, None)

    def _read(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return read_connection(self.engine, "job queue")

    async def get(self, org: str, job_id: str, *, environment: str) -> Job | None:
        """The job ``job_id`` of ``org`` in ``environment``, or None (also for another
        org's job or another environment's)."""
        async with self._read() as conn:
            row = (
                await conn.execute(
                    select(jobs).where(
                        jobs.c.id == job_id,
                        jobs.c.org_id == org,
                        jobs.c.environment == environment,
                    )
                )
            ).first()
        return row_job(row) if row is not None else None

    async def latest_for_application(
        self, org: str, application_id: str, *, environment: str
    ) -> Job | None:
        """The most recently submitted job for ``application_id`` of ``org`` in
        ``environment``, or None."""
        q = (
            select(jobs)
            .where(
                jobs.c.org_id == org,
                jobs.c.environment == environment,
                jobs.c.application_id == application_id,
            )
            .order_by(jobs.c.seq.desc())
            .limit(1)
        )
        async with self._read() as conn:
            row = (await conn.execute(q)).first()
        return row_job(row) if row is not None else None

    async def standing(self, job: Job) -> Standing | None:
        """Where a job stands now, if still queued: jobs of its org and environment ahead
        of it + 1, and the scoring API shape's wait estimate from their running count, cap
        and mean time. One statement reads the job's state and place with its scope's
        counters; a job back in the queue after a claim counts the jobs ahead instead."""
        async with self._read() as conn:
            row = (await conn.execute(self.sql.job_standing, {"s_id": job.id})).first()
            if row is None or row.status != "queued":
                return None
            position = None
            if row.enqueued is not None:
                position = place_position(row.place, row.queued, row.enqueued, row.claimed_through)
            if position is None:
                position = await self._ahead(conn, job.org, job.environment, row.seq) + 1
            workers = await self._workers(conn, row if row.enqueued is not None else None)
        running, cap, avg = (
            (row.running, row.cap, row.avg_seconds) if row.enqueued is not None else (0, 1, None)
        )
        processing = avg if avg is not None else self.settings.default_processing_seconds
        return Standing(position, quoted_wait(position, running, cap, processing, workers))

    async def _ahead(self, conn: AsyncConnection, org: str, environment: str, seq: int) -> int:
        """The scope's queued jobs before ``seq``, counted (index range on
        ``ix_jobs_scope_status_seq``)."""
        return int(
            (
                await conn.execute(
                    select(func.count())
                    .select_from(jobs)
                    .where(
                        jobs.c.org_id == org,
                        jobs.c.environment == environment,
                        jobs.c.status == "queued",
                        jobs.c.seq < seq,
                    )
                )
            ).scalar_one()
        )

    async def org_counters(self, org: str, *, environment: str) -> OrgCounters:
        """``org``'s counters in ``environment``; with no jobs there yet, zeros and the
        default cap."""
        async with self._read() as conn:
            row = (
                await conn.execute(
                    select(job_orgs).where(
                        job_orgs.c.org_id == org, job_orgs.c.environment == environment
                    )
                )
            ).first()
        if row is None:
            return OrgCounters(org, environment, 0, 0, None, None)
        return _counters(row)

    async def page(
        self,
        org: str,
        *,
        environment: str,
        status: WireStatus | None = None,
        limit: int = 20,
        before: tuple[datetime, str] | None = None,
    ) -> JobPage:
        """``org``'s jobs in ``environment`` newest first by ``(created_at, id)``; see
        :meth:`JobQueue.page`.

        Queued jobs of the page get their standing from one more statement whatever the
        page size (the scope's counters), plus two when some went back to the queue after
        a claim (see :meth:`_standings`).
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        scope = (jobs.c.org_id == org, jobs.c.environment == environment)
        q = select(jobs).where(*scope)
        if status == "failed":
            q = q.where(jobs.c.status.in_(FAILED_STATES))
        elif status is not None:
            q = q.where(jobs.c.status == status)
        if before is not None:
            q = q.where(tuple_(jobs.c.created_at, jobs.c.id) < tuple_(before[0], before[1]))
        q = q.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit + 1)
        async with self._read() as conn:
            rows = (await conn.execute(q)).all()
            found = [row_job(r) for r in rows[:limit]]
            standings = await self._standings(conn, org, environment, found)
        return JobPage(found, standings, len(rows) > limit)

    async def get_many(self, org: str, job_ids: Sequence[str], *, environment: str) -> JobPage:
        """The jobs of ``org`` in ``environment`` among ``job_ids``, in the order asked
        (ids of other orgs or environments, and unknown ones, are left out), with the
        standing of each queued one: one statement for the jobs, and, when some are
        queued, the same for their standings as :meth:`page`."""
        if not job_ids:
            return JobPage([], {}, False)
        q = select(jobs).where(
            jobs.c.org_id == org,
            jobs.c.environment == environment,
            jobs.c.id.in_(list(job_ids)),
        )
        async with self._read() as conn:
            rows = (await conn.execute(q)).all()
            by_id = {j.id: j for j in map(row_job, rows)}
            found = [by_id[i] for i in dict.fromkeys(job_ids) if i in by_id]
            standings = await self._standings(conn, org, environment, found)
        return JobPage(found, standings, False)

    async def _standings(
        self, conn: AsyncConnection, org: str, environment: str, found: list[Job]
    ) -> dict[str, Standing]:
        """Where each queued job of ``found`` (all of ``org`` in ``environment``) stands.

        One statement reads the scope's counters; jobs no claim has passed yet take their
        position from them (:func:`tollhouse.jobs.eta.place_position`). Jobs back in the
        queue after a claim are counted with two more statements whatever their number:
        the scope's queued jobs before the oldest of them, and the queued seqs up to the
        newest (jobs back after a claim only, never the fresh backlog).
        """
        if not any(j.state == "queued" for j in found):
            return {}
        org_row = (
            await conn.execute(self.sql.org_estimate, {"s_org": org, "s_env": environment})
        ).first()
        workers = await self._workers(conn, org_row)
        running, cap, avg = (
            (org_row.running, org_row.cap, org_row.avg_seconds)
            if org_row is not None
            else (0, self.settings.default_cap, None)
        )
        processing = avg if avg is not None else self.settings.default_processing_seconds
        positions: dict[str, int] = {}
        counted: list[Job] = []
        for job in found:
            if job.state != "queued":
                continue
            position = None
            if org_row is not None:
                position = place_position(
                    job.place, org_row.queued, org_row.enqueued, org_row.claimed_through
                )
            if position is None:
                counted.append(job)
            else:
                positions[job.id] = position
        if counted:
            positions.update(await self._counted(conn, org, environment, counted))
        return {
            job_id: Standing(position, quoted_wait(position, running, cap, processing, workers))
            for job_id, position in positions.items()
        }

    async def _counted(
        self, conn: AsyncConnection, org: str, environment: str, waiting: list[Job]
    ) -> dict[str, int]:
        """Positions of queued jobs by counting: the scope's queued jobs before the oldest
        of ``waiting``, and the queued seqs from it to the newest."""
        seqs = sorted(j.seq for j in waiting)
        scope = (jobs.c.org_id == org, jobs.c.environment == environment)
        ahead = await self._ahead(conn, org, environment, seqs[0])
        queued_seqs = (
            (
                await conn.execute(
                    select(jobs.c.seq)
                    .where(
                        *scope,
                        jobs.c.status == "queued",
                        jobs.c.seq >= seqs[0],
                        jobs.c.seq <= seqs[-1],
                    )
                    .order_by(jobs.c.seq)
                )
            )
            .scalars()
            .all()
        )
        return {j.id: ahead + bisect_left(queued_seqs, j.seq) + 1 for j in waiting}

    async def counters(self) -> list[OrgCounters]:
        """Every org's counters, one per environment it has jobs in."""
        async with self._read() as conn:
            rows = (
                await conn.execute(
                    select(job_orgs).order_by(job_orgs.c.org_id, job_orgs.c.environment)
                )
            ).all()
        return [_counters(r) for r in rows]

    async def volume(
        self, org: str, start: datetime, end: datetime, granularity: str, *, environment: str
    ) -> list[tuple[datetime, int, int]]:
        """Finished jobs of ``org`` in ``environment`` per bucket (``minute``, ``hour`` or
        ``day``) from ``start`` through the bucket holding ``end``: ``(bucket start,
        completed, failed)``, from the finished-jobs rollup (a range of its primary key;
        days are their hours summed in the database, 24 rows to one)."""
        v = job_volume.c
        span = rollup_span(granularity)
        bucket: ColumnElement[Any] = v.bucket
        completed: ColumnElement[Any] = v.completed
        failed: ColumnElement[Any] = v.failed
        if span != granularity:
            bucket = day_of(self.dialect, v.bucket)
            completed, failed = func.sum(v.completed), func.sum(v.failed)
        q = (
            select(bucket.label("bucket"), completed.label("completed"), failed.label("failed"))
            .where(
                v.org_id == org,
                v.environment == environment,
                v.span == span,
                v.bucket >= start,
                v.bucket <= end,
            )
            .order_by(bucket)
        )
        if span != granularity:
            q = q.group_by(bucket)
        async with self._read() as conn:
            rows = (await conn.execute(q)).all()
        out: list[tuple[datetime, int, int]] = []
        for r in rows:
            moment = r.bucket
            if isinstance(moment, str):
                moment = datetime.fromisoformat(moment)
            out.append((moment.replace(tzinfo=UTC), int(r.completed), int(r.failed)))
        return out


def _counters(row: Any) -> OrgCounters:
    return OrgCounters(
        row.org_id, row.environment, row.running, row.queued, row.cap, row.avg_seconds
    )
