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

Every row belongs to an org *and* an environment (SANDBOX or PRODUCTION, the key's):
jobs, the queue's counters (``job_orgs``, one row per org and environment), webhook
endpoints and deliveries. :func:`separate_environments` is the step that brought tables
made before that to this layout; :func:`create_job_schema` runs it too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

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
    func,
    inspect,
    select,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.jobs.volume import ROLLUP_KEEP
from tollhouse.metering.schema import product_events
from tollhouse.storage.migrations import create_tables, ensure_tables, rebuild_table
from tollhouse.storage.schema import metadata
from tollhouse.storage.transactions import write_transaction
from tollhouse.times import as_utc

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
    # SANDBOX or PRODUCTION, from the key: every read and write is scoped by org and it.
    Column("environment", String(16), nullable=False),
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
    # The job's number in its queue (1, 2, 3… per org and environment, in ``seq`` order),
    # from ``job_orgs.enqueued``: where it stands is read from the counters, not counted
    # (:func:`add_queue_places`). NULL only for a row no process numbered (never after
    # step 16 on a database that only current processes write).
    Column("place", BigInteger, nullable=True),
    # An Idempotency-Key names one job per org *and* environment (:func:`separate_environments`).
    UniqueConstraint("org_id", "environment", "idempotency_key", name="uq_jobs_scope_idempotency"),
    # Claims: a scope's ready jobs in FIFO order; positions: queued jobs ahead of one.
    Index("ix_jobs_scope_status_seq", "org_id", "environment", "status", "seq"),
    # The reaper: running jobs whose lease ran out.
    Index("ix_jobs_status_lease", "status", "lease_expires_at"),
    Index("ix_jobs_scope_application", "org_id", "environment", "application_id", "seq"),
    # scoring-volume: a scope's outcomes over a time range.
    Index("ix_jobs_scope_finished", "org_id", "environment", "finished_at"),
    # GET /v1/queue: a scope's jobs newest first, keyset paging on (created_at, id).
    Index("ix_jobs_scope_created", "org_id", "environment", "created_at", "id"),
)

#: One row per queue scope, an org in one environment (SANDBOX and PRODUCTION queue apart:
#: their own cap, counters and round-robin turn).
job_orgs = Table(
    "job_orgs",
    metadata,
    Column("org_id", String(64), primary_key=True),
    Column("environment", String(16), primary_key=True),
    # Changed in the same transaction as every job state change: the cap's source of truth.
    Column("running", Integer, nullable=False, default=0),
    Column("queued", Integer, nullable=False, default=0),
    # The org's own cap; NULL → the queue's default (the async route's concurrency).
    Column("cap", Integer, nullable=True),
    Column("last_served_at", DateTime(timezone=True), nullable=False),
    Column("avg_seconds", Float, nullable=True),
    Column("samples", BigInteger, nullable=False, default=0),
    # The last place given to a job of the queue (``jobs.place``), and the highest place
    # a claim has taken: every job placed above ``claimed_through`` is still queued, so
    # such a job's position is ``queued − (enqueued − place)`` (:func:`add_queue_places`).
    Column("enqueued", BigInteger, nullable=False, server_default="0"),
    Column("claimed_through", BigInteger, nullable=False, server_default="0"),
    Index("ix_job_orgs_served", "last_served_at"),
)

