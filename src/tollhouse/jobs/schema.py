"""Tables of the job queue and webhooks, on the shared :data:`tollhouse.storage.schema.metadata`.

Every jobs/webhooks table name lives here. They are created by a versioned step of
:data:`tollhouse.schema.MIGRATIONS` (:func:`migrate_jobs`), like every other table.

Before that step existed, :func:`create_job_schema` made them outside the runner, so a
database may hold them (whole, or without an index added since) with no step recorded:
the step adopts what exists (:func:`tollhouse.storage.migrations.ensure_tables`) instead
of failing on it.

:func:`create_job_schema` stays for a process that needs only the queue's tables and must
not depend on the rest of the schema (it is the same step, without the version
bookkeeping); :func:`tollhouse.schema.create_schema` is the one path that records it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.metering.schema import product_events
from tollhouse.storage.migrations import ensure_tables
from tollhouse.storage.schema import metadata

#: SQLite only makes ``INTEGER PRIMARY KEY`` an auto-incrementing rowid; PostgreSQL gets a
#: 64-bit identity.
_Seq = BigInteger().with_variant(Integer(), "sqlite")

#: "Never served" for the round robin: sorts before every real time.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

jobs = Table(
    "jobs",
    metadata,
    Column("seq", _Seq, primary_key=True, autoincrement=True),
    Column("id", String(40), nullable=False, unique=True),
    Column("org_id", String(64), nullable=False),
    Column("environment", String(16), nullable=False, default=""),
    Column("tenant", String(200), nullable=True),
    Column("route", String(200), nullable=False),
    Column("application_id", String(256), nullable=True),
    Column("idempotency_key", String(300), nullable=True),
    Column("request_hash", String(64), nullable=True),
    Column("request_id", String(64), nullable=True),
    Column("payload", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False),
    Column("run_after", DateTime(timezone=True), nullable=False),
    Column("lease_token", String(64), nullable=True),
    Column("lease_expires_at", DateTime(timezone=True), nullable=True),
    Column("worker_id", String(100), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("claimed_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("result", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("accepted_position", Integer, nullable=True),
    Column("accepted_wait", Integer, nullable=True),
    UniqueConstraint("org_id", "idempotency_key", name="uq_jobs_org_idempotency"),
    # Claims: the org's ready jobs in FIFO order; positions: queued jobs ahead of one.
    Index("ix_jobs_org_status_seq", "org_id", "status", "seq"),
    # The reaper: running jobs whose lease ran out.
    Index("ix_jobs_status_lease", "status", "lease_expires_at"),
    Index("ix_jobs_org_application", "org_id", "application_id", "seq"),
    # scoring-volume: an org's outcomes over a time range.
    Index("ix_jobs_org_finished", "org_id", "finished_at"),
    # GET /v1/queue: an org's jobs newest first, keyset paging on (created_at, id).
    Index("ix_jobs_org_created", "org_id", "created_at", "id"),
)

job_orgs = Table(
    "job_orgs",
    metadata,
    Column("org_id", String(64), primary_key=True),
    # Changed in the same transaction as every job state change: the cap's source of truth.
    Column("running", Integer, nullable=False, default=0),
    Column("queued", Integer, nullable=False, default=0),
    # The org's own cap; NULL → the queue's default (the async route's concurrency).
    Column("cap", Integer, nullable=True),
    Column("last_served_at", DateTime(timezone=True), nullable=False),
    Column("avg_seconds", Float, nullable=True),
    Column("samples", BigInteger, nullable=False, default=0),
    Index("ix_job_orgs_served", "last_served_at"),
)

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(64), nullable=False),
    Column("url", String(2048), nullable=False),
    # Kept in clear: signing needs it. Shown once, at creation.
    Column("secret", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("disabled_at", DateTime(timezone=True), nullable=True),
    Column("disabled_reason", String(200), nullable=True),
    Column("removed_at", DateTime(timezone=True), nullable=True),
    Index("ix_webhook_endpoints_org", "org_id"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(40), primary_key=True),
    # The Standard Webhooks ``webhook-id``: one per event, the same for every endpoint and
    # every retry, so receivers can deduplicate.
    Column("message_id", String(40), nullable=False),
    Column("endpoint_id", String(40), nullable=False),
    Column("org_id", String(64), nullable=False),
    Column("job_id", String(40), nullable=True),
    Column("event_type", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    # Doubles as the lease: a claim pushes it past the attempt's timeout, so a sender that
    # dies mid-attempt has its delivery retried.
    Column("next_attempt_at", DateTime(timezone=True), nullable=True),
    Column("lease_token", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    Index("ix_webhook_deliveries_org_job", "org_id", "job_id"),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", _Seq, primary_key=True, autoincrement=True),
    Column("delivery_id", String(40), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("duration_ms", Float, nullable=False),
    Column("error", String(500), nullable=True),
    Index("ix_webhook_attempts_delivery", "delivery_id", "attempt"),
)

#: One row per running worker (a ``tollhouse worker`` process or a server's embedded one):
#: it records itself every few seconds and deletes its row when it stops. Jobs answered
#: while no row is recent get ``estimatedWaitSeconds: null`` (nothing would run them).
job_workers = Table(
    "job_workers",
    metadata,
    Column("worker_id", String(100), primary_key=True),
    Column("seen_at", DateTime(timezone=True), nullable=False),
)

JOB_TABLES = (jobs, job_orgs, webhook_endpoints, webhook_deliveries, webhook_attempts)


def migrate_jobs(conn: Connection) -> None:
    """Migration step: the jobs and webhooks tables and their indexes, adopting those a
    database made by :func:`create_job_schema` (or ``create_all``) already has."""
    ensure_tables(conn, JOB_TABLES)


def migrate_workers(conn: Connection) -> None:
    """Migration step: the workers' presence table (:data:`job_workers`)."""
    ensure_tables(conn, (job_workers,))


async def create_job_schema(engine: AsyncEngine) -> None:
    """Create the jobs and webhooks tables, and their indexes, when missing (idempotent).

    Also ``product_events`` (the analytics table jobs write their outcome events to), so
    a ``tollhouse worker`` can run before any ``serve`` migrated the database; the
    migration runner adopts both (its steps use ``IF NOT EXISTS`` too). Records no
    version: :func:`tollhouse.schema.create_schema` does.
    """

    def create(conn: Connection) -> None:
        ensure_tables(conn, (*JOB_TABLES, job_workers, product_events))

    async with engine.begin() as conn:
        await conn.run_sync(create)
