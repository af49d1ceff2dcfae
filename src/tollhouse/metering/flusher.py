"""The background flusher: drains the aggregator and writes batches in one transaction.

Each flush upserts the dimension sets it has not written before, adds the batch's
aggregates to the 1 m, 1 h and 1 d rollups with
``INSERT … ON CONFLICT (dim_id, bucket) DO UPDATE SET count = count + excluded.count, …``
(the same effect on SQLite and PostgreSQL, so several processes can flush into one
database), and appends the raw call log. On PostgreSQL each rollup's rows go in one
``INSERT … SELECT * FROM unnest($1::bigint[], …) ON CONFLICT …`` and the raw log by
binary ``COPY`` (one execution each, not one per row) into its day partitions
(:mod:`tollhouse.metering.partitions`: a batch's missing days are made first, today's
and the next days' after each background flush). On SQLite the raw log goes in
multi-row ``INSERT``\\ s whose dimension columns are bound once per statement
(:func:`sqlite_log_insert`). A flush that fails because the database is away puts the
batch back into the aggregator and is retried with backoff; :meth:`Flusher.stop` flushes
whatever is left. A flush the database refuses because of a value (a tenant longer than
its column…) is split per dimension set and bisected: every set the database takes is
written, the refused ones become dead letters (:mod:`tollhouse.metering.deadletters`) —
one bad call never holds back the others.

The raw log's rows are made here, not on the request path: the aggregator keeps three
integers per call and the cell it was counted in (:data:`~.aggregator.LogValues`); a
row is the cell's dimension columns (:func:`log_head`, once per dimension set per flush)
followed by those integers, so a row costs one tuple concatenation — or, on SQLite, no
row at all: the integers go straight into the statement's parameter list.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import Table, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollhouse.errors import DataRejected, StorageError
from tollhouse.memo import remember
from tollhouse.metering.aggregator import (
    UNKNOWN_BELOW,
    Aggregator,
    Batch,
    Cell,
    Dimensions,
    LogFix,
    LogValues,
)
from tollhouse.metering.deadletters import MAX_LOG_ENTRIES, DeadLetter, set_aside
from tollhouse.metering.histogram import BUCKETS
from tollhouse.metering.histogram import COLUMNS as HIST
from tollhouse.metering.partitions import days_ahead, days_of, ensure_days
from tollhouse.metering.retention import Retention, prune
from tollhouse.metering.schema import GRANULARITY, ROLLUPS, usage_calls, usage_dims
from tollhouse.storage import dialect
from tollhouse.storage.dialect import DATA_PYTHON_ERRORS, DATABASE_ERRORS, Insert, data_reason
from tollhouse.storage.transactions import storage_error

logger = logging.getLogger(__name__)

#: Rows per statement when writing big batches (keeps parameter lists reasonable).
CHUNK = 5000
#: Counters added on conflict, as they are named in the rollup tables.
ADDITIVE = (
    "count",
    "errors",
    "client_errors",
    "throttled",
    "redirects",
    "unknown",
    "dur_sum_us",
    *HIST,
)
#: Longest wait between retries while the database is unreachable.
MAX_BACKOFF = 30.0
#: Dimension sets whose ids are remembered (ids are recomputable); a full memo starts over.
_IDS_MEMO = 100_000


def dim_id(dims: Dimensions) -> int:
    """The id of a dimension set: a 63-bit hash, the same in every process."""
    digest = hashlib.blake2b(orjson.dumps(dims), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def dim_row(ident: int, dims: Dimensions) -> dict[str, Any]:
    """The ``usage_dims`` row of a dimension set."""
    org, env, key, tenant, group, method, route, labels = dims
    lab = dict(labels)
    return {
        "id": ident,
        "org": org,
        "environment": env,
        "key_id": key,
        "tenant": tenant,
        "endpoint_group": group,
        "method": method,
        "route": route,
        "db": lab.get("db", ""),
        "scenario": lab.get("scenario", ""),
        "reco_type": lab.get("reco_type", ""),
        "labels": lab,
    }


#: Columns of a rollup row, in table order (the order of :func:`rollup_values`).
ROLLUP_COLUMNS: tuple[str, ...] = tuple(c.name for c in ROLLUPS[0].columns)


def rollup_values(ident: int, bucket: int, cell: Cell) -> tuple[int, ...]:
    """One rollup row as a tuple in :data:`ROLLUP_COLUMNS` order (dense histogram)."""
    hist = [0] * BUCKETS
    for b, c in cell.hist.items():
        hist[b] = c
    return (
        ident,
        bucket,
        cell.count,
        cell.errors,
        cell.client_errors,
        cell.throttled,
        cell.redirects,
        cell.unknown,
        cell.dur_sum,
        cell.dur_min,
        cell.dur_max,
        *hist,
    )


def canonical(dims: Dimensions) -> Dimensions:
    """The dimension set with its labels sorted by name (what the id is computed from)."""
    labels = dims[7]
    if len(labels) < 2:
        return dims
    return (*dims[:7], tuple(sorted(labels)))


def rollup_upsert(dialect_name: str, table: Table) -> Insert:
    """The rollup upsert: counters add up, min/max keep the extreme."""
    ins = dialect.insert(dialect_name, table)
    ex = ins.excluded
    set_: dict[str, Any] = {name: table.c[name] + ex[name] for name in ADDITIVE}
    set_["dur_min_us"] = dialect.least(dialect_name, table.c.dur_min_us, ex.dur_min_us)
    set_["dur_max_us"] = dialect.greatest(dialect_name, table.c.dur_max_us, ex.dur_max_us)
    return ins.on_conflict_do_update(index_elements=[table.c.dim_id, table.c.bucket], set_=set_)


def pg_rollup_upsert(table: Table, quote: Callable[[str], str]) -> str:
    """PostgreSQL's rollup upsert of a whole batch in one statement: one array parameter
    per column (:func:`pg_arrays`), rows made by ``unnest`` — one execution instead of
    one per row. Same effect as :func:`rollup_upsert`."""
    name = quote(table.name)
    cols = ", ".join(quote(c) for c in ROLLUP_COLUMNS)
    arrays = ", ".join(f"${i}::text::bigint[]" for i in range(1, len(ROLLUP_COLUMNS) + 1))
    sets = [f"{quote(c)} = {name}.{quote(c)} + excluded.{quote(c)}" for c in ADDITIVE]
    sets.append(f"dur_min_us = LEAST({name}.dur_min_us, excluded.dur_min_us)")
    sets.append(f"dur_max_us = GREATEST({name}.dur_max_us, excluded.dur_max_us)")
    return (
        f"INSERT INTO {name} ({cols}) SELECT * FROM unnest({arrays}) "
        f"ON CONFLICT (dim_id, bucket) DO UPDATE SET {', '.join(sets)}"
    )


def pg_arrays(rows: Sequence[tuple[int, ...]]) -> tuple[str, ...]:
    """Rows → one PostgreSQL array literal per column (``"{1,2,3}"``): the server parses
    these far faster than the driver encodes lists of Python ints element by element."""
    return tuple("{" + ",".join(map(str, col)) + "}" for col in zip(*rows, strict=True))


def _chunks(rows: Sequence[dict[str, Any]]) -> Iterable[Sequence[dict[str, Any]]]:
    for i in range(0, len(rows), CHUNK):
        yield rows[i : i + CHUNK]


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What one flush wrote."""

    calls: int
    """Calls aggregated into the rollups."""
    cells: int
    """Minute cells written."""
    log_rows: int
    """Raw call-log rows appended."""
    set_aside: int = 0
    """Calls the database refused (their dimension set's values), kept as dead letters."""


