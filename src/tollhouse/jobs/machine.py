r"""The job queue's state machine: enqueue, claim, heartbeat, finish, release, reap.

Every state change is one write transaction that also moves the counters of the job's
scope — its org in its environment (``job_orgs``) — so ``running`` always equals the
scope's running jobs and the cap holds across processes. An org's SANDBOX and PRODUCTION
jobs are two scopes: their own FIFO, cap, counters and round-robin turn, as apart as two
orgs.

* **PostgreSQL**: a claim locks the least recently served orgs that are under their cap
  (``FOR UPDATE SKIP LOCKED``), so claimers in other processes serve other orgs instead of
  waiting, then locks each org's oldest ready jobs the same way. Completions, failures
  and the reaper lock the job row, then the org row (always in that order; the claim
  never waits on a lock), so there are no lock cycles.
* **SQLite**: one writer at a time; every write transaction starts with
  ``BEGIN IMMEDIATE`` so it holds the write lock before its first read (a deferred
  transaction that read first could not upgrade once another process had written).

A transaction that ends jobs also writes their outbox (:mod:`tollhouse.jobs.outbox`) and,
on PostgreSQL, ``NOTIFY``\ s listeners of new work (:mod:`tollhouse.jobs.wakeups`); this
process's subscribers are woken after commit. Statements come prebuilt from
:mod:`tollhouse.jobs.statements`; reads live in :mod:`tollhouse.jobs.reads`.

Why one module: what is left here are the writes alone, and they keep two invariants
that can only be checked by reading them side by side: each job transition moves its
scope's counters in the same transaction, and the writes that wait on locks take them in
one order (job row, then org row; the claim never waits). Spread over modules, a new
transition could break either unseen.
"""

from __future__ import annotations

import logging
import random
import secrets
from collections import defaultdict
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollhouse.errors import StorageError
from tollhouse.jobs.eta import (
    any_worker_running,
    ewma_terms,
    moving_average,
    quoted_wait,
    retry_delay,
    share_slots,
)
from tollhouse.jobs.model import (
    PRODUCTION,
    Clock,
    Enqueued,
    Finish,
    IdempotencyKeyReused,
    Job,
    Lease,
    NewJob,
    Outcome,
    QueueSettings,
    Standing,
)
from tollhouse.jobs.outbox import stage_finished
from tollhouse.jobs.schema import job_orgs, job_workers, jobs
from tollhouse.jobs.statements import HEARTBEAT_CHUNK, QueueStatements, dumps, new_job_id, row_job
from tollhouse.jobs.volume import tallies
from tollhouse.jobs.wakeups import Wakeups, announce
from tollhouse.storage.transactions import write_transaction
from tollhouse.times import as_utc

logger = logging.getLogger(__name__)


