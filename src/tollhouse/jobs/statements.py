"""The job queue's SQL: rows ↔ values, and the statements built once per queue.

Building a SQLAlchemy statement (and its cache key) costs about as much CPU as running
it, and the queue runs the same few statements thousands of times a second under load:
claims, completions, counter moves. :class:`QueueStatements` builds them once, with
bound parameters, for one dialect and one default cap; the state machine
(:mod:`tollhouse.jobs.machine`) and the read model (:mod:`tollhouse.jobs.reads`) run
them. Statements used rarely (enqueue's idempotency lookup, the reaper) are built where
they run.

Helpers here translate between rows and :class:`tollhouse.jobs.model.Job` and spell the
few dialect differences (``INSERT … ON CONFLICT``, time buckets).
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    Integer,
    String,
    Text,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement

from tollhouse.jobs.model import Job
from tollhouse.jobs.schema import (
    EPOCH,
    job_orgs,
    job_volume,
    job_workers,
    jobs,
    webhook_endpoints,
)
from tollhouse.storage import dialect
from tollhouse.times import as_utc

#: Internal states read as ``failed`` on the wire.
FAILED_STATES = ("failed", "dead")
#: Whether the job's scope (org and environment) has an enabled webhook endpoint, read
#: with the job in the statement that fences its finish: the outbox looks endpoints up
#: only for scopes that have one (most have none), without a statement of its own. Read
#: in the finishing transaction, like the lookup it spares, so it needs no cache and no
#: invalidation when another process adds or removes an endpoint. Spelled out: SQLite's
#: ``UPDATE … RETURNING`` is rendered with bare column names, which inside the subquery
#: would name the endpoint's own columns (``org_id = org_id``).
HAS_ENDPOINT = literal_column(
    f"EXISTS (SELECT 1 FROM {webhook_endpoints.name} e"
    f" WHERE e.org_id = {jobs.name}.org_id AND e.environment = {jobs.name}.environment"
    " AND e.disabled_at IS NULL AND e.removed_at IS NULL)",
    Boolean,
).label("has_endpoint")
#: What a finish reads of a held job to decide its outcome (the rest is the lease's copy).
DECIDE = (jobs.c.id, jobs.c.attempts, jobs.c.max_attempts, jobs.c.claimed_at, HAS_ENDPOINT)
#: Leases extended (or finishes fenced) per statement, so a statement stays a sane size.
HEARTBEAT_CHUNK = 500


def new_job_id() -> str:
    """``sj_`` + 20 hex characters (80 random bits): unguessable across orgs."""
    return "sj_" + secrets.token_hex(10)


def loads(text: str | None) -> Any:
    """A JSON column's value (None stays None)."""
    return None if text is None else orjson.loads(text)


def dumps(value: Any) -> str:
    """A value for a JSON text column."""
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
        result=loads(row.result),
        error=loads(row.error),
        accepted_position=row.accepted_position,
        accepted_wait=row.accepted_wait,
        place=row.place,
    )


def cap(default_cap: int) -> ColumnElement[Any]:
    """An org's cap: its own, else the queue's default."""
    return func.coalesce(job_orgs.c.cap, default_cap)


def day_of(dialect_name: str, bucket: ColumnElement[Any]) -> ColumnElement[Any]:
    """The start of the UTC day a rollup bucket falls in (text on SQLite, which keeps
    datetimes as ``YYYY-MM-DD HH:MM:SS.ffffff`` written in UTC)."""
    if dialect_name == "sqlite":
        return func.strftime("%Y-%m-%d 00:00:00", bucket)
    # AT TIME ZONE 'UTC' makes the truncation independent of the session's time zone.
    return func.date_trunc("day", func.timezone("UTC", bucket))