#: Finished jobs counted per scope, span and bucket: the scoring-volume route's source
#: (:func:`add_volume_rollup`). The finishing transaction adds to the row of the minute and
#: of the hour the job finished in (``span`` ``minute``/``hour``, ``bucket`` its UTC
#: start), so the counts are exact; retention trims minute rows after a day and hour rows
#: after the longest range (:mod:`tollhouse.jobs.retention`), never with the jobs. The
#: counts stay out of every index, so PostgreSQL can update the current bucket's row in
#: place (HOT) on every finish; a range read is the primary key's range.
job_volume = Table(
    "job_volume",
    metadata,
    Column("org_id", String(64), primary_key=True),
    Column("environment", String(16), primary_key=True),
    Column("span", String(8), primary_key=True),
    Column("bucket", DateTime(timezone=True), primary_key=True),
    Column("completed", BigInteger, nullable=False, server_default="0"),
    # failed and dead (both ``failed`` on the wire).
    Column("failed", BigInteger, nullable=False, server_default="0"),
)

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(64), nullable=False),
    # Only jobs of this environment are sent here (:func:`separate_environments`).
    Column("environment", String(16), nullable=False),
    Column("url", String(2048), nullable=False),
    # Kept in clear: signing needs it. Shown once, at creation.
    Column("secret", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("disabled_at", DateTime(timezone=True), nullable=True),
    Column("disabled_reason", String(200), nullable=True),
    Column("removed_at", DateTime(timezone=True), nullable=True),
    # After a secret rotation the old secret keeps signing beside the new one until
    # ``previous_secret_expires_at`` (step 11, :func:`add_portal_columns`).
    Column("previous_secret", String(200), nullable=True),
    Column("previous_secret_expires_at", DateTime(timezone=True), nullable=True),
    # JSON array of the event types sent here; NULL sends every type (step 11).
    Column("event_types", Text, nullable=True),
    Index("ix_webhook_endpoints_scope", "org_id", "environment"),
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
    # The endpoint's environment (= the job's): who may list the delivery.
    Column("environment", String(16), nullable=False),
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
    Index("ix_webhook_deliveries_scope_job", "org_id", "environment", "job_id"),
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
    # The start of the receiver's answer, for people reading the deliveries (step 11).
    Column("response_excerpt", String(500), nullable=True),
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


#: The environment given to rows made before environments were kept apart that recorded
#: none (webhook endpoints and their deliveries; jobs enqueued through the Python API):
#: production, so an integration set up before then keeps working as it did.
LEGACY_ENVIRONMENT = "PRODUCTION"
#: Indexes that led with ``org_id`` alone, by table; replaced by ones on (org, environment).
_ORG_INDEXES: dict[str, tuple[str, ...]] = {
    "jobs": (
        "ix_jobs_org_status_seq",
        "ix_jobs_org_application",
        "ix_jobs_org_finished",
        "ix_jobs_org_created",
    ),
    "webhook_endpoints": ("ix_webhook_endpoints_org",),
    "webhook_deliveries": ("ix_webhook_deliveries_org_job",),
}


def separate_environments(conn: Connection) -> None:
    """Migration step: sandbox apart from production in the queue, webhooks and events.

    Idempotent (each change is made only where the catalog shows the old layout), so a
    database created from the current definitions goes through unchanged, and
    :func:`create_job_schema` runs it too.

    * ``jobs``: rows without an environment (made through the Python API before it was
      required) become PRODUCTION; the Idempotency-Key is unique per org *and*
      environment; the per-org indexes become per (org, environment).
    * ``job_orgs``: one row per (org, environment). Each org's row is copied to both
      environments (its cap, round-robin turn and moving average go with it) and the
      counters are counted again from the jobs of each environment.
    * ``webhook_endpoints`` and ``webhook_deliveries`` gain ``environment``; existing
      rows are PRODUCTION (endpoints were added with no environment, and a delivery
      belongs where its endpoint is).
    * ``product_events``: an event id is unique per org *and* environment, so a sandbox
      event can no longer hide a production one with the same id.

    SQLite cannot drop a table's constraint: ``jobs`` and ``product_events`` are copied
    into a table of the current definition there (in this step's transaction).
    """
    if not _before_environments(conn):
        return
    if conn.dialect.name == "postgresql":
        # Workers may keep running during an upgrade: nothing moves the counters while
        # they are counted again. (Taken only when there is something to change: every
        # process start runs this.)
        conn.exec_driver_sql(
            "LOCK TABLE jobs, job_orgs, webhook_endpoints, webhook_deliveries, product_events "
            "IN ACCESS EXCLUSIVE MODE"
        )
    conn.execute(
        jobs.update()
        .where(jobs.c.environment.not_in(("SANDBOX", "PRODUCTION")))
        .values(environment=LEGACY_ENVIRONMENT)
    )
    _replace_unique(conn, jobs, "uq_jobs_org_idempotency", "uq_jobs_scope_idempotency")
    _replace_unique(
        conn, product_events, "uq_product_events_org_event", "uq_product_events_scope_event"
    )
    _scope_job_orgs(conn)
    for table in (webhook_endpoints, webhook_deliveries):
        _add_environment(conn, table)
    for names in _ORG_INDEXES.values():
        for name in names:
            conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
    ensure_tables(conn, (*JOB_TABLES, product_events))


#: Columns step 11 adds where missing: ``(table, column)``.
_PORTAL_COLUMNS: tuple[tuple[Table, str], ...] = (
    (webhook_endpoints, "previous_secret"),
    (webhook_endpoints, "previous_secret_expires_at"),
    (webhook_endpoints, "event_types"),
    (webhook_attempts, "response_excerpt"),
)


def add_portal_columns(conn: Connection) -> None:
    """Migration step: what the self-serve API keeps of webhooks — an endpoint's previous
    secret and when it stops signing (secret rotation), its event-type filter, and the
    start of each attempt's response. Added only where missing (idempotent): tables
    created from the current definitions already have them, and
    :func:`create_job_schema` runs this too."""
    catalog = inspect(conn)
    present: dict[str, set[str]] = {}
    for table, column in _PORTAL_COLUMNS:
        if table.name not in present:
            present[table.name] = {c["name"] for c in catalog.get_columns(table.name)}
        if column in present[table.name]:
            continue
        kind = table.c[column].type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column} {kind}")


