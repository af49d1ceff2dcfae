"""Tables of the bundled example upstream, on the shared :data:`tollhouse.storage.schema.metadata`.

Every example table name lives here. The migration runner creates them
(:func:`migrate_example`, one step of :data:`tollhouse.schema.MIGRATIONS`), so
the example shares tollhouse's database and every process that opens it — ``tollhouse
serve`` with the example mounted, ``tollhouse worker``, any number of ``tollhouse example
serve`` — sees the same criteria and results.

Rows are keyed by org *and* environment (``SANDBOX``, ``PRODUCTION``, or empty when the
caller sent none), so one org's sandbox and production data never mix. Column lengths are
the limits the app checks at the door (:mod:`tollhouse.example.bodies`): PostgreSQL enforces
``VARCHAR(n)``, and a long value must be a 422, never a database error.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Float,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from tollhouse.example.bodies import MAX_ID_CHARS
from tollhouse.storage.migrations import create_tables
from tollhouse.storage.schema import metadata

#: Longest org accepted: the length of ``orgs.id``, so any org a key can have fits.
MAX_ORG_CHARS = 64
#: Longest environment: ``PRODUCTION`` with room to spare.
MAX_ENVIRONMENT_CHARS = 16
#: Longest scoring job id: ``sj_`` + 16 hex characters, with room to spare.
MAX_SCORING_ID_CHARS = 32

#: SQLite only makes ``INTEGER PRIMARY KEY`` an auto-incrementing rowid; PostgreSQL gets a
#: 64-bit one.
_Seq = BigInteger().with_variant(Integer(), "sqlite")

example_jobs = Table(
    "example_jobs",
    metadata,
    Column("org", String(MAX_ORG_CHARS), nullable=False),
    Column("environment", String(MAX_ENVIRONMENT_CHARS), nullable=False),
    Column("job_id", String(MAX_ID_CHARS), nullable=False),
    # The job's criteria as one JSON array, in order: a read is one row, a change one write.
    Column("criteria", Text, nullable=False),
    Column("archived_at", DateTime(timezone=True), nullable=True),
    # Wall-clock time of the last change: the oldest go first past the per-org bound.
    Column("changed_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("org", "environment", "job_id", name="pk_example_jobs"),
    Index("ix_example_jobs_changed", "org", "environment", "changed_at"),
)

example_results = Table(
    "example_results",
    metadata,
    # Insertion order: an application's latest result, and the oldest to prune.
    Column("seq", _Seq, primary_key=True, autoincrement=True),
    Column("org", String(MAX_ORG_CHARS), nullable=False),
    Column("environment", String(MAX_ENVIRONMENT_CHARS), nullable=False),
    Column("scoring_job_id", String(MAX_SCORING_ID_CHARS), nullable=False),
    Column("application_id", String(MAX_ID_CHARS), nullable=False),
    Column("job_id", String(MAX_ID_CHARS), nullable=False),
    Column("score", Float, nullable=False),
    # The breakdown as the API renders it (a JSON array).
    Column("breakdown", Text, nullable=False),
    Column("completed_at", DateTime(timezone=True), nullable=False),
    Index("ix_example_results_id", "org", "environment", "scoring_job_id", unique=True),
    Index("ix_example_results_application", "org", "environment", "application_id", "seq"),
    Index("ix_example_results_seq", "org", "environment", "seq"),
)

#: The example's tables, in creation order.
EXAMPLE_TABLES = (example_jobs, example_results)


def migrate_example(conn: Connection) -> None:
    """Migration step: the example upstream's tables and their indexes."""
    create_tables(conn, EXAMPLE_TABLES)