class QueueStatements:
    """The hot statements of one queue, built once with bound parameters.

    Args:
        dialect_name: ``sqlite`` or ``postgresql``.
        default_cap: the cap of an org without its own.
    """

    def __init__(self, dialect_name: str, default_cap: int) -> None:
        self.dialect = dialect_name
        self.cap = cap(default_cap)
        # Built once: constructing an upsert costs more than running it on SQLite.
        upsert = dialect.insert(dialect_name, job_orgs).values(
            org_id=bindparam("u_org"),
            environment=bindparam("u_env"),
            running=0,
            queued=bindparam("u_count"),
            last_served_at=EPOCH,
            samples=0,
            enqueued=bindparam("u_count"),
            claimed_through=0,
        )
        # When a worker last recorded itself (any worker): read with the org's counters,
        # in the same statement, so the estimate costs no extra round trip.
        self.workers_seen = select(func.max(job_workers.c.seen_at)).scalar_subquery()
        self.count_queued = upsert.on_conflict_do_update(
            index_elements=["org_id", "environment"],
            set_={
                "queued": job_orgs.c.queued + upsert.excluded.queued,
                "enqueued": job_orgs.c.enqueued + upsert.excluded.enqueued,
            },
        ).returning(
            job_orgs.c.running,
            job_orgs.c.queued,
            job_orgs.c.enqueued,
            self.cap.label("cap"),
            job_orgs.c.avg_seconds,
            self.workers_seen.label("workers_seen"),
        )
        self.ensure_org = (
            dialect.insert(dialect_name, job_orgs)
            .values(
                org_id=bindparam("e_org"),
                environment=bindparam("e_env"),
                running=0,
                queued=0,
                last_served_at=EPOCH,
                samples=0,
                enqueued=0,
                claimed_through=0,
            )
            .on_conflict_do_nothing(index_elements=["org_id", "environment"])
        )
        self.finish_orgs = (
            update(job_orgs)
            .where(
                job_orgs.c.org_id == bindparam("o_org"),
                job_orgs.c.environment == bindparam("o_env"),
            )
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
        # The higher of two values: SQLite's two-argument MAX, PostgreSQL's GREATEST.
        higher = func.max if dialect_name == "sqlite" else func.greatest
        self.claimed_orgs = (
            update(job_orgs)
            .where(
                job_orgs.c.org_id == bindparam("c_org"),
                job_orgs.c.environment == bindparam("c_env"),
            )
            .values(
                running=job_orgs.c.running + bindparam("c_count", type_=Integer),
                queued=job_orgs.c.queued - bindparam("c_count", type_=Integer),
                last_served_at=bindparam("c_now", type_=job_orgs.c.last_served_at.type),
                claimed_through=higher(
                    job_orgs.c.claimed_through, bindparam("c_through", type_=BigInteger)
                ),
            )
        )

        # The claim's and the completion's statements.
        when = jobs.c.run_after.type
        self.claim_orgs = (
            select(
                job_orgs.c.org_id,
                job_orgs.c.environment,
                job_orgs.c.running,
                self.cap.label("cap"),
            )
            .where(job_orgs.c.queued > 0, job_orgs.c.running < self.cap)
            .order_by(job_orgs.c.last_served_at, job_orgs.c.org_id, job_orgs.c.environment)
            .limit(bindparam("c_limit", type_=Integer))
            .with_for_update(skip_locked=True)
        )
        # Pick (and lock) a scope's oldest ready jobs and lease them in one statement.
        # One random part per claim; each job's token is it + the job id, so one UPDATE
        # sets every lease of an org and tokens still differ per job and per claim.
        pick = (
            select(jobs.c.seq)
            .where(
                jobs.c.org_id == bindparam("p_org", type_=String),
                jobs.c.environment == bindparam("p_env", type_=String),
                jobs.c.status == "queued",
                jobs.c.run_after <= bindparam("p_now", type_=when),
            )
            .order_by(jobs.c.seq)
            .limit(bindparam("p_share", type_=Integer))
            .with_for_update(skip_locked=True)
        )
        self.claim_jobs = (
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
        claimed = self.claim_jobs.cte("claimed")
        count = select(func.count()).select_from(claimed).scalar_subquery()
        through = select(func.coalesce(func.max(claimed.c.place), 0)).scalar_subquery()
        bump = (
            update(job_orgs)
            .where(
                job_orgs.c.org_id == bindparam("p_org", type_=String),
                job_orgs.c.environment == bindparam("p_env", type_=String),
            )
            .values(
                running=job_orgs.c.running + count,
                queued=job_orgs.c.queued - count,
                last_served_at=bindparam("p_now", type_=when),
                claimed_through=higher(job_orgs.c.claimed_through, through),
            )
        )
        self.claim_jobs_counted = select(claimed).add_cte(bump.cte("bumped"))
        # A finish's fence: the (job id, lease token) pairs still running.
        fence = (
            tuple_(jobs.c.id, jobs.c.lease_token).in_(bindparam("f_pairs", expanding=True)),
            jobs.c.status == "running",
        )
        # Completions: fenced and written in one UPDATE … RETURNING.
        self.complete = (
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
            .returning(*DECIDE, jobs.c.run_after)
        )
        # Completions with results that differ: the same statement, each job's result
        # looked up by its id in one JSON object of result texts (``f_results``: job id →
        # the result as JSON text), so no per-batch CASE is built or compiled.
        results = bindparam("f_results", type_=Text)
        if dialect_name == "sqlite":
            own: ColumnElement[Any] = func.json_extract(
                results, literal_column("'$.\"'") + jobs.c.id + literal_column("'\"'")
            )
        else:
            own = cast(results, JSONB).op("->>", return_type=Text)(jobs.c.id)
        self.complete_each = self.complete.values(result=own)
        self.decide = select(*DECIDE, jobs.c.run_after).where(*fence).with_for_update()
        # Where a queued job stands needs its scope's running count, cap and mean time, and
        # (a job placed above ``claimed_through``) its queued count and last place.
        self.org_estimate = select(
            job_orgs.c.queued,
            job_orgs.c.enqueued,
            job_orgs.c.claimed_through,
            job_orgs.c.running,
            self.cap.label("cap"),
            job_orgs.c.avg_seconds,
            self.workers_seen.label("workers_seen"),
        ).where(
            job_orgs.c.org_id == bindparam("s_org", type_=String),
            job_orgs.c.environment == bindparam("s_env", type_=String),
        )
        # A job's state and place with its scope's counters, read in one statement (one
        # snapshot: a claim moves both together, so they always agree).
        self.job_standing = (
            select(
                jobs.c.status,
                jobs.c.seq,
                jobs.c.place,
                job_orgs.c.queued,
                job_orgs.c.enqueued,
                job_orgs.c.claimed_through,
                job_orgs.c.running,
                self.cap.label("cap"),
                job_orgs.c.avg_seconds,
                self.workers_seen.label("workers_seen"),
            )
            .select_from(jobs)
            .outerjoin(
                job_orgs,
                (job_orgs.c.org_id == jobs.c.org_id)
                & (job_orgs.c.environment == jobs.c.environment),
            )
            .where(jobs.c.id == bindparam("s_id", type_=String))
        )
        # A worker records itself (and forgets workers gone for a day: ids are host:pid).
        upsert_worker = dialect.insert(dialect_name, job_workers).values(
            worker_id=bindparam("w_id", type_=String),
            seen_at=bindparam("w_now", type_=job_workers.c.seen_at.type),
        )
        self.worker_seen = upsert_worker.on_conflict_do_update(
            index_elements=["worker_id"], set_={"seen_at": upsert_worker.excluded.seen_at}
        )
        # Finished jobs into the rollup: each row adds to its bucket's counts (rows from
        # jobs.volume.tallies, one per scope, span and bucket, in key order).
        tally = dialect.insert(dialect_name, job_volume).values(
            org_id=bindparam("v_org", type_=String),
            environment=bindparam("v_env", type_=String),
            span=bindparam("v_span", type_=String),
            bucket=bindparam("v_bucket", type_=job_volume.c.bucket.type),
            completed=bindparam("v_completed", type_=BigInteger),
            failed=bindparam("v_failed", type_=BigInteger),
        )
        self.count_finished = tally.on_conflict_do_update(
            index_elements=["org_id", "environment", "span", "bucket"],
            set_={
                "completed": job_volume.c.completed + tally.excluded.completed,
                "failed": job_volume.c.failed + tally.excluded.failed,
            },
        )