#: Columns step 16 adds where missing: ``(table, column, SQL type and default)``.
_PLACE_COLUMNS: tuple[tuple[Table, str, str], ...] = (
    (jobs, "place", "BIGINT"),
    (job_orgs, "enqueued", "BIGINT NOT NULL DEFAULT 0"),
    (job_orgs, "claimed_through", "BIGINT NOT NULL DEFAULT 0"),
)


def add_queue_places(conn: Connection) -> None:
    """Migration step: where a queued job stands, read instead of counted.

    ``jobs.place`` numbers each queue's jobs (1, 2, 3… per org and environment, in ``seq``
    order); ``job_orgs.enqueued`` is the last place given and ``claimed_through`` the
    highest place a claim took. Jobs leave ``queued`` only by a claim, so every job placed
    above ``claimed_through`` is queued, and such a job has ``queued − (enqueued −
    place)`` − 1 queued jobs ahead of it: its position without counting the backlog.

    Adds the columns where missing and numbers the jobs that have no place yet (after the
    queue's last place, in ``seq`` order), then moves each queue's ``enqueued`` and
    ``claimed_through`` up to what its jobs show. Idempotent: with every job placed it
    changes nothing, so :func:`create_job_schema` runs it too.
    """
    catalog = inspect(conn)
    for table, column, kind in _PLACE_COLUMNS:
        if column not in {c["name"] for c in catalog.get_columns(table.name)}:
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column} {kind}")
    if conn.execute(select(jobs.c.seq).where(jobs.c.place.is_(None)).limit(1)).first() is None:
        return
    # UPDATE … FROM: PostgreSQL, and SQLite since 3.33.
    conn.exec_driver_sql(
        "UPDATE jobs SET place = numbered.place FROM ("
        " SELECT j.seq, o.enqueued + ROW_NUMBER() OVER ("
        "  PARTITION BY j.org_id, j.environment ORDER BY j.seq) AS place"
        " FROM jobs j JOIN job_orgs o"
        "  ON o.org_id = j.org_id AND o.environment = j.environment"
        " WHERE j.place IS NULL) AS numbered"
        " WHERE jobs.seq = numbered.seq"
    )
    higher = "GREATEST" if conn.dialect.name == "postgresql" else "MAX"
    scope = "j.org_id = job_orgs.org_id AND j.environment = job_orgs.environment"
    conn.exec_driver_sql(
        f"UPDATE job_orgs SET"
        f" enqueued = {higher}(enqueued,"
        f"  COALESCE((SELECT MAX(j.place) FROM jobs j WHERE {scope}), 0)),"
        f" claimed_through = {higher}(claimed_through,"
        f"  COALESCE((SELECT MAX(j.place) FROM jobs j WHERE {scope}"
        f"   AND j.status <> 'queued'), 0))"
    )


def add_volume_rollup(conn: Connection) -> None:
    """Migration step: the finished-jobs rollup (``job_volume``), built from the jobs.

    Creates the table when missing and, only then, counts every finished job (completed,
    failed, dead) into the row of the minute and of the hour it finished in, so the
    scoring volume answers the same right after the step. A table that exists is left as
    it is (its counts are the finishing transactions'), so :func:`create_job_schema` runs
    this too.
    """
    if job_volume.name in set(inspect(conn).get_table_names()):
        return
    create_tables(conn, (job_volume,))
    for span in ROLLUP_KEEP:
        if conn.dialect.name == "postgresql":
            start = f"date_trunc('{span}', finished_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
        else:
            # The text SQLAlchemy writes for a DateTime on SQLite, so later finishes add
            # to these rows instead of making twins.
            shape = "%Y-%m-%d %H:%M:00.000000" if span == "minute" else "%Y-%m-%d %H:00:00.000000"
            start = f"strftime('{shape}', finished_at)"
        conn.exec_driver_sql(
            "INSERT INTO job_volume (org_id, environment, span, bucket, completed, failed)"
            f" SELECT org_id, environment, '{span}', {start},"
            "  SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END),"
            "  SUM(CASE WHEN status IN ('failed', 'dead') THEN 1 ELSE 0 END)"
            " FROM jobs WHERE status IN ('completed', 'failed', 'dead')"
            "  AND finished_at IS NOT NULL"
            f" GROUP BY org_id, environment, {start}"
        )