#: The raw call-log columns that come from a call's dimension set (:func:`log_head`).
LOG_HEAD_COLUMNS: tuple[str, ...] = (
    "org",
    "environment",
    "key_id",
    "tenant",
    "endpoint_group",
    "method",
    "route",
    "labels",
)
#: Columns of a raw call-log row as written: the head, then a :data:`LogValues`.
LOG_COLUMNS: tuple[str, ...] = (*LOG_HEAD_COLUMNS, "time_us", "status", "duration_us")
#: The same columns in table order (the portable per-row statement's).
CALL_COLUMNS: tuple[str, ...] = (
    "time_us",
    *LOG_HEAD_COLUMNS[:7],
    "status",
    "duration_us",
    "labels",
)
#: Raw call-log rows per SQLite statement: 8 + 3 × 256 = 776 parameters, under the 999
#: that SQLite builds before 3.32 allow.
SQLITE_LOG_ROWS = 256

LogHead = tuple[str, str, str, str | None, str | None, str, str | None, str]


def log_head(dims: Dimensions) -> LogHead:
    """The raw call-log columns of a dimension set, in :data:`LOG_HEAD_COLUMNS` order: a
    missing tenant, group or route is NULL, labels are a JSON object."""
    org, env, key, tenant, group, method, route, labels = dims
    return (
        org,
        env,
        key,
        tenant or None,
        group or None,
        method,
        route or None,
        orjson.dumps(dict(labels)).decode(),
    )


