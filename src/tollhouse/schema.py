"""tollhouse's database schema: every versioned step, in order, and :func:`create_schema`.

Layering: :mod:`tollhouse.storage` is generic (engine, transactions, the migration
*runner*, the shared ``metadata``) and imports no domain. Each domain defines its own
tables (``keys``, ``metering``, ``security``, ``example``, ``jobs``). This module sits
above all of them: it is the one place that knows every domain's tables and the order
they were introduced in, so the runner below never has to import upwards.

:data:`MIGRATIONS` is history. Adding a step: append a :class:`Migration` with the next
version. Once released a step is never edited — change a table by adding a step
(``ALTER TABLE …``) and updating the table's definition. Steps are all-or-nothing and use
``IF NOT EXISTS`` (or check the catalog) so databases whose tables were made outside the
runner are adopted, not broken: step 7 adopts the jobs tables that
:func:`tollhouse.jobs.schema.create_job_schema` made before the jobs had a step.
"""

from __future__ import annotations

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.example.schema import migrate_example
from tollhouse.fairuse.schema import add_flag_columns, migrate_fair_use
from tollhouse.jobs.schema import (
    add_portal_columns,
    add_queue_places,
    add_volume_rollup,
    migrate_jobs,
    migrate_workers,
    separate_environments,
)
from tollhouse.keys.schema import api_keys, orgs
from tollhouse.limits.overrides import separate_override_environments
from tollhouse.metering import schema as usage
from tollhouse.metering.deadletters import dead_letters
from tollhouse.metering.partitions import partition_calls
from tollhouse.security.audit import migrate_admin, migrate_security
from tollhouse.storage.migrations import Migration, check_steps, create_tables
from tollhouse.storage.migrations import migrate as run_steps

__all__ = ["LATEST", "MIGRATIONS", "SCHEMA_VERSION", "create_schema", "migrate"]


def _dead_letters_and_workers(conn: Connection) -> None:
    create_tables(conn, (dead_letters,))
    migrate_workers(conn)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "orgs and api keys", lambda c: create_tables(c, (orgs, api_keys))),
    Migration(
        2,
        "usage metering: dimensions, rollups 1m/1h/1d, raw call log",
        lambda c: create_tables(c, (usage.usage_dims, *usage.ROLLUPS, usage.usage_calls)),
    ),
    Migration(3, "product events", lambda c: create_tables(c, (usage.product_events,))),
    Migration(
        4, "usage rollups: redirects (3xx) counter, covering count index", usage.upgrade_rollups_v4
    ),
    Migration(5, "audit log; api key expiry (rotation)", migrate_security),
    Migration(6, "example upstream: criteria per job, scoring results", migrate_example),
    Migration(7, "job queue and webhooks (adopted when made before this step)", migrate_jobs),
    Migration(8, "dead letters; job workers' presence", _dead_letters_and_workers),
    Migration(
        9,
        "sandbox apart from production: jobs, queue counters, webhooks and events per "
        "org and environment",
        separate_environments,
    ),
    Migration(10, "fair-use signals: tallies, jobs, flags, watermark", migrate_fair_use),
    Migration(
        11,
        "provider API: org name and suspension, key last use and meta, audit address, admin tokens",
        migrate_admin,
    ),
    Migration(
        12,
        "webhook endpoints: previous secret (rotation overlap), event-type filter; "
        "attempts: response excerpt",
        add_portal_columns,
    ),
    Migration(
        13,
        "fair-use flags: subjects involved, the throttle override and when it is lifted",
        add_flag_columns,
    ),
    Migration(14, "usage rollups: unknown-status counter", usage.upgrade_rollups_unknown),
    Migration(
        15,
        "raw call log partitioned by day on PostgreSQL (rows moved; SQLite unchanged)",
        partition_calls,
    ),
    Migration(
        16,
        "job queue: each job's place in its queue, the queue's last place and the highest "
        "claimed (positions read, not counted)",
        add_queue_places,
    ),
    Migration(
        17,
        "job queue: finished jobs per scope and minute/hour, counted when they finish "
        "(scoring volume read from it), built from the finished jobs",
        add_volume_rollup,
    ),
    Migration(
        18,
        "limit overrides per environment: an org's override for SANDBOX or PRODUCTION "
        "alone (existing ones apply to every environment)",
        separate_override_environments,
    ),
)
check_steps(MIGRATIONS)

#: The version a database has once every step ran.
LATEST = MIGRATIONS[-1].version
#: The schema version :func:`create_schema` brings a database to (the same number: one
#: name for readers of the schema, one for the runner's tests).
SCHEMA_VERSION = LATEST


async def migrate(
    engine: AsyncEngine, steps: tuple[Migration, ...] = MIGRATIONS
) -> tuple[int, int]:
    """Run the pending steps of ``steps`` (tollhouse's own by default).

    Returns:
        The version before and after.

    Raises:
        StorageError: the database could not be reached or a step failed (nothing of the
            failed run is kept: it is one transaction).
    """
    return await run_steps(engine, steps)


async def create_schema(engine: AsyncEngine) -> None:
    """Create missing tables and apply pending migrations (idempotent, safe to run from
    several processes at once), recording the schema version.

    Raises:
        StorageError: the database could not be reached or a migration failed.
    """
    await run_steps(engine, MIGRATIONS)