def _before_environments(conn: Connection) -> bool:
    """Whether any of the tables still has a layout of before environments were apart."""
    catalog = inspect(conn)
    uniques = {
        uc["name"]
        for table in (jobs, product_events)
        for uc in catalog.get_unique_constraints(table.name)
    }
    if uniques & {"uq_jobs_org_idempotency", "uq_product_events_org_event"}:
        return True
    for table in (job_orgs, webhook_endpoints, webhook_deliveries):
        if "environment" not in {c["name"] for c in catalog.get_columns(table.name)}:
            return True
    indexes = {ix["name"] for name in _ORG_INDEXES for ix in catalog.get_indexes(name)}
    return any(name in indexes for names in _ORG_INDEXES.values() for name in names)


def _replace_unique(conn: Connection, table: Table, old: str, new: str) -> None:
    """Swap the unique constraint ``old`` for the definition's ``new``, where ``old`` is."""
    names = {uc["name"] for uc in inspect(conn).get_unique_constraints(table.name)}
    if old not in names:
        return
    if conn.dialect.name == "sqlite":
        rebuild_table(conn, table)
        return
    [wanted] = [c for c in table.constraints if isinstance(c, UniqueConstraint) and c.name == new]
    columns = ", ".join(c.name for c in wanted.columns)
    conn.exec_driver_sql(f"ALTER TABLE {table.name} DROP CONSTRAINT {old}")
    conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD CONSTRAINT {new} UNIQUE ({columns})")


def _add_environment(conn: Connection, table: Table) -> None:
    """Add ``environment`` to a table without it; existing rows get PRODUCTION."""
    if "environment" in {c["name"] for c in inspect(conn).get_columns(table.name)}:
        return
    conn.exec_driver_sql(
        f"ALTER TABLE {table.name} ADD COLUMN environment VARCHAR(16) NOT NULL "
        f"DEFAULT '{LEGACY_ENVIRONMENT}'"
    )
    if conn.dialect.name == "postgresql":
        # As the definition: every insert names its environment. (SQLite cannot drop a
        # column default; the code never relies on it.)
        conn.exec_driver_sql(f"ALTER TABLE {table.name} ALTER COLUMN environment DROP DEFAULT")


def _scope_job_orgs(conn: Connection) -> None:
    """``job_orgs`` from one row per org to one per (org, environment)."""
    if "environment" in {c["name"] for c in inspect(conn).get_columns(job_orgs.name)}:
        return
    o = job_orgs.c
    old = conn.execute(select(o.org_id, o.cap, o.last_served_at, o.avg_seconds, o.samples)).all()
    counted = conn.execute(
        select(jobs.c.org_id, jobs.c.environment, jobs.c.status, func.count())
        .where(jobs.c.status.in_(("queued", "running")))
        .group_by(jobs.c.org_id, jobs.c.environment, jobs.c.status)
    ).all()
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_job_orgs_served")
    conn.exec_driver_sql("DROP TABLE job_orgs")
    create_tables(conn, (job_orgs,))
    rows: dict[tuple[str, str], dict[str, Any]] = {}

    def row(org: str, environment: str) -> dict[str, Any]:
        return rows.setdefault(
            (org, environment),
            {
                "org_id": org,
                "environment": environment,
                "running": 0,
                "queued": 0,
                "cap": None,
                "last_served_at": EPOCH,
                "avg_seconds": None,
                "samples": 0,
            },
        )

    for r in old:
        for environment in ("PRODUCTION", "SANDBOX"):
            row(r.org_id, environment).update(
                cap=r.cap,
                last_served_at=as_utc(r.last_served_at) or EPOCH,
                avg_seconds=r.avg_seconds,
                samples=r.samples or 0,
            )
    for org, environment, status, count in counted:
        row(org, environment)[status] = int(count)
    if rows:
        conn.execute(job_orgs.insert(), list(rows.values()))


async def create_job_schema(engine: AsyncEngine) -> None:
    """Create the jobs and webhooks tables, and their indexes, when missing (idempotent).

    Also ``product_events`` (the analytics table jobs write their outcome events to), so
    a ``tollhouse worker`` can run before any ``serve`` migrated the database; the
    migration runner adopts both (its steps use ``IF NOT EXISTS`` too). Tables of an
    older layout get :func:`separate_environments` (it changes only what is still old).
    Records no version: :func:`tollhouse.schema.create_schema` does.
    """

    def create(conn: Connection) -> None:
        ensure_tables(conn, (*JOB_TABLES, job_workers, product_events))
        # Tables made before environments were kept apart are brought to today's layout.
        separate_environments(conn)
        add_portal_columns(conn)
        add_queue_places(conn)
        add_volume_rollup(conn)

    async with write_transaction(engine, "could not create the job queue's tables") as conn:
        await conn.run_sync(create)