def log_groups(batch: Batch) -> list[tuple[LogHead, list[LogValues]]]:
    """The batch's raw call-log entries grouped by dimension set, each group with its
    head; entries keep their order within a group."""
    by_cell: dict[Cell, list[LogValues]] = {}
    for cell, values in zip(batch.log_cells, batch.log, strict=True):
        group = by_cell.get(cell)
        if group is None:
            group = by_cell[cell] = []
        group.append(values)
    by_dims: dict[Dimensions, list[LogValues]] = {}
    for cell, group in by_cell.items():
        assert cell.dims is not None, "a raw call-log entry of a cell without dimensions"
        seen = by_dims.get(cell.dims)
        if seen is None:
            by_dims[cell.dims] = group
        else:  # the same dimension set in another minute
            seen.extend(group)
    return [(log_head(dims), group) for dims, group in by_dims.items()]


def sqlite_log_insert(rows: int, quote: Callable[[str], str]) -> str:
    """SQLite's ``INSERT`` of ``rows`` raw call-log rows of one dimension set: the head
    is bound once (``?1``…``?8``), each row adds its three integers."""
    head = ",".join(f"?{i}" for i in range(1, len(LOG_HEAD_COLUMNS) + 1))
    first = len(LOG_HEAD_COLUMNS) + 1
    values = ",".join(
        f"({head},?{first + 3 * i},?{first + 3 * i + 1},?{first + 3 * i + 2})" for i in range(rows)
    )
    cols = ", ".join(quote(c) for c in LOG_COLUMNS)
    return f"INSERT INTO {quote(usage_calls.name)} ({cols}) VALUES {values}"


def sqlite_log_parts(count: int) -> list[tuple[int, int]]:
    """How :class:`BatchWriter` splits ``count`` rows of a group: ``(start, rows)`` pairs,
    full :data:`SQLITE_LOG_ROWS` statements first, then the rest in powers of two — so
    a process only ever prepares nine statement shapes, whatever the batch sizes."""
    parts: list[tuple[int, int]] = []
    start = 0
    size = SQLITE_LOG_ROWS
    while start < count:
        while size > count - start:
            size //= 2
        parts.append((start, size))
        start += size
    return parts


def driver_sql(conn: AsyncConnection, stmt: Any, columns: tuple[str, ...]) -> str:
    """``stmt`` compiled for ``conn``'s dialect, its parameters positional in ``columns``
    order — to run through the driver's executemany with plain tuples, because
    SQLAlchemy's per-row parameter handling costs more than the database's own work on
    wide rows (the rollups have 50 columns)."""
    compiled = stmt.compile(dialect=conn.dialect, column_keys=list(columns))
    if tuple(compiled.positiontup or ()) != columns:
        raise AssertionError(f"unexpected parameter order in {stmt}")
    return str(compiled)


def _driver_errors() -> tuple[type[Exception], ...]:
    """asyncpg's own errors: raised unwrapped by calls on the driver connection (COPY)."""
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        return ()
    return (asyncpg.PostgresError, asyncpg.InterfaceError)


