"""A small versioned migration runner: ordered steps, one version row, same on every engine.

This module is the runner only: it knows no table of any domain. The steps themselves,
in order, live in :mod:`tollhouse.schema`, above the domains whose tables they create, so
storage never imports what is built on it.

:func:`migrate` runs inside one transaction that first takes a lock — an advisory lock on
PostgreSQL, the database write lock on SQLite (taken by the first write statement) — so
processes starting together (a server and a CLI, several workers) apply each step once
and in order, and every step is all-or-nothing. Steps use ``IF NOT EXISTS`` so a database
whose tables predate the runner (created by ``create_all``) is adopted, not broken.

The version lives in the existing ``tollhouse_schema`` row (``id = 1``). Databases made
before this runner hold version 1 (the keys tables), which is step 1 of
:data:`tollhouse.schema.MIGRATIONS`.

Tables that modules register on the shared metadata without a step are still created
(see :func:`migrate`), so work in progress keeps running.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, MetaData, Table, inspect, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.schema import CreateIndex, CreateTable

from tollhouse.errors import StorageError
from tollhouse.storage import dialect
from tollhouse.storage.dialect import DATABASE_ERRORS
from tollhouse.storage.schema import metadata, schema_info
from tollhouse.storage.transactions import write_transaction

logger = logging.getLogger(__name__)

#: Key of the PostgreSQL advisory lock held while migrating ("tollhous" in ASCII).
ADVISORY_LOCK_KEY = 0x746F6C6C686F7573


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema's history.

    Args:
        version: the schema version after the step; steps run in increasing order.
        name: what the step does, for logs.
        apply: runs the step's DDL on a connection inside the migration transaction.
    """

    version: int
    name: str
    apply: Callable[[Connection], None]


def create_tables(conn: Connection, tables: Iterable[Table]) -> None:
    """``CREATE TABLE IF NOT EXISTS`` each table and its indexes."""
    for table in tables:
        conn.execute(CreateTable(table, if_not_exists=True))
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            conn.execute(CreateIndex(index, if_not_exists=True))


def ensure_tables(conn: Connection, tables: Iterable[Table]) -> None:
    """Create each table that is missing, and each index missing from a table that exists.

    For steps that adopt tables made outside the runner, and for code that makes sure of
    its tables at every start. Indexes are looked up in the catalog first: even with
    ``IF NOT EXISTS``, PostgreSQL's ``CREATE INDEX`` takes a SHARE lock on the table before
    looking, which would queue every writer behind each starting process. An index over
    a column the existing table does not have yet is left to the later step that adds the
    column (and then calls this again).
    """
    existing = set(inspect(conn).get_table_names())
    for table in tables:
        if table.name not in existing:
            create_tables(conn, (table,))
            continue
        have = {ix["name"] for ix in inspect(conn).get_indexes(table.name)}
        columns = {c["name"] for c in inspect(conn).get_columns(table.name)}
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            if index.name not in have and all(c.name in columns for c in index.columns):
                conn.execute(CreateIndex(index, if_not_exists=True))


def rebuild_table(conn: Connection, table: Table) -> None:
    """SQLite: make ``table`` again from its current definition, keeping every row (the
    columns both layouts have; a column new to the definition takes its default), its
    indexes included — the way to change a primary key or a constraint SQLite cannot
    alter in place."""
    copy = table.to_metadata(MetaData(), name=f"{table.name}_rebuilt")
    conn.execute(CreateTable(copy))
    present = {c["name"] for c in inspect(conn).get_columns(table.name)}
    columns = ", ".join(f'"{c.name}"' for c in table.columns if c.name in present)
    conn.exec_driver_sql(
        f'INSERT INTO "{copy.name}" ({columns}) SELECT {columns} FROM "{table.name}"'
    )
    conn.exec_driver_sql(f'DROP TABLE "{table.name}"')  # its indexes go with it
    conn.exec_driver_sql(f'ALTER TABLE "{copy.name}" RENAME TO "{table.name}"')
    for index in sorted(table.indexes, key=lambda i: str(i.name)):
        conn.execute(CreateIndex(index))


def check_steps(steps: tuple[Migration, ...]) -> None:
    """Fail unless ``steps`` are numbered 1, 2, 3… in order (called where a list is made).

    Raises:
        AssertionError: a version is missing, repeated or out of order.
    """
    versions = [m.version for m in steps]
    if versions != list(range(1, len(steps) + 1)):
        raise AssertionError(f"migration versions must be 1, 2, 3…; got {versions}")


def _run(conn: Connection, steps: tuple[Migration, ...]) -> tuple[int, int]:
    name = conn.dialect.name
    if name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
    conn.execute(CreateTable(schema_info, if_not_exists=True))
    # A write first: on SQLite it takes the database's write lock for the whole
    # transaction, so a concurrent migrator waits here (busy_timeout) instead of racing.
    conn.execute(
        dialect.insert(name, schema_info)
        .values(id=1, version=0)
        .on_conflict_do_nothing(index_elements=[schema_info.c.id])
    )
    current = conn.execute(select(schema_info.c.version).where(schema_info.c.id == 1)).scalar_one()
    latest = steps[-1].version
    if current > latest:
        logger.warning(
            "database schema is newer than this tollhouse",
            extra={"schema_version": current, "known_version": latest},
        )
    for step in steps:
        if step.version > current:
            logger.info(
                "applying migration", extra={"version": step.version, "migration": step.name}
            )
            step.apply(conn)
    # Tables registered on the shared metadata without a step yet (work in progress in
    # another module) are created too, under the same lock.
    metadata.create_all(conn)
    if latest > current:
        conn.execute(update(schema_info).where(schema_info.c.id == 1).values(version=latest))
    return current, max(current, latest)


async def migrate(engine: AsyncEngine, steps: tuple[Migration, ...]) -> tuple[int, int]:
    """Bring the database to the last of ``steps`` (idempotent).

    Args:
        engine: the database.
        steps: the whole history, version 1 first (:data:`tollhouse.schema.MIGRATIONS`).

    Returns:
        The version before and after.

    Raises:
        StorageError: the database could not be reached or a step failed (nothing of the
            failed run is kept: it is one transaction).
    """
    try:
        # BEGIN IMMEDIATE on SQLite: the write lock comes first, so concurrent migrators
        # queue on busy_timeout instead of failing with SQLITE_BUSY_SNAPSHOT.
        async with write_transaction(engine, "could not migrate the database schema") as conn:
            return await conn.run_sync(_run, steps)
    except DATABASE_ERRORS as exc:
        raise StorageError(f"could not migrate the database schema: {exc}") from exc


async def schema_version(engine: AsyncEngine) -> int:
    """The version recorded in the database, 0 when it has never been migrated."""
    try:
        async with engine.connect() as conn:

            def read(c: Connection) -> int:
                if not inspect(c).has_table(schema_info.name):
                    return 0
                found = c.execute(
                    select(schema_info.c.version).where(schema_info.c.id == 1)
                ).scalar()
                return int(found or 0)

            return await conn.run_sync(read)
    except DATABASE_ERRORS as exc:
        raise StorageError(f"could not read the schema version: {exc}") from exc
