"""Write transactions that are atomic on every engine tollhouse runs on.

On SQLite the Python driver only opens a transaction at the first data-changing
statement, so a ``SELECT`` then ``UPDATE`` is not one atomic step, and a transaction
that read first cannot upgrade to a writer once another process has written
(``SQLITE_BUSY_SNAPSHOT``, not retried by ``busy_timeout``). Starting every write
transaction with ``BEGIN IMMEDIATE`` takes the write lock first (waiting up to
``busy_timeout``), which makes read-decide-write sequences atomic across processes.
Within one process, SQLite writers also queue on an asyncio lock per engine: SQLite's
busy handler polls and is unfair, so hundreds of tasks waiting on it would starve some
past ``busy_timeout``; the lock hands the database to them one at a time, in order, and
leaves ``busy_timeout`` for contention between processes only.
On PostgreSQL the usual transaction is opened and rows are locked with ``FOR UPDATE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollhouse.errors import DataRejected, StorageError
from tollhouse.storage.dialect import data_reason, is_data_error

_sqlite_locks: weakref.WeakKeyDictionary[
    Any, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]
] = weakref.WeakKeyDictionary()


def _writer_lock(engine: AsyncEngine) -> asyncio.Lock:
    per_loop = _sqlite_locks.setdefault(engine.sync_engine, weakref.WeakKeyDictionary())
    loop = asyncio.get_running_loop()
    lock = per_loop.get(loop)
    if lock is None:
        lock = per_loop[loop] = asyncio.Lock()
    return lock


@asynccontextmanager
async def write_transaction(engine: AsyncEngine, what: str) -> AsyncIterator[AsyncConnection]:
    """A connection in a write transaction, committed on exit, rolled back on error.

    Raises:
        DataRejected: the database refused a value of a statement (too long, out of
            range…): running it again would fail again; a 400 to a caller.
        StorageError: the database failed (the driver's error is chained).
    """
    sqlite = engine.dialect.name == "sqlite"
    serial = _writer_lock(engine) if sqlite else contextlib.nullcontext()
    try:
        async with serial, engine.connect() as conn:
            if sqlite:
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                await conn.rollback()
                raise
            await conn.commit()
    except (SQLAlchemyError, OverflowError, UnicodeEncodeError) as exc:
        raise storage_error(what, exc) from exc


@asynccontextmanager
async def read_connection(engine: AsyncEngine, what: str) -> AsyncIterator[AsyncConnection]:
    """A connection for reads.

    Raises:
        DataRejected: a value of a statement cannot be used (e.g. not encodable).
        StorageError: the database failed (the driver's error is chained).
    """
    try:
        async with engine.connect() as conn:
            yield conn
    except (SQLAlchemyError, OverflowError, UnicodeEncodeError) as exc:
        raise storage_error(what, exc) from exc


def storage_error(what: str, exc: BaseException) -> StorageError:
    """The error to raise for a failed database call: :class:`DataRejected` (a 400,
    its message naming what the driver refused but never the statement or its
    parameters) when :func:`~tollhouse.storage.dialect.is_data_error`, else
    :class:`StorageError`. ``OverflowError`` and ``UnicodeEncodeError`` (the drivers'
    :data:`~tollhouse.storage.dialect.DATA_PYTHON_ERRORS`, raised unwrapped) are caught
    inside transactions for that."""
    if is_data_error(exc):
        return DataRejected(f"A value in the request cannot be stored: {data_reason(exc)}.")
    return StorageError(f"{what}: {exc}")