async def _copy_calls(conn: AsyncConnection, rows: list[tuple[Any, ...]]) -> None:
    """Append raw call-log rows with PostgreSQL's binary ``COPY`` (asyncpg), inside the
    flush's transaction: several times faster than row-by-row inserts."""
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    if not driver.is_in_transaction():  # pragma: no cover - the rollups started it
        await conn.exec_driver_sql("SELECT 1")
    await driver.copy_records_to_table(usage_calls.name, records=rows, columns=LOG_COLUMNS)


def split_by_dimensions(batch: Batch) -> list[Batch]:
    """``batch`` as one batch per dimension set — its cells and its raw call-log
    entries — in the order the sets first appear. Every part keeps the batch's
    ``since``. The unit a refused batch is bisected into: the values the database can
    refuse (tenant, route, labels…) are a dimension set's."""
    parts: dict[Dimensions, Batch] = {}
    for key, cell in batch.cells.items():
        part = parts.get(key[1])
        if part is None:
            part = parts[key[1]] = Batch(since=batch.since)
        part.cells[key] = cell
    for fix in batch.fixes:
        part = parts.get(fix[0])
        if part is None:  # pragma: no cover - every fix's correction cell is in the batch
            part = parts[fix[0]] = Batch(since=batch.since)
        part.fixes.append(fix)
    for values, cell in zip(batch.log, batch.log_cells, strict=True):
        assert cell.dims is not None, "a raw call-log entry of a cell without dimensions"
        part = parts.get(cell.dims)
        if part is None:  # pragma: no cover - every logged call's cell is in the batch
            part = parts[cell.dims] = Batch(since=batch.since)
        part.log.append(values)
        part.log_cells.append(cell)
    return list(parts.values())


def join_batches(parts: Sequence[Batch], since: float | None) -> Batch:
    """Parts of :func:`split_by_dimensions` as one batch again; raw call-log entries
    oldest first (what :meth:`Aggregator.restore` expects)."""
    out = Batch(since=since)
    entries: list[tuple[LogValues, Cell]] = []
    for part in parts:
        out.cells.update(part.cells)
        out.fixes.extend(part.fixes)
        entries.extend(zip(part.log, part.log_cells, strict=True))
    if len(parts) > 1:
        entries.sort(key=lambda entry: entry[0][0])
    out.log = [values for values, _ in entries]
    out.log_cells = [cell for _, cell in entries]
    return out


def usage_letter(part: Batch, error: str) -> DeadLetter:
    """The dead letter of one refused dimension set (a part of
    :func:`split_by_dimensions`): its values, its counts per minute and its raw call-log
    entries (the first :data:`~.deadletters.MAX_LOG_ENTRIES`)."""
    minutes = sorted(part.cells.items(), key=lambda item: item[0][0])
    dims = minutes[0][0][1] if minutes else part.log_cells[0].dims
    assert dims is not None
    org, env, key, tenant, group, method, route, labels = dims
    request_ids = list(dict.fromkeys(c.request_id for _, c in minutes if c.request_id))
    return DeadLetter(
        kind="usage",
        org=org,
        error=error,
        rows=part.call_count,
        request_id=request_ids[0] if request_ids else None,
        payload={
            "dimensions": {
                "org": org,
                "environment": env,
                "keyId": key,
                "tenant": tenant,
                "endpointGroup": group,
                "method": method,
                "route": route,
                "labels": dict(labels),
            },
            "minutes": [
                {
                    "minute": minute,
                    "count": c.count,
                    "errors": c.errors,
                    "clientErrors": c.client_errors,
                    "throttled": c.throttled,
                    "redirects": c.redirects,
                    "unknown": c.unknown,
                    "durationSumUs": c.dur_sum,
                    "durationMinUs": c.dur_min,
                    "durationMaxUs": c.dur_max,
                }
                for (minute, _), c in minutes
            ],
            "requestIds": request_ids[:100],
            "log": [list(v) for v in part.log[:MAX_LOG_ENTRIES]],
            "logOmitted": max(0, len(part.log) - MAX_LOG_ENTRIES),
        },
    )