class QueueMachine:
    """The writes of :class:`tollhouse.jobs.sql.SqlJobQueue`.

    Args:
        engine: the queue's engine.
        settings: caps, leases and retries.
        sql: the queue's prebuilt statements.
        wakeups: this process's subscribers, woken after a write that added work.
        clock: returns aware UTC datetimes.
        rng: randomness for backoff jitter.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        settings: QueueSettings,
        sql: QueueStatements,
        wakeups: Wakeups,
        *,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.sql = sql
        self.wakeups = wakeups
        self.clock = clock
        self.rng = rng
        self.sqlite = engine.dialect.name == "sqlite"

    def _write(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return write_transaction(self.engine, "job queue")

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
            self.wakeups.notify("jobs")
        return out

    async def _enqueue(self, new: Sequence[NewJob]) -> list[Enqueued]:
        now = self.clock()
        s = self.settings
        slots: list[Enqueued | NewJob] = []
        async with self._write() as conn:
            # 1. Idempotency-Key matches return the existing job (the same 202 body). A key
            #    names a job within its org *and* environment: the same key in the other
            #    environment is a new job.
            keyed = [n for n in new if n.idempotency_key is not None]
            existing: dict[tuple[str, str, str], Job] = {}
            for n in keyed:
                assert n.idempotency_key is not None
                found = (
                    await conn.execute(
                        select(jobs).where(
                            jobs.c.org_id == n.org,
                            jobs.c.environment == n.environment,
                            jobs.c.idempotency_key == n.idempotency_key,
                        )
                    )
                ).first()
                if found is not None:
                    existing[(n.org, n.environment, n.idempotency_key)] = row_job(found)
            for n in new:
                job = (
                    existing.get((n.org, n.environment, n.idempotency_key))
                    if n.idempotency_key
                    else None
                )
                if job is None:
                    slots.append(n)
                    continue
                if job.route != n.route or job.request_hash != n.request_hash:
                    raise IdempotencyKeyReused(
                        f"Idempotency-Key {n.idempotency_key!r} was used for another "
                        "request; use a new key for a new request"
                    )
                standing = None
                if job.accepted_position is not None:
                    standing = Standing(job.accepted_position, job.accepted_wait)
                slots.append(Enqueued(job, False, standing))
            fresh = [n for n in slots if isinstance(n, NewJob)]
            if not fresh:
                return [e for e in slots if isinstance(e, Enqueued)]
            # 2. One upsert per scope (org, environment) counts the new jobs and returns
            #    what the estimate needs (running, cap, mean time) and the queue length
            #    before them.
            per_scope: dict[tuple[str, str], int] = defaultdict(int)
            for n in fresh:
                per_scope[(n.org, n.environment)] += 1
            before: dict[tuple[str, str], Any] = {}
            for org, environment in sorted(per_scope):
                count = per_scope[(org, environment)]
                row = (
                    await conn.execute(
                        self.sql.count_queued,
                        {"u_org": org, "u_env": environment, "u_count": count},
                    )
                ).one()
                workers = any_worker_running(as_utc(row.workers_seen), now, s.worker_seen_seconds)
                before[(org, environment)] = [
                    row.queued - count,
                    row.running,
                    row.cap,
                    row.avg_seconds,
                    workers,
                    row.enqueued - count,
                ]
            # 3. The jobs themselves, in one multi-row INSERT.
            values = []
            for n in fresh:
                state = before[(n.org, n.environment)]
                state[0] += 1
                state[5] += 1
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
                        "payload": dumps(n.payload),
                        "status": "queued",
                        "attempts": 0,
                        "max_attempts": s.max_attempts,
                        "run_after": now,
                        "created_at": now,
                        "accepted_position": position,
                        "place": state[5],
                        "accepted_wait": quoted_wait(
                            position, state[1], state[2], processing, state[4]
                        ),
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
            await announce(conn, "jobs")
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
                place=v["place"],
            )
            out.append(Enqueued(job, True, Standing(v["accepted_position"], v["accepted_wait"])))
        return out

    # --- workers' presence --------------------------------------------------------------

    async def record_worker(self, worker_id: str) -> None:
        """Record that ``worker_id`` runs now; forget workers not seen for a day."""
        now = self.clock()
        async with self._write() as conn:
            await conn.execute(self.sql.worker_seen, {"w_id": worker_id, "w_now": now})
            await conn.execute(
                delete(job_workers).where(job_workers.c.seen_at < now - timedelta(days=1))
            )

    async def forget_worker(self, worker_id: str) -> None:
        """Remove ``worker_id``'s record (it stopped)."""
        async with self._write() as conn:
            await conn.execute(delete(job_workers).where(job_workers.c.worker_id == worker_id))

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
        orgs = (await conn.execute(self.sql.claim_orgs, {"c_limit": limit})).all()
        shares = share_slots(limit, [o.cap - o.running for o in orgs])
        batch = secrets.token_hex(16)
        # PostgreSQL's claim statement moves the org's counters itself; SQLite's are
        # moved afterwards for every served org at once.
        claim = self.sql.claim_jobs if self.sqlite else self.sql.claim_jobs_counted
        served: list[dict[str, Any]] = []
        for org, share in zip(orgs, shares, strict=True):
            if share == 0:
                continue
            result = (
                await conn.execute(
                    claim,
                    {
                        "p_org": org.org_id,
                        "p_env": org.environment,
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
            if self.sqlite:
                places = [r.place for r in rows if r.place is not None]
                served.append(
                    {
                        "c_org": org.org_id,
                        "c_env": org.environment,
                        "c_count": len(rows),
                        "c_now": now,
                        "c_through": max(places, default=0),
                    }
                )
        if served:
            # Served, even with nothing ready (all in backoff): it goes to the back. The
            # rows are locked already; one executemany moves every org's counters.
            await conn.execute(self.sql.claimed_orgs, served)
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
            values["result"] = dumps(result)
        if error is not None:
            values["error"] = dumps(error)
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
            update(job_orgs)
            .where(job_orgs.c.org_id == job.org, job_orgs.c.environment == job.environment)
            .values(**org_values)
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
            self.wakeups.notify("jobs")
        if staged:
            self.wakeups.notify("deliveries")
        return outcomes, leases

    async def _finish_in(
        self, conn: AsyncConnection, items: Sequence[Finish], now: datetime
    ) -> tuple[list[Outcome | None], int]:
        s = self.settings
        outcomes: list[Outcome | None] = []
        # (org, environment) → [running delta, queued delta, samples]
        deltas: dict[tuple[str, str], list[Any]] = {}
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
                    item.lease.job.id: dumps(item.result or {})
                    for item in items[start : start + HEARTBEAT_CHUNK]
                }
                distinct = set(results.values())
                if len(distinct) == 1:
                    stmt: Any = self.sql.complete
                    params: dict[str, Any] = {"f_result": distinct.pop()}
                else:
                    stmt = self.sql.complete_each
                    params = {"f_results": dumps(results)}
                rows = await conn.execute(stmt, {"f_pairs": chunk, "f_now": now, **params})
            else:
                rows = await conn.execute(self.sql.decide, {"f_pairs": chunk})
            held.update((r.id, r) for r in rows)
        writes: list[dict[str, Any]] = []
        # Scopes with an enabled webhook endpoint (read with the jobs, for the outbox).
        with_endpoints: set[tuple[str, str]] = set()
        for item in items:
            row = held.pop(item.lease.job.id, None)
            if row is None:
                outcomes.append(None)
                continue
            job = item.lease.job
            if row.has_endpoint:
                with_endpoints.add((job.org, job.environment))
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
                    "b_result": dumps(result) if result is not None else None,
                    "b_error": dumps(item.error) if item.error is not None else None,
                    "b_run_after": run_after,
                    "b_finished_at": now if terminal else None,
                }
            )
            delta = deltas.setdefault((job.org, job.environment), [0, 0, []])
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
        for org, environment in sorted(deltas):
            running, queued, samples = deltas[(org, environment)]
            decay, offset = ewma_terms(samples, s.ewma_alpha)
            fresh: float | None = None
            for sample in samples:
                fresh = moving_average(fresh, sample, s.ewma_alpha)
            org_params.append(
                {
                    "o_org": org,
                    "o_env": environment,
                    "o_running": running,
                    "o_queued": queued,
                    "o_fresh": fresh,
                    "o_decay": decay,
                    "o_offset": offset,
                    "o_samples": len(samples),
                }
            )
        if org_params:
            await conn.execute(self.sql.finish_orgs, org_params)
        staged = await self._stage_events(conn, finished, now, with_endpoints)
        return outcomes, staged

    async def _stage_events(
        self,
        conn: AsyncConnection,
        finished: Sequence[Job],
        now: datetime,
        with_endpoints: set[tuple[str, str]] | None = None,
    ) -> int:
        # Every path to a final state (finish, the reaper's dead) passes here: the
        # finished-jobs rollup moves in the same transaction, so it is exact.
        rows = tallies((j.org, j.environment, j.state, j.finished_at or now) for j in finished)
        if rows:
            await conn.execute(self.sql.count_finished, rows)
        # The outbox, in the jobs' own transaction (tollhouse.jobs.outbox).
        staged = await stage_finished(conn, finished, now, with_endpoints=with_endpoints)
        if staged:
            await announce(conn, "deliveries")
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
            await announce(conn, "jobs")
        self.wakeups.notify("jobs")
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
            self.wakeups.notify("jobs")
            if staged:
                self.wakeups.notify("deliveries")
        return len(rows)

    async def set_cap(self, org: str, cap: int | None, *, environment: str = PRODUCTION) -> None:
        """Give ``org`` its own cap in ``environment`` (None: the default again)."""
        if cap is not None and cap < 1:
            raise ValueError("cap must be at least 1")
        async with self._write() as conn:
            await conn.execute(self.sql.ensure_org, {"e_org": org, "e_env": environment})
            await conn.execute(
                update(job_orgs)
                .where(job_orgs.c.org_id == org, job_orgs.c.environment == environment)
                .values(cap=cap)
            )
            await announce(conn, "jobs")
        self.wakeups.notify("jobs")
