"""The job queue on SQLAlchemy Core: SQLite (embedded) and PostgreSQL (scale).

Every state change is one transaction that also moves the org's counters, so
``job_orgs.running`` always equals the org's running jobs and the cap holds across
processes:

* **PostgreSQL**: a claim locks the least recently served orgs that are under their cap
  (``FOR UPDATE SKIP LOCKED``), so claimers in other processes serve other orgs instead of
  waiting, then locks each org's oldest ready jobs the same way. Completions, failures
  and the reaper lock the job row, then the org row (always in that order; the claim
  never waits on a lock), so there are no lock cycles.
* **SQLite**: one writer at a time; every write transaction starts with
  ``BEGIN IMMEDIATE`` so it holds the write lock before its first read (a deferred
  transaction that read first could not upgrade once another process had written).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import orjson
from sqlalchemy import (
    Float,
    Integer,
    Select,
    String,
    Text,
    bindparam,
    case,
    delete,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollhouse.errors import StorageError
from tollhouse.jobs.eta import (
    estimate_wait,
    ewma_terms,
    moving_average,
    retry_delay,
    share_slots,
)
from tollhouse.jobs.events import record_job_events
from tollhouse.jobs.model import (
    TERMINAL,
    Enqueued,
    Finish,
    IdempotencyKeyReused,
    Job,
    JobPage,
    Lease,
    NewJob,
    OrgCounters,
    Outcome,
    QueueSettings,
    Standing,
    WireStatus,
    utc_now,
)
from tollhouse.jobs.queue import Clock, Topic, Wakeup
from tollhouse.jobs.schema import (
    EPOCH,
    job_orgs,
    jobs,
    webhook_attempts,
    webhook_deliveries,
)
from tollhouse.jobs.shapes import event_type, job_json
from tollhouse.storage.transactions import read_connection, write_transaction
from tollhouse.times import as_utc

logger = logging.getLogger(__name__)

_FAILED_STATES = ("failed", "dead")
#: What a finish reads of a held job to decide its outcome (the rest is the lease's copy).
_DECIDE = (jobs.c.id, jobs.c.attempts, jobs.c.max_attempts, jobs.c.claimed_at)
#: PostgreSQL ``NOTIFY`` channel for new work; the payload is the topic (``jobs`` or
#: ``deliveries``). Notifications are sent inside the writing transaction, so listeners
#: hear of work only once it is committed.
NOTIFY_CHANNEL = "tollhouse_work"
_TOPICS: tuple[Topic, ...] = ("jobs", "deliveries")
#: Leases extended per statement (bounded so the statement stays a sane size).
HEARTBEAT_CHUNK = 500


def new_job_id() -> str:
    """``sj_`` + 20 hex characters (80 random bits): unguessable across orgs."""
    return "sj_" + secrets.token_hex(10)


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def row_job(row: Any) -> Job:
    """A ``jobs`` row as a :class:`Job`."""
    return Job(
        id=row.id,
        seq=row.seq,
        org=row.org_id,
        route=row.route,
        payload=orjson.loads(row.payload),
        state=row.status,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        created_at=as_utc(row.created_at),
        run_after=as_utc(row.run_after),
        environment=row.environment,
        tenant=row.tenant,
        application_id=row.application_id,
        idempotency_key=row.idempotency_key,
        request_hash=row.request_hash,
        request_id=row.request_id,
        started_at=as_utc(row.started_at),
        claimed_at=as_utc(row.claimed_at),
        finished_at=as_utc(row.finished_at),
        result=_loads(row.result),
        error=_loads(row.error),
        accepted_position=row.accepted_position,
        accepted_wait=row.accepted_wait,
    )


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
        self._sqlite = self.dialect == "sqlite"
        self._wakeups: dict[Topic, list[Wakeup]] = {"jobs": [], "deliveries": []}
        # Built once: constructing an upsert costs more than running it on SQLite.
        upsert = self._insert(job_orgs).values(
            org_id=bindparam("u_org"),
            running=0,
            queued=bindparam("u_count"),
            last_served_at=EPOCH,
            samples=0,
        )
        self._count_queued = upsert.on_conflict_do_update(
            index_elements=["org_id"],
            set_={"queued": job_orgs.c.queued + upsert.excluded.queued},
        ).returning(
            job_orgs.c.running,
            job_orgs.c.queued,
            self._cap().label("cap"),
            job_orgs.c.avg_seconds,
        )

        self._finish_orgs = (
            update(job_orgs)
            .where(job_orgs.c.org_id == bindparam("o_org"))
            .values(
                running=job_orgs.c.running + bindparam("o_running", type_=Integer),
                queued=job_orgs.c.queued + bindparam("o_queued", type_=Integer),
                avg_seconds=case(
                    (job_orgs.c.avg_seconds.is_(None), bindparam("o_fresh", type_=Float)),
                    else_=job_orgs.c.avg_seconds * bindparam("o_decay", type_=Float)
                    + bindparam("o_offset", type_=Float),
                ),
                samples=job_orgs.c.samples + bindparam("o_samples", type_=Integer),
            )
        )
        self._claimed_orgs = (
            update(job_orgs)
            .where(job_orgs.c.org_id == bindparam("c_org"))
            .values(
                running=job_orgs.c.running + bindparam("c_count", type_=Integer),
                queued=job_orgs.c.queued - bindparam("c_count", type_=Integer),
                last_served_at=bindparam("c_now", type_=job_orgs.c.last_served_at.type),
            )
        )

        # The claim's and the completion's statements, built once with bound parameters:
        # building a statement and its cache key costs as much CPU as running it.
        when = jobs.c.run_after.type
        cap = self._cap()
        self._claim_orgs = (
            select(job_orgs.c.org_id, job_orgs.c.running, cap.label("cap"))
            .where(job_orgs.c.queued > 0, job_orgs.c.running < cap)
            .order_by(job_orgs.c.last_served_at, job_orgs.c.org_id)
            .limit(bindparam("c_limit", type_=Integer))
            .with_for_update(skip_locked=True)
        )
        # Pick (and lock) an org's oldest ready jobs and lease them in one statement.
        # One random part per claim; each job's token is it + the job id, so one UPDATE
        # sets every lease of an org and tokens still differ per job and per claim.
        pick = (
            select(jobs.c.seq)
            .where(
                jobs.c.org_id == bindparam("p_org", type_=String),
                jobs.c.status == "queued",
                jobs.c.run_after <= bindparam("p_now", type_=when),
            )
            .order_by(jobs.c.seq)
            .limit(bindparam("p_share", type_=Integer))
            .with_for_update(skip_locked=True)
        )
        self._claim_jobs = (
            update(jobs)
            .where(jobs.c.seq.in_(pick))
            .values(
                status="running",
                lease_token=bindparam("p_batch", type_=String) + jobs.c.id,
                lease_expires_at=bindparam("p_expires", type_=when),
                worker_id=bindparam("p_worker", type_=String),
                attempts=jobs.c.attempts + 1,
                claimed_at=bindparam("p_now", type_=when),
                started_at=func.coalesce(jobs.c.started_at, bindparam("p_now", type_=when)),
            )
            .returning(*jobs.c)
        )
        # PostgreSQL: the claim and its org's counters in one statement (a data-modifying
        # CTE), one round trip fewer per claim than the executemany SQLite uses.
        claimed = self._claim_jobs.cte("claimed")
        count = select(func.count()).select_from(claimed).scalar_subquery()
        bump = (
            update(job_orgs)
            .where(job_orgs.c.org_id == bindparam("p_org", type_=String))
            .values(
                running=job_orgs.c.running + count,
                queued=job_orgs.c.queued - count,
                last_served_at=bindparam("p_now", type_=when),
            )
        )
        self._claim_jobs_counted = select(claimed).add_cte(bump.cte("bumped"))
        # A finish's fence: the (job id, lease token) pairs still running.
        fence = (
            tuple_(jobs.c.id, jobs.c.lease_token).in_(bindparam("f_pairs", expanding=True)),
            jobs.c.status == "running",
        )
        # Completions: fenced and written in one UPDATE … RETURNING.
        self._complete = (
            update(jobs)
            .where(*fence)
            .values(
                status="completed",
                result=bindparam("f_result", type_=Text),
                error=None,
                finished_at=bindparam("f_now", type_=when),
                lease_token=None,
                lease_expires_at=None,
                worker_id=None,
            )
            .returning(*_DECIDE, jobs.c.run_after)
        )
        self._decide = select(*_DECIDE, jobs.c.run_after).where(*fence).with_for_update()

    # --- plumbing ------------------------------------------------------------------------

    def subscribe(self, wakeup: Wakeup, topic: Topic = "jobs") -> None:
        """Call ``wakeup`` when this process adds work: ``jobs`` (enqueue, retries) or
        ``deliveries`` (a job finished and webhooks were staged)."""
        self._wakeups[topic].append(wakeup)

    def _notify(self, topic: Topic) -> None:
        for wakeup in self._wakeups[topic]:
            wakeup()

    def listen(self) -> PgListener | None:
        """On PostgreSQL, a :class:`PgListener` waking this queue's subscribers when any
        process adds work; None on SQLite (dispatchers poll)."""
        return None if self._sqlite else PgListener(self)

    async def _announce(self, conn: AsyncConnection, topic: Topic) -> None:
        """Tell listening processes about new work, at this transaction's commit."""
        if not self._sqlite:
            await conn.execute(select(func.pg_notify(NOTIFY_CHANNEL, topic)))

    def _write(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return write_transaction(self.engine, "job queue")

    def _read(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return read_connection(self.engine, "job queue")

    def _insert(self, table: Any) -> Any:
        return sqlite_insert(table) if self._sqlite else pg_insert(table)

    async def _ensure_org(self, conn: AsyncConnection, org: str) -> None:
        stmt = (
            self._insert(job_orgs)
            .values(org_id=org, running=0, queued=0, last_served_at=EPOCH, samples=0)
            .on_conflict_do_nothing(index_elements=["org_id"])
        )
        await conn.execute(stmt)

    def _cap(self) -> Any:
        return func.coalesce(job_orgs.c.cap, self.settings.default_cap)

    def _org_values(self, org: str, running: int = 0, queued: int = 0) -> Any:
        return (
            update(job_orgs)
            .where(job_orgs.c.org_id == org)
            .values(running=job_orgs.c.running + running, queued=job_orgs.c.queued + queued)
        )

    # --- enqueue -------------------------------------------------------------------------

    async def enqueue(self, new: Sequence[NewJob]) -> list[Enqueued]:
        """Store jobs in one transaction; see :meth:`JobQueue.enqueue`."""
        if not new:
            return []
        try:
            out = await self._enqueue(new)
        except StorageError as exc:
            # Two requests with one Idempotency-Key raced (PostgreSQL): the loser's insert
            # hit the unique constraint; run again and it finds the winner's job.
            if not isinstance(exc.__cause__, IntegrityError):
                raise
            out = await self._enqueue(new)
        if any(e.created for e in out):
            self._notify("jobs")
        return out

    async def _enqueue(self, new: Sequence[NewJob]) -> list[Enqueued]:
        now = self.clock()
        s = self.settings
        slots: list[Enqueued | NewJob] = []
        async with self._write() as conn:
            # 1. Idempotency-Key matches return the existing job (the same 202 body).
            keyed = [n for n in new if n.idempotency_key is not None]
            existing: dict[tuple[str, str], Job] = {}
            for n in keyed:
                assert n.idempotency_key is not None
                found = (
                    await conn.execute(
                        select(jobs).where(
                            jobs.c.org_id == n.org, jobs.c.idempotency_key == n.idempotency_key
                        )
                    )
                ).first()
                if found is not None:
                    existing[(n.org, n.idempotency_key)] = row_job(found)
            for n in new:
                job = existing.get((n.org, n.idempotency_key)) if n.idempotency_key else None
                if job is None:
                    slots.append(n)
                    continue
                if job.route != n.route or job.request_hash != n.request_hash:
                    raise IdempotencyKeyReused(
                        f"Idempotency-Key {n.idempotency_key!r} was used for another "
                        "request; use a new key for a new request"
                    )
                standing = None
                if job.accepted_position is not None and job.accepted_wait is not None:
                    standing = Standing(job.accepted_position, job.accepted_wait)
                slots.append(Enqueued(job, False, standing))
            fresh = [n for n in slots if isinstance(n, NewJob)]
            if not fresh:
                return [e for e in slots if isinstance(e, Enqueued)]
            # 2. One upsert per org counts the new jobs and returns what the estimate
            #    needs (running, cap, mean time) and the queue length before them.
            per_org: dict[str, int] = defaultdict(int)
            for n in fresh:
                per_org[n.org] += 1
            before: dict[str, Any] = {}
            for org in sorted(per_org):
                count = per_org[org]
                row = (
                    await conn.execute(self._count_queued, {"u_org": org, "u_count": count})
                ).one()
                before[org] = [row.queued - count, row.running, row.cap, row.avg_seconds]
            # 3. The jobs themselves, in one multi-row INSERT.
            values = []
            for n in fresh:
                state = before[n.org]
                state[0] += 1
                position = state[0]
                processing = state[3] if state[3] is not None else s.default_processing_seconds
                values.append(
                    {
                        "id": new_job_id(),
                        "org_id": n.org,
                        "environment": n.environment,
                        "tenant": n.tenant,
                        "route": n.route,
                        "application_id": n.application_id,
                        "idempotency_key": n.idempotency_key,
                        "request_hash": n.request_hash,
                        "request_id": n.request_id,
                        "payload": _dumps(n.payload),
                        "status": "queued",
                        "attempts": 0,
                        "max_attempts": s.max_attempts,
                        "run_after": now,
                        "created_at": now,
                        "accepted_position": position,
                        "accepted_wait": estimate_wait(position, state[1], state[2], processing),
                    }
                )
            seqs = (
                (
                    await conn.execute(
                        jobs.insert().returning(jobs.c.seq, sort_by_parameter_order=True), values
                    )
                )
                .scalars()
                .all()
            )
            await self._announce(conn, "jobs")
        made = iter(zip(fresh, values, seqs, strict=True))
        out: list[Enqueued] = []
        for slot in slots:
            if isinstance(slot, Enqueued):
                out.append(slot)
                continue
            n, v, seq = next(made)
            job = Job(
                id=v["id"],
                seq=seq,
                org=n.org,
                route=n.route,
                payload=n.payload,
                state="queued",
                attempts=0,
                max_attempts=s.max_attempts,
                created_at=now,
                run_after=now,
                environment=n.environment,
                tenant=n.tenant,
                application_id=n.application_id,
                idempotency_key=n.idempotency_key,
                request_hash=n.request_hash,
                request_id=n.request_id,
                accepted_position=v["accepted_position"],
                accepted_wait=v["accepted_wait"],
            )
            out.append(Enqueued(job, True, Standing(v["accepted_position"], v["accepted_wait"])))
        return out

    # --- claim, heartbeat ----------------------------------------------------------------

    async def claim(self, worker_id: str, limit: int) -> list[Lease]:
        """Take up to ``limit`` ready jobs; see :meth:`JobQueue.claim`."""
        if limit <= 0:
            return []
        now = self.clock()
        async with self._write() as conn:
            return await self._claim_in(conn, worker_id, limit, now)

    async def _claim_in(
        self, conn: AsyncConnection, worker_id: str, limit: int, now: datetime
    ) -> list[Lease]:
        expires = now + timedelta(seconds=self.settings.lease_seconds)
        leases: list[Lease] = []
        orgs = (await conn.execute(self._claim_orgs, {"c_limit": limit})).all()
        shares = share_slots(limit, [o.cap - o.running for o in orgs])
        batch = secrets.token_hex(16)
        # PostgreSQL's claim statement moves the org's counters itself; SQLite's are
        # moved afterwards for every served org at once.
        claim = self._claim_jobs if self._sqlite else self._claim_jobs_counted
        served: list[dict[str, Any]] = []
        for org, share in zip(orgs, shares, strict=True):
            if share == 0:
                continue
            result = (
                await conn.execute(
                    claim,
                    {
                        "p_org": org.org_id,
                        "p_now": now,
                        "p_share": share,
                        "p_batch": batch,
                        "p_expires": expires,
                        "p_worker": worker_id,
                    },
                )
            ).all()
            # RETURNING comes in no particular order; FIFO is by seq.
            rows = sorted(result, key=lambda r: int(r.seq))
            for row in rows:
                leases.append(Lease(row_job(row), row.lease_token, expires))
            if self._sqlite:
                served.append({"c_org": org.org_id, "c_count": len(rows), "c_now": now})
        if served:
            # Served, even with nothing ready (all in backoff): it goes to the back. The
            # rows are locked already; one executemany moves every org's counters.
            await conn.execute(self._claimed_orgs, served)
        return leases

    async def heartbeat(self, leases: Sequence[Lease]) -> set[str]:
        """Extend leases still held; returns their job ids."""
        if not leases:
            return set()
        expires = self.clock() + timedelta(seconds=self.settings.lease_seconds)
        held: set[str] = set()
        async with self._write() as conn:
            for start in range(0, len(leases), HEARTBEAT_CHUNK):
                chunk = leases[start : start + HEARTBEAT_CHUNK]
                pairs = [(lease.job.id, lease.token) for lease in chunk]
                rows = await conn.execute(
                    update(jobs)
                    .where(
                        tuple_(jobs.c.id, jobs.c.lease_token).in_(pairs),
                        jobs.c.status == "running",
                    )
                    .values(lease_expires_at=expires)
                    .returning(jobs.c.id)
                )
                held.update(rows.scalars())
        return held

    # --- finishing an attempt ------------------------------------------------------------

    async def _held(self, conn: AsyncConnection, lease: Lease) -> Job | None:
        """The leased job, locked, if ``lease`` still holds it."""
        row = (
            await conn.execute(
                select(jobs)
                .where(
                    jobs.c.id == lease.job.id,
                    jobs.c.lease_token == lease.token,
                    jobs.c.status == "running",
                )
                .with_for_update()
            )
        ).first()
        return row_job(row) if row is not None else None

    async def _settle(
        self,
        conn: AsyncConnection,
        job: Job,
        now: datetime,
        *,
        state: str,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        run_after: datetime | None = None,
        attempts: int | None = None,
    ) -> int:
        """Move a running job to ``state`` and the org's counters with it; returns the
        webhook deliveries staged (terminal states only)."""
        values: dict[str, Any] = {
            "status": state,
            "lease_token": None,
            "lease_expires_at": None,
            "worker_id": None,
        }
        if result is not None:
            values["result"] = _dumps(result)
        if error is not None:
            values["error"] = _dumps(error)
        if run_after is not None:
            values["run_after"] = run_after
        if attempts is not None:
            values["attempts"] = attempts
            if attempts == 0:
                values["started_at"] = None
        terminal = state in ("completed", "failed", "dead")
        if terminal:
            values["finished_at"] = now
        await conn.execute(update(jobs).where(jobs.c.id == job.id).values(**values))
        org_values: dict[str, Any] = {
            "running": job_orgs.c.running - 1,
            "queued": job_orgs.c.queued + (0 if terminal else 1),
        }
        await conn.execute(
            update(job_orgs).where(job_orgs.c.org_id == job.org).values(**org_values)
        )
        settled = replace(
            job,
            state=state,  # type: ignore[arg-type]
            result=result if result is not None else job.result,
            error=error if error is not None else job.error,
            run_after=run_after or job.run_after,
            attempts=attempts if attempts is not None else job.attempts,
            finished_at=now if terminal else job.finished_at,
        )
        if not terminal:
            return 0
        return await self._stage_events(conn, [settled], now)

    async def complete(self, lease: Lease, result: dict[str, Any]) -> Outcome | None:
        """Mark the leased job completed; None (and no change) when the lease is stale."""
        [outcome] = await self.finish_many([Finish(lease, result=result)])
        return outcome

    async def fail(self, lease: Lease, error: dict[str, Any], *, retryable: bool) -> Outcome | None:
        """End an attempt that failed: retried after a backoff while attempts remain and
        the failure is retryable, else ``failed`` (permanent) or ``dead`` (exhausted)."""
        [outcome] = await self.finish_many([Finish(lease, error=error, retryable=retryable)])
        return outcome

    async def finish_many(self, items: Sequence[Finish]) -> list[Outcome | None]:
        """End many attempts in one transaction (the dispatcher batches what finishes
        while the previous batch is written). Per item, as :meth:`complete` or
        :meth:`fail`; None where the lease is stale."""
        outcomes, _ = await self.finish_and_claim(items, "", 0)
        return outcomes

    async def finish_and_claim(
        self, items: Sequence[Finish], worker_id: str, limit: int
    ) -> tuple[list[Outcome | None], list[Lease]]:
        """:meth:`finish_many`, then :meth:`claim` up to ``limit`` jobs, in one
        transaction: a freed slot is refilled without a second round trip."""
        if not items:
            return [], (await self.claim(worker_id, limit) if limit > 0 else [])
        now = self.clock()
        leases: list[Lease] = []
        async with self._write() as conn:
            outcomes, staged = await self._finish_in(conn, items, now)
            if limit > 0:
                leases = await self._claim_in(conn, worker_id, limit, now)
        if any(o == "retrying" for o in outcomes):
            self._notify("jobs")
        if staged:
            self._notify("deliveries")
        return outcomes, leases

    async def _finish_in(
        self, conn: AsyncConnection, items: Sequence[Finish], now: datetime
    ) -> tuple[list[Outcome | None], int]:
        s = self.settings
        outcomes: list[Outcome | None] = []
        deltas: dict[str, list[Any]] = {}  # org → [running delta, queued delta, samples]
        finished: list[Job] = []
        # One statement finds (and locks) the jobs these leases still hold; the token
        # fixes the attempt, so every outcome is decided here. Only the columns that
        # decide are read: the rest of the job is the lease's copy (what a claim returns
        # does not change while the lease is held).
        held: dict[str, Any] = {}
        pairs = [(item.lease.job.id, item.lease.token) for item in items]
        # Completions only (the usual batch): nothing to decide from the row, so one
        # UPDATE … RETURNING both fences by token and writes them, with no read first.
        completing = all(item.error is None for item in items) and len(
            {job_id for job_id, _ in pairs}
        ) == len(pairs)
        for start in range(0, len(pairs), HEARTBEAT_CHUNK):
            chunk = pairs[start : start + HEARTBEAT_CHUNK]
            if completing:
                results = {
                    item.lease.job.id: _dumps(item.result or {})
                    for item in items[start : start + HEARTBEAT_CHUNK]
                }
                distinct = set(results.values())
                if len(distinct) == 1:
                    stmt: Any = self._complete
                    params: dict[str, Any] = {"f_result": distinct.pop()}
                else:
                    stmt = self._complete.values(result=case(results, value=jobs.c.id))
                    params = {}
                rows = await conn.execute(stmt, {"f_pairs": chunk, "f_now": now, **params})
            else:
                rows = await conn.execute(self._decide, {"f_pairs": chunk})
            held.update((r.id, r) for r in rows)
        writes: list[dict[str, Any]] = []
        for item in items:
            row = held.pop(item.lease.job.id, None)
            if row is None:
                outcomes.append(None)
                continue
            job = item.lease.job
            outcome: Outcome
            run_after = as_utc(row.run_after)
            if item.error is None:
                outcome = "completed"
            elif not item.retryable:
                outcome = "failed"
            elif row.attempts >= row.max_attempts:
                outcome = "dead"
            else:
                outcome = "retrying"
                delay = retry_delay(
                    row.attempts, s.retry_base_seconds, s.retry_max_seconds, self.rng
                )
                run_after = now + timedelta(seconds=delay)
            outcomes.append(outcome)
            terminal = outcome != "retrying"
            state = "queued" if outcome == "retrying" else outcome
            result = (item.result or {}) if item.error is None else None
            writes.append(
                {
                    "b_id": job.id,
                    "b_status": state,
                    "b_result": _dumps(result) if result is not None else None,
                    "b_error": _dumps(item.error) if item.error is not None else None,
                    "b_run_after": run_after,
                    "b_finished_at": now if terminal else None,
                }
            )
            delta = deltas.setdefault(job.org, [0, 0, []])
            delta[0] -= 1
            if terminal:
                finished.append(
                    replace(
                        job,
                        state=state,
                        attempts=row.attempts,
                        max_attempts=row.max_attempts,
                        result=result,
                        error=item.error,
                        finished_at=now,
                    )
                )
            else:
                delta[1] += 1
            claimed_at = as_utc(row.claimed_at)
            if claimed_at is not None:
                delta[2].append(max(0.0, (now - claimed_at).total_seconds()))
        if writes and not completing:
            await conn.execute(
                update(jobs)
                .where(jobs.c.id == bindparam("b_id"))
                .values(
                    status=bindparam("b_status"),
                    result=bindparam("b_result"),
                    error=bindparam("b_error"),
                    run_after=bindparam("b_run_after"),
                    finished_at=bindparam("b_finished_at"),
                    lease_token=None,
                    lease_expires_at=None,
                    worker_id=None,
                ),
                writes,
            )
        # The moving average is folded over the samples in the UPDATE itself (no read
        # first): avg × decay + offset, or, for an org never measured, the average of
        # the samples alone. One executemany (one round trip on PostgreSQL) for every
        # org, in sorted order so concurrent finishers lock org rows in the same order.
        org_params: list[dict[str, Any]] = []
        for org in sorted(deltas):
            running, queued, samples = deltas[org]
            decay, offset = ewma_terms(samples, s.ewma_alpha)
            fresh: float | None = None
            for sample in samples:
                fresh = moving_average(fresh, sample, s.ewma_alpha)
            org_params.append(
                {
                    "o_org": org,
                    "o_running": running,
                    "o_queued": queued,
                    "o_fresh": fresh,
                    "o_decay": decay,
                    "o_offset": offset,
                    "o_samples": len(samples),
                }
            )
        if org_params:
            await conn.execute(self._finish_orgs, org_params)
        staged = await self._stage_events(conn, finished, now)
        return outcomes, staged

    async def _stage_events(
        self, conn: AsyncConnection, finished: Sequence[Job], now: datetime
    ) -> int:
        # The outbox: deliveries are written in the jobs' own transaction, so a finished
        # job always has its webhooks, even if this process dies right after; its
        # product event (docs/jobs.md, "Job events") is written the same way.
        from tollhouse.jobs.webhooks import stage_events

        if not finished:
            return 0
        await record_job_events(conn, finished, now)
        staged = await stage_events(
            conn, [(j.org, j.id, event_type(j), partial(job_json, j)) for j in finished], now
        )
        if staged:
            await self._announce(conn, "deliveries")
        return staged

    async def release(self, lease: Lease) -> bool:
        """Give a claimed job back untried (the attempt is not counted)."""
        now = self.clock()
        async with self._write() as conn:
            job = await self._held(conn, lease)
            if job is None:
                return False
            await self._settle(
                conn,
                job,
                now,
                state="queued",
                run_after=now,
                attempts=max(0, job.attempts - 1),
            )
            await self._announce(conn, "jobs")
        self._notify("jobs")
        return True

    async def reap(self) -> int:
        """Requeue jobs whose lease expired (their worker died or stalled); past
        ``max_attempts`` they are ``dead``. Tokens are cleared, so the old holder is fenced."""
        now = self.clock()
        s = self.settings
        staged = 0
        async with self._write() as conn:
            rows = (
                await conn.execute(
                    select(jobs)
                    .where(jobs.c.status == "running", jobs.c.lease_expires_at < now)
                    .order_by(jobs.c.org_id, jobs.c.seq)
                    .limit(s.reap_batch)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for row in rows:
                job = row_job(row)
                error = {
                    "code": "LEASE_EXPIRED",
                    "message": "the worker running this job stopped answering",
                }
                if job.attempts >= job.max_attempts:
                    error["message"] += f"; gave up after {job.attempts} attempts"
                    staged += await self._settle(conn, job, now, state="dead", error=error)
                else:
                    delay = retry_delay(
                        job.attempts, s.retry_base_seconds, s.retry_max_seconds, self.rng
                    )
                    await self._settle(
                        conn,
                        job,
                        now,
                        state="queued",
                        error=error,
                        run_after=now + timedelta(seconds=delay),
                    )
        if rows:
            logger.warning("requeued jobs with expired leases", extra={"count": len(rows)})
            self._notify("jobs")
            if staged:
                self._notify("deliveries")
        return len(rows)

    async def prune(self) -> dict[str, int]:
        """Delete finished jobs and finished deliveries past their retention (see
        :class:`QueueSettings`), ``prune_batch`` rows per transaction; returns the rows
        deleted per table. Queued and running jobs and pending deliveries are never
        touched, whatever their age."""
        now = self.clock()
        s = self.settings
        deleted = {jobs.name: 0, webhook_deliveries.name: 0, webhook_attempts.name: 0}
        if s.jobs_retention_days is not None:
            cutoff = now - timedelta(days=s.jobs_retention_days)
            while True:
                async with self._write() as conn:
                    old = (
                        select(jobs.c.seq)
                        .where(jobs.c.status.in_(TERMINAL), jobs.c.finished_at < cutoff)
                        .limit(s.prune_batch)
                    )
                    seqs = (await conn.execute(old)).scalars().all()
                    if seqs:
                        await conn.execute(delete(jobs).where(jobs.c.seq.in_(seqs)))
                deleted[jobs.name] += len(seqs)
                if len(seqs) < s.prune_batch:
                    break
        if s.deliveries_retention_days is not None:
            cutoff = now - timedelta(days=s.deliveries_retention_days)
            d = webhook_deliveries.c
            while True:
                async with self._write() as conn:
                    old = (
                        select(d.id)
                        .where(d.status != "pending", d.finished_at < cutoff)
                        .limit(s.prune_batch)
                    )
                    ids = (await conn.execute(old)).scalars().all()
                    if ids:
                        gone = await conn.execute(
                            delete(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(ids))
                        )
                        deleted[webhook_attempts.name] += max(0, gone.rowcount or 0)
                        await conn.execute(delete(webhook_deliveries).where(d.id.in_(ids)))
                deleted[webhook_deliveries.name] += len(ids)
                if len(ids) < s.prune_batch:
                    break
        if any(deleted.values()):
            logger.info("pruned finished jobs and deliveries", extra={"deleted": deleted})
        return deleted

    # --- reads ---------------------------------------------------------------------------

    async def get(self, org: str, job_id: str) -> Job | None:
        """The org's job ``job_id``, or None (also for another org's job)."""
        async with self._read() as conn:
            row = (
                await conn.execute(select(jobs).where(jobs.c.id == job_id, jobs.c.org_id == org))
            ).first()
        return row_job(row) if row is not None else None

    async def latest_for_application(self, org: str, application_id: str) -> Job | None:
        """The org's most recently submitted job for ``application_id``, or None."""
        q = (
            select(jobs)
            .where(jobs.c.org_id == org, jobs.c.application_id == application_id)
            .order_by(jobs.c.seq.desc())
            .limit(1)
        )
        async with self._read() as conn:
            row = (await conn.execute(q)).first()
        return row_job(row) if row is not None else None

    async def standing(self, job: Job) -> Standing | None:
        """Where a job stands now, if still queued: jobs of its org ahead of it + 1, and
        the scoring API shape's wait estimate from the org's running count, cap and mean
        time."""
        async with self._read() as conn:
            status = (
                await conn.execute(select(jobs.c.status).where(jobs.c.id == job.id))
            ).scalar_one_or_none()
            if status != "queued":
                return None
            ahead = (
                await conn.execute(
                    select(func.count())
                    .select_from(jobs)
                    .where(
                        jobs.c.org_id == job.org,
                        jobs.c.status == "queued",
                        jobs.c.seq < job.seq,
                    )
                )
            ).scalar_one()
            org = (
                await conn.execute(
                    select(
                        job_orgs.c.running, self._cap().label("cap"), job_orgs.c.avg_seconds
                    ).where(job_orgs.c.org_id == job.org)
                )
            ).first()
        running, cap, avg = (org.running, org.cap, org.avg_seconds) if org else (0, 1, None)
        processing = avg if avg is not None else self.settings.default_processing_seconds
        position = int(ahead) + 1
        return Standing(position, estimate_wait(position, running, cap, processing))

    async def org_counters(self, org: str) -> OrgCounters:
        """``org``'s counters; an org with no jobs yet has zeros and the default cap."""
        async with self._read() as conn:
            row = (await conn.execute(select(job_orgs).where(job_orgs.c.org_id == org))).first()
        if row is None:
            return OrgCounters(org, 0, 0, None, None)
        return OrgCounters(org, row.running, row.queued, row.cap, row.avg_seconds)

    async def page(
        self,
        org: str,
        *,
        status: WireStatus | None = None,
        limit: int = 20,
        before: tuple[datetime, str] | None = None,
    ) -> JobPage:
        """``org``'s jobs newest first by ``(created_at, id)``; see :meth:`JobQueue.page`.

        Queued jobs of the page get their standing from two more statements whatever the
        page size: the org's queued jobs before the page's oldest queued one, and the
        queued seqs within the page's range.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        q = select(jobs).where(jobs.c.org_id == org)
        if status == "failed":
            q = q.where(jobs.c.status.in_(_FAILED_STATES))
        elif status is not None:
            q = q.where(jobs.c.status == status)
        if before is not None:
            q = q.where(tuple_(jobs.c.created_at, jobs.c.id) < tuple_(before[0], before[1]))
        q = q.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit + 1)
        standings: dict[str, Standing] = {}
        async with self._read() as conn:
            rows = (await conn.execute(q)).all()
            found = [row_job(r) for r in rows[:limit]]
            waiting = sorted(j.seq for j in found if j.state == "queued")
            if waiting:
                ahead = (
                    await conn.execute(
                        select(func.count())
                        .select_from(jobs)
                        .where(
                            jobs.c.org_id == org,
                            jobs.c.status == "queued",
                            jobs.c.seq < waiting[0],
                        )
                    )
                ).scalar_one()
                queued_seqs = (
                    (
                        await conn.execute(
                            select(jobs.c.seq)
                            .where(
                                jobs.c.org_id == org,
                                jobs.c.status == "queued",
                                jobs.c.seq >= waiting[0],
                                jobs.c.seq <= waiting[-1],
                            )
                            .order_by(jobs.c.seq)
                        )
                    )
                    .scalars()
                    .all()
                )
                org_row = (
                    await conn.execute(
                        select(
                            job_orgs.c.running, self._cap().label("cap"), job_orgs.c.avg_seconds
                        ).where(job_orgs.c.org_id == org)
                    )
                ).first()
        if waiting:
            running, cap, avg = (
                (org_row.running, org_row.cap, org_row.avg_seconds)
                if org_row is not None
                else (0, self.settings.default_cap, None)
            )
            processing = avg if avg is not None else self.settings.default_processing_seconds
            for job in found:
                if job.state != "queued":
                    continue
                position = int(ahead) + bisect_left(queued_seqs, job.seq) + 1
                standings[job.id] = Standing(
                    position, estimate_wait(position, running, cap, processing)
                )
        return JobPage(found, standings, len(rows) > limit)

    async def set_cap(self, org: str, cap: int | None) -> None:
        """Give ``org`` its own cap (None: the default again)."""
        if cap is not None and cap < 1:
            raise ValueError("cap must be at least 1")
        async with self._write() as conn:
            await self._ensure_org(conn, org)
            await conn.execute(update(job_orgs).where(job_orgs.c.org_id == org).values(cap=cap))
            await self._announce(conn, "jobs")
        self._notify("jobs")

    async def counters(self) -> list[OrgCounters]:
        """Every org's counters."""
        async with self._read() as conn:
            rows = (await conn.execute(select(job_orgs).order_by(job_orgs.c.org_id))).all()
        return [OrgCounters(r.org_id, r.running, r.queued, r.cap, r.avg_seconds) for r in rows]

    async def volume(
        self, org: str, start: datetime, end: datetime, granularity: str
    ) -> list[tuple[datetime, int, int]]:
        """Finished jobs of ``org`` with ``start <= finished_at <= end`` per bucket
        (``minute``, ``hour`` or ``day``): ``(bucket start, completed, failed)``."""
        bucket = self._bucket(granularity)
        completed = func.sum(case((jobs.c.status == "completed", 1), else_=0))
        failed = func.sum(case((jobs.c.status.in_(_FAILED_STATES), 1), else_=0))
        q: Select[Any] = (
            select(bucket.label("bucket"), completed.label("completed"), failed.label("failed"))
            .where(
                jobs.c.org_id == org,
                jobs.c.finished_at >= start,
                jobs.c.finished_at <= end,
                jobs.c.status.in_(("completed", *_FAILED_STATES)),
            )
            .group_by(bucket)
            .order_by(bucket)
        )
        async with self._read() as conn:
            rows = (await conn.execute(q)).all()
        out: list[tuple[datetime, int, int]] = []
        for r in rows:
            moment = r.bucket
            if isinstance(moment, str):
                moment = datetime.fromisoformat(moment)
            out.append((moment.replace(tzinfo=UTC), int(r.completed or 0), int(r.failed or 0)))
        return out

    def _bucket(self, granularity: str) -> Any:
        if granularity not in ("minute", "hour", "day"):
            raise ValueError(f"unknown granularity {granularity!r}")
        if self._sqlite:
            # SQLite keeps datetimes as "YYYY-MM-DD HH:MM:SS.ffffff" text (written in UTC).
            fmt = {
                "minute": "%Y-%m-%d %H:%M:00",
                "hour": "%Y-%m-%d %H:00:00",
                "day": "%Y-%m-%d 00:00:00",
            }[granularity]
            return func.strftime(fmt, jobs.c.finished_at)
        # AT TIME ZONE 'UTC' makes the truncation independent of the session's time zone.
        return func.date_trunc(granularity, func.timezone("UTC", jobs.c.finished_at))


class PgListener:
    """``LISTEN`` on :data:`NOTIFY_CHANNEL` over one connection of the queue's pool; each
    notification calls the queue's subscribers for its topic, so a dispatcher picks up a
    job another process enqueued without waiting for its poll interval.

    Polling stays the fallback: when the connection drops, the listener reconnects with
    backoff (1 s doubling to 30 s) and wakes every subscriber once connected again, since
    notifications sent meanwhile are lost.

    Args:
        queue: the queue whose subscribers are woken.
        retry_seconds: first delay before reconnecting.
    """

    def __init__(self, queue: SqlJobQueue, retry_seconds: float = 1.0) -> None:
        self.queue = queue
        self.retry_seconds = retry_seconds
        self.backend_pid: int | None = None
        """The listening session's server pid while connected (None otherwise)."""
        self.connects = 0
        """Successful connections so far (reconnects included)."""
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @property
    def listening(self) -> bool:
        """True while connected and listening."""
        return self.backend_pid is not None

    async def start(self, wait: float = 5.0) -> None:
        """Start listening; returns once the first connection attempt succeeded or
        failed, or after ``wait`` seconds (it goes on trying in the background)."""
        if self._task is not None:
            return
        self._ready.clear()
        self._task = asyncio.get_running_loop().create_task(self._run())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), wait)

    async def stop(self) -> None:
        """Stop listening; the connection is closed, not returned to the pool."""
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.queue._notify(payload if payload in _TOPICS else "jobs")

    async def _run(self) -> None:
        delay = self.retry_seconds
        while True:
            try:
                await self._listen()
                delay = self.retry_seconds
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "job notifications unavailable; polling until reconnected",
                    extra={"error": str(exc), "retry_in": delay},
                )
            finally:
                self.backend_pid = None
                self._ready.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _listen(self) -> None:
        conn = await self.queue.engine.connect()
        try:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            lost = asyncio.Event()
            driver.add_termination_listener(lambda _c: lost.set())
            await driver.add_listener(NOTIFY_CHANNEL, self._on_notify)
            self.backend_pid = driver.get_server_pid()
            self.connects += 1
            self._ready.set()
            # Work added while nobody listened (first start, or a reconnect) is not
            # announced again: look once now.
            for topic in _TOPICS:
                self.queue._notify(topic)
            while not lost.is_set() and not driver.is_closed():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), 5.0)
            logger.warning("job notification connection lost; reconnecting")
        finally:
            # A session that LISTENs must not go back to the pool.
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()
