"""The raw call log partitioned by day on PostgreSQL: layout, partitions made ahead, retention.

On PostgreSQL ``usage_calls`` is a declaratively partitioned table,
``PARTITION BY RANGE (time_us)``, one partition per UTC day (``usage_calls_pYYYYMMDD``,
``[day, day + 1)`` in epoch microseconds) and a ``DEFAULT`` partition
(``usage_calls_default``) as a safety net for a call whose day has no partition. Its key
is ``(time_us, id)`` (a partitioned table's key must hold the partition column; ids still
come from the one sequence) and ``ix_usage_calls_org_time`` is made on every partition.
SQLite keeps the plain table.

* :func:`partition_calls` is schema step 15: it converts an unpartitioned table — made by
  step 2, with its rows — in the migration's transaction.
* :func:`ensure_days` makes the partitions of some days (the flusher calls it for the
  days of each batch it has not seen yet, and for today and the next
  :data:`AHEAD_DAYS` days, so a day's partition exists before its first call). Rows that
  went to the default partition for that day are moved into the new one.
* :func:`drop_days_before` is the raw log's retention: it drops whole partitions older
  than the cutoff — never a ``DELETE`` over the log — and deletes from the (normally
  empty) default partition only.

Day numbers are days since the epoch (UTC); the pure helpers work on them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection

from tollhouse.metering.schema import CALLS

#: Microseconds per day: a partition's width.
DAY_US = 86_400_000_000
#: Days after today whose partitions the flusher makes ahead.
AHEAD_DAYS = 2
#: The default partition's name.
DEFAULT_PARTITION = f"{CALLS}_default"
#: Days before the newest row that step 15 gives partitions to; rows older than that (a
#: log kept for years) go to the default partition until retention removes them.
MIGRATION_DAYS = 400
#: Key of the advisory lock held while partitions are made or dropped ("tollpart").
PARTITION_LOCK_KEY = 0x746F6C6C70617274

_NAME = re.compile(rf"^{CALLS}_p(\d{{8}})$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def day_of(time_us: int) -> int:
    """The day (since the epoch, UTC) a call time in epoch microseconds falls in."""
    return time_us // DAY_US


def partition_name(day: int) -> str:
    """``usage_calls_pYYYYMMDD`` of a day."""
    return f"{CALLS}_p{(_EPOCH + timedelta(days=day)):%Y%m%d}"


def day_of_partition(name: str) -> int | None:
    """The day a partition named by :func:`partition_name` holds; None for other names."""
    found = _NAME.match(name)
    if found is None:
        return None
    moment = datetime.strptime(found.group(1), "%Y%m%d").replace(tzinfo=UTC)
    return (moment - _EPOCH).days


def days_ahead(now: float) -> range:
    """Today and the next :data:`AHEAD_DAYS` days, for ``now`` in epoch seconds."""
    today = int(now // 86400)
    return range(today, today + AHEAD_DAYS + 1)


def days_between(first_us: int, last_us: int) -> range:
    """Every day from the one holding ``first_us`` to the one holding ``last_us``."""
    return range(day_of(first_us), day_of(last_us) + 1)


def days_of(times_us: Iterable[int]) -> set[int]:
    """The days some call times (epoch microseconds) fall in; a batch's calls usually
    span one day or two, so the common case is two ``min``/``max`` passes in C."""
    times = times_us if isinstance(times_us, list) else list(times_us)
    if not times:
        return set()
    first, last = day_of(min(times)), day_of(max(times))
    if last - first <= 1:
        return {first, last}
    return {t // DAY_US for t in times}


def expired_days(days: Iterable[int], cutoff_us: int) -> list[int]:
    """The days whose every microsecond is older than ``cutoff_us`` (oldest first)."""
    return sorted(d for d in days if (d + 1) * DAY_US <= cutoff_us)


_IS_PARTITIONED = (
    "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(:t))"
)
_PARTITIONS = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = to_regclass(:t)"
)


def _lock(conn: Connection) -> None:
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PARTITION_LOCK_KEY})


def is_partitioned(conn: Connection) -> bool:
    """True when ``usage_calls`` is a partitioned table (PostgreSQL after step 15)."""
    if conn.dialect.name != "postgresql":
        return False
    return bool(conn.execute(text(_IS_PARTITIONED), {"t": CALLS}).scalar())


def partition_days(conn: Connection) -> set[int]:
    """The days that have a partition."""
    names = conn.execute(text(_PARTITIONS), {"t": CALLS}).scalars()
    return {d for d in map(day_of_partition, names) if d is not None}


def _make_day(conn: Connection, day: int) -> None:
    """Make ``day``'s partition, moving into it any rows the default partition holds for
    it (attaching over such rows would fail). The new table is attached rather than
    created in place so the move happens before PostgreSQL checks the default."""
    name = partition_name(day)
    low, high = day * DAY_US, (day + 1) * DAY_US
    conn.exec_driver_sql(
        f"CREATE TABLE {name} (LIKE {CALLS} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    )
    conn.exec_driver_sql(
        f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} "
        f"WHERE time_us >= {low} AND time_us < {high} RETURNING *) "
        f"INSERT INTO {name} SELECT * FROM moved"
    )
    conn.exec_driver_sql(
        f"ALTER TABLE {CALLS} ATTACH PARTITION {name} FOR VALUES FROM ({low}) TO ({high})"
    )


def make_days(conn: Connection, days: Iterable[int]) -> set[int] | None:
    """Make the partitions of ``days`` that are missing, under an advisory lock (several
    processes may flush into one database). Returns every day that now has a partition;
    None, doing nothing, when the table is not partitioned (SQLite, before step 15)."""
    if not is_partitioned(conn):
        return None
    _lock(conn)
    have = partition_days(conn)
    for day in sorted(set(days) - have):
        _make_day(conn, day)
        have.add(day)
    return have


async def ensure_days(conn: AsyncConnection, days: Iterable[int]) -> set[int] | None:
    """:func:`make_days` on an async connection (commit it to keep the partitions)."""
    wanted = list(days)
    return await conn.run_sync(lambda c: make_days(c, wanted))


def drop_days_before(conn: Connection, cutoff_us: int) -> int:
    """Retention of the partitioned raw log: drop every partition whose whole day is older
    than ``cutoff_us`` and delete the default partition's rows older than it. Rows of the
    day holding the cutoff are kept until that day has passed (at most a day longer than
    asked). Returns the rows removed (each dropped partition is counted first).
    """
    _lock(conn)
    removed = 0
    for day in expired_days(partition_days(conn), cutoff_us):
        name = partition_name(day)
        removed += int(conn.exec_driver_sql(f"SELECT count(*) FROM {name}").scalar_one())
        conn.exec_driver_sql(f"DROP TABLE {name}")
    result = conn.exec_driver_sql(f"DELETE FROM {DEFAULT_PARTITION} WHERE time_us < {cutoff_us}")
    return removed + max(0, result.rowcount or 0)


def partition_calls(conn: Connection) -> None:
    """Schema step 15: on PostgreSQL, ``usage_calls`` becomes partitioned by day.

    An unpartitioned table (step 2's) is renamed, a partitioned one is made with the same
    columns and defaults (the id sequence is handed over to it), partitions for the days
    that have rows (within :data:`MIGRATION_DAYS` of the newest; older rows go to the
    default partition until retention removes them) and the default partition are made,
    the rows are moved, the key and index are built, and the old table is dropped — all
    in the migration's one transaction, so a failure leaves the old table as it was. A
    table that is already partitioned is left alone. SQLite keeps its table.
    """
    if conn.dialect.name != "postgresql" or is_partitioned(conn):
        return
    old = f"{CALLS}_unpartitioned"
    sequence = conn.execute(
        text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": CALLS}
    ).scalar_one_or_none()
    # The days that have rows, one index probe per day (ix_usage_calls_time).
    days = [
        int(d)
        for d in conn.exec_driver_sql(
            f"WITH RECURSIVE d(day) AS (SELECT min(time_us) / {DAY_US} FROM {CALLS} "
            f"UNION ALL SELECT (SELECT min(time_us) / {DAY_US} FROM {CALLS} "
            f"WHERE time_us >= (d.day + 1) * {DAY_US}) FROM d WHERE d.day IS NOT NULL) "
            "SELECT day FROM d WHERE day IS NOT NULL"
        ).scalars()
    ]
    newest = max(days, default=0)
    conn.exec_driver_sql(f"ALTER TABLE {CALLS} RENAME TO {old}")
    # Free the names the new table's key and index take.
    conn.exec_driver_sql(f"ALTER TABLE {old} DROP CONSTRAINT IF EXISTS {CALLS}_pkey")
    conn.exec_driver_sql(f"DROP INDEX IF EXISTS ix_{CALLS}_org_time")
    conn.exec_driver_sql(f"DROP INDEX IF EXISTS ix_{CALLS}_time")
    conn.exec_driver_sql(
        f"CREATE TABLE {CALLS} (LIKE {old} INCLUDING DEFAULTS) PARTITION BY RANGE (time_us)"
    )
    if sequence is not None:
        conn.exec_driver_sql(f"ALTER SEQUENCE {sequence} OWNED BY {CALLS}.id")
    conn.exec_driver_sql(f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF {CALLS} DEFAULT")
    for day in days:
        if day > newest - MIGRATION_DAYS:
            low, high = day * DAY_US, (day + 1) * DAY_US
            conn.exec_driver_sql(
                f"CREATE TABLE {partition_name(day)} PARTITION OF {CALLS} "
                f"FOR VALUES FROM ({low}) TO ({high})"
            )
    conn.exec_driver_sql(f"INSERT INTO {CALLS} SELECT * FROM {old}")
    conn.exec_driver_sql(f"DROP TABLE {old}")
    # Built after the move: one sort per partition instead of index upkeep per row.
    conn.exec_driver_sql(f"ALTER TABLE {CALLS} ADD PRIMARY KEY (time_us, id)")
    conn.exec_driver_sql(
        f"CREATE INDEX ix_{CALLS}_org_time ON {CALLS} (org, environment, time_us, id)"
    )