class BatchWriter:
    """Writes drained batches to the database (one transaction per batch).

    Args:
        engine: the usage database.
        bulk_postgres: on PostgreSQL, write rollups with one ``unnest`` upsert per table
            and the raw log with ``COPY``; False uses the portable per-row statements
            (what SQLite runs; kept so benchmarks can compare the two in one run).
    """

    def __init__(self, engine: AsyncEngine, *, bulk_postgres: bool = True) -> None:
        self.engine = engine
        self.bulk_postgres = bulk_postgres
        self._ids: dict[Dimensions, tuple[int, Dimensions]] = {}
        self._written: set[int] = set()
        self._sql: dict[tuple[str, str], str] = {}
        self._days: set[int] = set()
        """Days known to have a raw call-log partition (PostgreSQL)."""
        self._partitioned = engine.dialect.name == "postgresql"
        """False once the raw log is known not to be partitioned (SQLite, old schema)."""

    def forget_days(self) -> None:
        """Read the partitions from the catalog again before the next write needs one."""
        self._days = set()

    def needs_days(self, days: Iterable[int]) -> bool:
        """True when some of ``days`` may lack a raw call-log partition (no SQL)."""
        return self._partitioned and not self._days.issuperset(days)

    async def prepare_days(self, days: Iterable[int]) -> None:
        """Make the raw call-log partitions of ``days`` that are missing
        (:func:`~.partitions.ensure_days`), in their own short transaction.

        Raises:
            StorageError: the database failed.
        """
        try:
            async with self.engine.begin() as conn:
                have = await ensure_days(conn, days)
        except DATABASE_ERRORS as exc:
            raise storage_error("could not make call-log partitions", exc) from exc
        if have is None:
            self._partitioned = False
        else:
            self._days = have

    def _id(self, dims: Dimensions) -> tuple[int, Dimensions]:
        found = self._ids.get(dims)
        if found is None:
            canon = canonical(dims)
            found = remember(self._ids, _IDS_MEMO, dims, (dim_id(canon), canon))
        return found

    async def write(self, batch: Batch) -> FlushResult:
        """Write ``batch``; all or nothing.

        Raises:
            DataRejected: the database refused a value of the batch (e.g. a tenant
                longer than its column); nothing was written. :class:`Flusher` then
                splits the batch (:func:`split_by_dimensions`).
            StorageError: the database failed; nothing of the batch was written.
        """
        new_dims: dict[int, Dimensions] = {}
        minutes: dict[tuple[int, int], Cell] = {}
        for (minute, dims), cell in batch.cells.items():
            ident, canon = self._id(dims)
            if ident not in self._written:
                new_dims[ident] = canon
            key = (ident, minute)
            seen = minutes.get(key)
            if seen is None:
                minutes[key] = cell
            else:  # the same labels in another order: one dimension set
                merged = seen.copy()
                merged.merge(cell)
                minutes[key] = merged
        if batch.log and self._partitioned:
            days = days_of(list(map(itemgetter(0), batch.log)))
            if self.needs_days(days):
                await self.prepare_days(days)
        try:
            async with self.engine.begin() as conn:
                name = conn.dialect.name
                if new_dims:
                    stmt = dialect.insert(name, usage_dims).on_conflict_do_nothing(
                        index_elements=[usage_dims.c.id]
                    )
                    rows = [dim_row(i, d) for i, d in new_dims.items()]
                    for part in _chunks(rows):
                        await conn.execute(stmt, list(part))
                for table in ROLLUPS:
                    await self._write_rollup(conn, table, minutes)
                if batch.log:
                    await self._write_log(conn, log_groups(batch))
                if batch.fixes:
                    await self._fix_log(conn, batch.fixes)
        except (*DATABASE_ERRORS, *_driver_errors(), *DATA_PYTHON_ERRORS) as exc:
            raise storage_error("could not write usage", exc) from exc
        self._written.update(new_dims)
        return FlushResult(batch.call_count, len(batch.cells), len(batch.log))

    async def _write_log(
        self, conn: AsyncConnection, groups: list[tuple[LogHead, list[LogValues]]]
    ) -> None:
        name = conn.dialect.name
        if name == "sqlite":
            # Every group's rows in statements of nine shapes; one executemany per shape.
            by_shape: dict[int, list[tuple[Any, ...]]] = {}
            for head, values in groups:
                for start, size in sqlite_log_parts(len(values)):
                    params = (*head, *chain.from_iterable(values[start : start + size]))
                    shape = by_shape.get(size)
                    if shape is None:
                        by_shape[size] = [params]
                    else:
                        shape.append(params)
            for size, many in by_shape.items():
                await conn.exec_driver_sql(self._sqlite_log_sql(conn, size), many)
            return
        if name == "postgresql" and self.bulk_postgres:
            await _copy_calls(conn, [head + v for head, values in groups for v in values])
            return
        # The portable per-row statement, parameters in table order.
        rows = [
            (t, *head[:7], status, us, head[7])
            for head, values in groups
            for t, status, us in values
        ]
        sql = self._statement(conn, usage_calls.name, lambda: usage_calls.insert(), CALL_COLUMNS)
        for start in range(0, len(rows), CHUNK):
            await conn.exec_driver_sql(sql, rows[start : start + CHUNK])

    async def _fix_log(self, conn: AsyncConnection, fixes: list[LogFix]) -> None:
        """Give the raw call-log rows of calls that were unknown their status and duration
        (late access-log lines: rare, so one statement per row is fine). Each changes one
        row at most: the unknown-status row of that dimension set, time and duration,
        found through ``ix_usage_calls_org_time``; a row already dropped changes nothing."""
        sql = self._sql.get(("fix-log", conn.dialect.name))
        if sql is None:
            q = conn.dialect.identifier_preparer.quote
            table = q(usage_calls.name)
            match = " AND ".join(
                f"{q(c)} = :{c}" for c in ("org", "environment", "time_us", "key_id", "method")
            )
            sql = self._sql[("fix-log", conn.dialect.name)] = (
                f"UPDATE {table} SET status = :status, duration_us = :duration_us "
                # time_us outside too: on PostgreSQL it picks the one day's partition
                # (the log is partitioned by it and keyed by (time_us, id)).
                f"WHERE time_us = :time_us AND id = (SELECT id FROM {table} WHERE {match} "
                f"AND status < {UNKNOWN_BELOW} AND duration_us = :old_us "
                "AND COALESCE(tenant, '') = :tenant AND COALESCE(route, '') = :route "
                "ORDER BY id LIMIT 1)"
            )
        for dims, t_us, old_us, status, new_us in fixes:
            org, env, key, tenant, _, method, route, _ = dims
            await conn.execute(
                text(sql),
                {
                    "org": org,
                    "environment": env,
                    "time_us": t_us,
                    "key_id": key,
                    "method": method,
                    "tenant": tenant,
                    "route": route,
                    "old_us": old_us,
                    "status": status,
                    "duration_us": new_us,
                },
            )

    def _sqlite_log_sql(self, conn: AsyncConnection, rows: int) -> str:
        key = ("sqlite-log", str(rows))
        found = self._sql.get(key)
        if found is None:
            found = self._sql[key] = sqlite_log_insert(rows, conn.dialect.identifier_preparer.quote)
        return found

    async def _write_rollup(
        self, conn: AsyncConnection, table: Table, minutes: dict[tuple[int, int], Cell]
    ) -> None:
        step = GRANULARITY[table.name]
        if step == 60:
            rows = [rollup_values(i, m, c) for (i, m), c in minutes.items()]
        else:
            merged: dict[tuple[int, int], Cell] = {}
            owned: set[tuple[int, int]] = set()
            for (ident, minute), cell in minutes.items():
                key = (ident, minute - minute % step)
                into = merged.get(key)
                if into is None:
                    merged[key] = cell  # copied only if another minute joins it
                    continue
                if key not in owned:
                    into = merged[key] = into.copy()
                    owned.add(key)
                into.merge(cell)
            rows = [rollup_values(i, b, c) for (i, b), c in merged.items()]
        if not rows:
            return
        if conn.dialect.name == "postgresql" and self.bulk_postgres:
            unnest_key = ("postgresql-unnest", table.name)
            sql = self._sql.get(unnest_key)
            if sql is None:
                quote = conn.dialect.identifier_preparer.quote
                sql = self._sql[unnest_key] = pg_rollup_upsert(table, quote)
            for start in range(0, len(rows), CHUNK):
                await conn.exec_driver_sql(sql, pg_arrays(rows[start : start + CHUNK]))
            return
        sql = self._statement(
            conn, table.name, lambda: rollup_upsert(conn.dialect.name, table), ROLLUP_COLUMNS
        )
        for start in range(0, len(rows), CHUNK):
            await conn.exec_driver_sql(sql, rows[start : start + CHUNK])

    def _statement(
        self, conn: AsyncConnection, name: str, build: Callable[[], Any], cols: tuple[str, ...]
    ) -> str:
        key = (conn.dialect.name, name)
        found = self._sql.get(key)
        if found is None:
            found = self._sql[key] = driver_sql(conn, build(), cols)
        return found


