"""Usage tables: dimensions, rollups (1 m / 1 h / 1 d), the raw call log, product events.

Registered on the shared :data:`tollhouse.storage.schema.metadata` and created by the
migration runner (:mod:`tollhouse.storage.migrations`). Times are integers so every
engine computes the same buckets and sums: rollup buckets in epoch **seconds** (the
bucket's start, UTC), call and event times in epoch **microseconds**, durations in
microseconds and costs in micro-dollars.

* ``usage_dims`` — one row per distinct dimension set (org, environment, key, tenant,
  endpoint group, method, route template, labels). Its id is a 63-bit hash of the set,
  computed by the flusher, so no process ever waits for an id from the database.
* ``usage_rollup_1m`` / ``_1h`` / ``_1d`` — per dimension and bucket: count, errors
  (status ≥ 500), client errors (4xx but 429), throttled (429), redirects (3xx; schema
  version 4, :func:`upgrade_rollups_v4`), unknown (status 0: a forward-auth call whose
  access-log line never came; :func:`upgrade_rollups_unknown`), duration sum/min/max and
  the latency histogram ``h00``…``h39`` (:mod:`tollhouse.metering.histogram`).
* ``usage_calls`` — one row per call, paged by ``(time_us, id)``. On PostgreSQL it is
  partitioned by day from schema step 15 on (:mod:`tollhouse.metering.partitions`: key
  ``(time_us, id)``, no separate ``time_us`` index); the definition below is what SQLite
  has and what queries are built from.
* ``product_events`` — ``POST /v1/events``; unique per ``(org, environment, event_id)``.
  The fields the metric catalogue reads are copied into typed columns at ingest; ``data``
  keeps all.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Index,
    Integer,
    String,
    Table,
    UniqueConstraint,
    inspect,
)
from sqlalchemy.dialects.postgresql import JSONB

from tollhouse.metering.histogram import COLUMNS as HISTOGRAM_COLUMNS
from tollhouse.storage.schema import metadata

#: Table names (the only place they are spelled).
DIMS = "usage_dims"
ROLLUP_1M = "usage_rollup_1m"
ROLLUP_1H = "usage_rollup_1h"
ROLLUP_1D = "usage_rollup_1d"
CALLS = "usage_calls"
EVENTS = "product_events"

#: Rollup granularities in seconds, by table name.
GRANULARITY: dict[str, int] = {ROLLUP_1M: 60, ROLLUP_1H: 3600, ROLLUP_1D: 86400}

# SQLite makes INTEGER PRIMARY KEY the rowid (auto-assigned); BIGINT would not be.
_SERIAL = BigInteger().with_variant(Integer(), "sqlite")
_JSON = JSON().with_variant(JSONB(), "postgresql")

usage_dims = Table(
    DIMS,
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("org", String(64), nullable=False),
    Column("environment", String(16), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("tenant", String(200), nullable=False, server_default=""),
    Column("endpoint_group", String(100), nullable=False, server_default=""),
    Column("method", String(16), nullable=False),
    Column("route", String(400), nullable=False, server_default=""),
    # The three labels the call-counts shape reports on, as columns so they can be grouped in SQL.
    Column("db", String(200), nullable=False, server_default=""),
    Column("scenario", String(200), nullable=False, server_default=""),
    Column("reco_type", String(200), nullable=False, server_default=""),
    Column("labels", _JSON, nullable=False),
    Index("ix_usage_dims_org", "org", "environment"),
)


def _rollup(name: str) -> Table:
    return Table(
        name,
        metadata,
        Column("dim_id", BigInteger, primary_key=True, autoincrement=False),
        Column("bucket", BigInteger, primary_key=True, autoincrement=False),
        Column("count", BigInteger, nullable=False),
        Column("errors", BigInteger, nullable=False),
        Column("client_errors", BigInteger, nullable=False),
        Column("throttled", BigInteger, nullable=False),
        Column("redirects", BigInteger, nullable=False, server_default="0"),
        Column("unknown", BigInteger, nullable=False, server_default="0"),
        Column("dur_sum_us", BigInteger, nullable=False),
        Column("dur_min_us", BigInteger, nullable=False),
        Column("dur_max_us", BigInteger, nullable=False),
        *(Column(h, BigInteger, nullable=False, server_default="0") for h in HISTOGRAM_COLUMNS),
        Index(f"ix_{name}_bucket", "bucket"),
    )


usage_rollup_1m = _rollup(ROLLUP_1M)
usage_rollup_1h = _rollup(ROLLUP_1H)
usage_rollup_1d = _rollup(ROLLUP_1D)
#: The rollup tables, finest first.
ROLLUPS: tuple[Table, ...] = (usage_rollup_1m, usage_rollup_1h, usage_rollup_1d)


def upgrade_rollups_v4(conn: Connection) -> None:
    """Migration step 4 of the rollups.

    * Adds the ``redirects`` (3xx) counter to rollup tables made before it. Tables created
      after it already have the column (they are created from the current definition),
      so it is added only where missing — on both engines. Rows written earlier read 0:
      their 3xx calls stay counted among the 2xx.
    * On SQLite, a covering ``(dim_id, bucket, count)`` index per rollup, so call counts
      (the call-counts shape, ``api_calls_per_date``) are read from the index alone instead of one
      scattered wide-row fetch per bucket. Not on PostgreSQL: indexing ``count`` would
      make every rollup upsert a non-HOT update.
    """
    if conn.dialect.name == "sqlite":
        for table in ROLLUPS:
            conn.exec_driver_sql(
                f"CREATE INDEX IF NOT EXISTS ix_{table.name}_counts "
                f"ON {table.name} (dim_id, bucket, count)"
            )
    for table in ROLLUPS:
        present = {c["name"] for c in inspect(conn).get_columns(table.name)}
        if "redirects" not in present:
            conn.exec_driver_sql(
                f"ALTER TABLE {table.name} ADD COLUMN redirects BIGINT NOT NULL DEFAULT 0"
            )


def upgrade_rollups_unknown(conn: Connection) -> None:
    """The rollups' ``unknown`` counter (calls metered with status 0, "unknown": a
    forward-auth call whose access-log line never came), added where missing — tables
    created after this step already have it. Rows written earlier read 0: their unknown
    calls stay counted among the 2xx."""
    for table in ROLLUPS:
        present = {c["name"] for c in inspect(conn).get_columns(table.name)}
        if "unknown" not in present:
            conn.exec_driver_sql(
                f"ALTER TABLE {table.name} ADD COLUMN unknown BIGINT NOT NULL DEFAULT 0"
            )


usage_calls = Table(
    CALLS,
    metadata,
    Column("id", _SERIAL, primary_key=True, autoincrement=True),
    Column("time_us", BigInteger, nullable=False),
    Column("org", String(64), nullable=False),
    Column("environment", String(16), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("tenant", String(200), nullable=True),
    Column("endpoint_group", String(100), nullable=True),
    Column("method", String(16), nullable=False),
    Column("route", String(400), nullable=True),
    Column("status", Integer, nullable=False),
    Column("duration_us", BigInteger, nullable=False),
    Column("labels", _JSON, nullable=False),
    Index("ix_usage_calls_org_time", "org", "environment", "time_us", "id"),
    Index("ix_usage_calls_time", "time_us"),
)

product_events = Table(
    EVENTS,
    metadata,
    Column("seq", _SERIAL, primary_key=True, autoincrement=True),
    Column("org", String(64), nullable=False),
    Column("environment", String(16), nullable=False),
    Column("event_id", String(200), nullable=False),
    Column("type", String(64), nullable=False),
    Column("time_us", BigInteger, nullable=False),
    Column("received_us", BigInteger, nullable=False),
    # Typed copies of the catalogue's fields (tollhouse.analytics.events.FIELDS).
    Column("run_id", String(200)),
    Column("status", String(32)),
    Column("source", String(32)),
    Column("user_id", String(200)),
    Column("workflow", String(200)),
    Column("node", String(200)),
    Column("tool", String(64)),
    Column("model", String(200)),
    Column("conversation_id", String(200)),
    Column("trigger_id", String(200)),
    Column("enabled", Boolean),
    Column("role", String(32)),
    Column("kb", String(200)),
    Column("document_id", String(200)),
    Column("file_type", String(64)),
    Column("cached", Boolean),
    Column("duration_us", BigInteger),
    Column("tokens_in", BigInteger),
    Column("tokens_out", BigInteger),
    Column("cost_micros", BigInteger),
    Column("data", _JSON, nullable=False),
    # Per org *and* environment: a sandbox event never hides a production one.
    UniqueConstraint("org", "environment", "event_id", name="uq_product_events_scope_event"),
    Index("ix_product_events_scope", "org", "environment", "type", "time_us"),
    Index("ix_product_events_time", "time_us"),
)
