"""Tables of the fair-use signals, on the shared :data:`tollhouse.storage.schema.metadata`.

* ``fair_use_tallies`` — what the meter's fair-use tap (:mod:`tollhouse.fairuse.tap`)
  counts in memory and flushes with the meter, per org, environment, kind, subject and
  minute: generations of one ``jobId`` on one generation route (kind = the route's path),
  and 429s of one key with how many were followed by a call of the same key and route
  before their ``Retry-After`` elapsed (kind ``429``; ``hits``).
* ``fair_use_jobs`` — per org, environment and ``jobId``: when criteria were first
  generated and when the job was first submitted for scoring, folded in by the
  scheduled pass from the tallies and the job store.
* ``fair_use_flags`` — what the scheduled pass found flagged, per signal, org,
  environment and window (its start): one row per window, kept up to date while the
  window lasts; how many subjects were involved (all of them, where ``subjects`` keeps
  the first 20); when its ``fair_use.flagged`` event was staged (``notified_us``); and,
  for a ``throttle`` rule, the override it set and when it is lifted.
* ``fair_use_state`` — the pass's watermark (one row).

Column lengths hold every value written: orgs and key ids come from ``orgs``/``api_keys``
(64), environments are ``SANDBOX``/``PRODUCTION``, a ``jobId`` is at most
:data:`MAX_SUBJECT` (the ``jobId`` rule of :mod:`tollhouse.identifiers`; a longer one is
not recorded: the tap skips it), bucket names are those of ``limit_overrides`` (64) and
subjects lists are JSON text.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    inspect,
)

from tollhouse.identifiers import POSTING_ID
from tollhouse.storage.migrations import create_tables
from tollhouse.storage.schema import metadata

#: Longest subject (a ``jobId`` or key id) stored; longer job ids are not recorded.
MAX_SUBJECT = POSTING_ID.max_length
#: Longest kind: a generation route's path, or ``429``.
MAX_KIND = 200
#: The tally kind of 429s.
RATE_LIMITED = "429"

fair_use_tallies = Table(
    "fair_use_tallies",
    metadata,
    Column("org", String(64), primary_key=True),
    Column("environment", String(16), primary_key=True),
    Column("kind", String(MAX_KIND), primary_key=True),
    Column("subject", String(MAX_SUBJECT), primary_key=True),
    Column("minute", BigInteger, primary_key=True, autoincrement=False),
    Column("count", BigInteger, nullable=False),
    Column("hits", BigInteger, nullable=False),
    Column("first_us", BigInteger, nullable=False),
    Column("last_us", BigInteger, nullable=False),
    Index("ix_fair_use_tallies_minute", "minute"),
)

fair_use_jobs = Table(
    "fair_use_jobs",
    metadata,
    Column("org", String(64), primary_key=True),
    Column("environment", String(16), primary_key=True),
    Column("job_id", String(MAX_SUBJECT), primary_key=True),
    Column("generated_us", BigInteger, nullable=True),
    Column("scored_us", BigInteger, nullable=True),
    Index("ix_fair_use_jobs_generated", "generated_us"),
)

fair_use_flags = Table(
    "fair_use_flags",
    metadata,
    Column("org", String(64), primary_key=True),
    Column("environment", String(16), primary_key=True),
    Column("signal", String(32), primary_key=True),
    Column("window_start", BigInteger, primary_key=True, autoincrement=False),
    Column("value", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("subjects", Text, nullable=False),
    Column("first_us", BigInteger, nullable=True),
    Column("last_us", BigInteger, nullable=True),
    Column("flagged_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("action", String(16), nullable=False),
    Column("notified_us", BigInteger, nullable=True),
    # Schema step 13 (:func:`add_flag_columns`).
    Column("involved", BigInteger, nullable=False, server_default="0"),
    Column("throttle_bucket", String(64), nullable=True),
    Column("throttle_limit", Integer, nullable=True),
    Column("throttle_until_us", BigInteger, nullable=True),
    Index("ix_fair_use_flags_throttle_until", "throttle_until_us"),
)

fair_use_state = Table(
    "fair_use_state",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("watermark_us", BigInteger, nullable=False),
)

FAIR_USE_TABLES = (fair_use_tallies, fair_use_jobs, fair_use_flags, fair_use_state)


def migrate_fair_use(conn: Connection) -> None:
    """Migration step: the fair-use tables and their indexes."""
    create_tables(conn, FAIR_USE_TABLES)


#: Columns of ``fair_use_flags`` added by step 13.
_FLAG_COLUMNS = ("involved", "throttle_bucket", "throttle_limit", "throttle_until_us")


def add_flag_columns(conn: Connection) -> None:
    """Migration step 13: what a flag's event and throttle need — how many subjects were
    involved, the override a ``throttle`` rule set and when it is lifted. Added only where
    missing (idempotent): a table created from the current definition already has them."""
    present = {c["name"] for c in inspect(conn).get_columns(fair_use_flags.name)}
    for name in _FLAG_COLUMNS:
        if name in present:
            continue
        column = fair_use_flags.c[name]
        kind = column.type.compile(dialect=conn.dialect)
        extra = " NOT NULL DEFAULT 0" if name == "involved" else ""
        conn.exec_driver_sql(f"ALTER TABLE {fair_use_flags.name} ADD COLUMN {name} {kind}{extra}")
    for index in fair_use_flags.indexes:
        index.create(conn, checkfirst=True)