class Flusher:
    """Flushes an :class:`Aggregator` into the database every ``interval`` seconds.

    Args:
        aggregator: where calls are recorded.
        engine: the usage database.
        interval: seconds between flushes.
        retention: table ages enforced every ``prune_every`` seconds; None never prunes.
        prune_every: seconds between prunes.
        clock: wall clock, epoch seconds (injected in tests).
    """

    def __init__(
        self,
        aggregator: Aggregator,
        engine: AsyncEngine,
        *,
        interval: float = 1.0,
        retention: Retention | None = None,
        prune_every: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.aggregator = aggregator
        self.writer = BatchWriter(engine)
        self.interval = interval
        self.retention = retention
        self.prune_every = prune_every
        self.clock = clock
        self.flushes = 0
        """Successful flushes that wrote something."""
        self.failures = 0
        """Failed flush attempts (the batch was kept for the next one)."""
        self.set_aside_calls = 0
        """Calls whose values the database refused, set aside as dead letters."""
        self.last_error: str | None = None
        self.written_calls = 0
        """Calls written to the rollups by this flusher."""
        self.last_flush_at: float | None = None
        """When (``clock``, epoch s) a flush last succeeded, with or without data."""
        self.oldest_in_flight: float | None = None
        """Arrival time of the oldest call of the batch being written, None between."""
        self._lock: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_prune = 0.0
        self.companions: list[Callable[[AsyncEngine], Awaitable[object]]] = []
        """Flushed after each background flush and at stop, into the same database:
        counters kept beside the meter (the fair-use tap). Each keeps what it could not
        write and raises :class:`StorageError`, which is logged."""
        self.pruners: list[Callable[[AsyncEngine, Retention, float], Awaitable[object]]] = []
        """Run after each prune with the same retention and time: tables kept beside the
        meter's (the fair-use tables). Each raises :class:`StorageError`, which is logged."""

    @property
    def engine(self) -> AsyncEngine:
        """The database written to."""
        return self.writer.engine

    @property
    def running(self) -> bool:
        """True while the background task runs."""
        return self._task is not None and not self._task.done()

    async def flush(self) -> FlushResult:
        """Write everything recorded so far now (serialised with the background flushes).

        Raises:
            StorageError: the write failed; the batch is back in the aggregator.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            batch = self.aggregator.drain()
            if batch.empty:
                self.last_flush_at = self.clock()
                return FlushResult(0, 0, 0)
            self.oldest_in_flight = batch.since
            isolating = False
            try:
                try:
                    result = await self.writer.write(batch)
                except DataRejected as rejected:
                    # Poison, not an outage: write what the database takes, set the rest
                    # aside; whatever is left unwritten is put back by _isolate itself.
                    isolating = True
                    result = await self._isolate(batch, rejected)
            except BaseException as exc:
                self.oldest_in_flight = None
                if not isolating:
                    # Cancelled or failed mid-write: the transaction rolled back, so the
                    # batch goes back whole and is written by a later flush.
                    self.aggregator.restore(batch)
                if isinstance(exc, StorageError):
                    self.failures += 1
                    self.last_error = str(exc)
                raise
            self.oldest_in_flight = None
            self.flushes += 1
            self.written_calls += result.calls
            self.set_aside_calls += result.set_aside
            self.last_flush_at = self.clock()
            self.last_error = None
            return result

    async def _isolate(self, batch: Batch, rejected: DataRejected) -> FlushResult:
        """Write a batch the database refused, part by part: split it per dimension set,
        bisect (each half in its own transaction) down to the sets refused, write every
        other one, and store the refused ones as dead letters — a poisoned set costs
        about 2 × log2(sets) transactions, once. If the database fails meanwhile (or the
        task is cancelled), the parts not yet written go back into the aggregator.

        Raises:
            StorageError: the database failed; the unwritten parts are back.
        """
        parts = split_by_dimensions(batch)
        done: set[int] = set()
        refused: dict[int, str] = {}
        totals = [0, 0, 0]

        async def bisect(indexes: list[int], error: DataRejected) -> None:
            if len(indexes) == 1:
                refused[indexes[0]] = data_reason(error)
                return
            mid = len(indexes) // 2
            for half in (indexes[:mid], indexes[mid:]):
                try:
                    written = await self.writer.write(
                        join_batches([parts[i] for i in half], batch.since)
                    )
                except DataRejected as again:
                    await bisect(half, again)
                    continue
                done.update(half)
                totals[0] += written.calls
                totals[1] += written.cells
                totals[2] += written.log_rows

        try:
            await bisect(list(range(len(parts))), rejected)
            letters = [usage_letter(parts[i], error) for i, error in refused.items()]
            await set_aside(self.engine, letters, clock=self.clock)
        except BaseException:
            self.written_calls += totals[0]  # committed: not buffered any more
            rest = [part for i, part in enumerate(parts) if i not in done]
            if rest:
                self.aggregator.restore(join_batches(rest, batch.since))
            raise
        calls, cells, log_rows = totals
        return FlushResult(calls, cells, log_rows, sum(parts[i].call_count for i in refused))

    async def start(self) -> None:
        """Start flushing in the background (idempotent)."""
        if self.running:
            return
        self._task = asyncio.create_task(self._loop(), name="tollhouse-usage-flusher")

    async def stop(self, grace: float = 10.0) -> None:
        """Stop the background task and flush what is left, retrying for up to
        ``grace`` seconds while the database is unreachable."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        deadline = time.monotonic() + grace
        delay = 0.05
        while True:
            try:
                await self.flush()
                await self.flush_companions()
                return
            except StorageError:
                if time.monotonic() + delay > deadline:
                    logger.error(
                        "usage not flushed at shutdown",
                        extra={
                            "pending_cells": self.aggregator.pending_cells,
                            "pending_calls": self.aggregator.pending_calls,
                            "error": self.last_error,
                        },
                    )
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _loop(self) -> None:
        streak = 0
        while True:
            wait = self.interval if streak == 0 else min(self.interval * 2**streak, MAX_BACKOFF)
            await asyncio.sleep(wait)
            try:
                await self.flush()
                if streak:
                    logger.info("usage flushing recovered", extra={"failed_attempts": streak})
                streak = 0
            except StorageError:
                if streak == 0:
                    logger.warning("usage flush failed; retrying", extra={"error": self.last_error})
                streak += 1
                continue
            except Exception:
                logger.exception("usage flush crashed; retrying")
                streak += 1
                continue
            try:
                await self.flush_companions()
            except StorageError:
                logger.warning("flush beside the meter failed; retrying", exc_info=True)
            await self._make_partitions_ahead()
            await self._maybe_prune()

    async def flush_companions(self) -> None:
        """Write what the companions (flushed beside the meter) hold now."""
        for companion in self.companions:
            await companion(self.engine)

    async def _make_partitions_ahead(self) -> None:
        """Make the raw call log's partitions of today and the next days before their
        first call (PostgreSQL; a set lookup when they exist)."""
        days = days_ahead(self.clock())
        if not self.writer.needs_days(days):
            return
        try:
            await self.writer.prepare_days(days)
        except StorageError:
            logger.warning("call-log partitions not made ahead; retrying", exc_info=True)

    async def _maybe_prune(self) -> None:
        if self.retention is None:
            return
        now = self.clock()
        if now - self._last_prune < self.prune_every:
            return
        self._last_prune = now
        try:
            await prune(self.engine, self.retention, now)
            self.writer.forget_days()  # some may have been dropped
            for pruner in self.pruners:
                await pruner(self.engine, self.retention, now)
        except StorageError:
            logger.warning("usage prune failed", exc_info=True)
