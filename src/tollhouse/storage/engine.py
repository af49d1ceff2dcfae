"""The SQL engine for a database URL (SQLAlchemy 2 Core, async drivers)."""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import event
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tollhouse.errors import ConfigError

logger = logging.getLogger(__name__)


def driver_url(url: str) -> str:
    """Map a user-facing URL to its async driver: sqlite → aiosqlite, postgresql → asyncpg."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    if url.startswith("sqlite+aiosqlite:///"):
        return url
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("postgresql+asyncpg://"):
        return url
    raise ConfigError(f"database_url {url!r}: use sqlite:///path/file.db or postgresql://…")


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL, or None for other engines and in-memory databases."""
    for prefix in ("sqlite:///", "sqlite+aiosqlite:///"):
        if url.startswith(prefix):
            rest = url[len(prefix) :]
            return None if rest in ("", ":memory:") else Path(rest)
    return None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # busy_timeout first: switching a new database to WAL takes its lock, and without a
    # busy handler a second process connecting at that moment fails at once ("database
    # is locked") instead of waiting. WAL lets the CLI write keys while the server reads.
    cursor.execute("PRAGMA busy_timeout=5000")
    for attempt in range(20):
        # Two connections switching a new file to WAL at once can deadlock on its
        # rollback-journal locks; SQLite then answers one of them BUSY at once, without
        # the busy handler. The other finishes the switch in a moment: try again.
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except Exception as exc:  # the driver's OperationalError, by whatever name
            if "database is locked" not in str(exc) or attempt == 19:
                raise
            time.sleep(0.01 * (attempt + 1))
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def is_postgres(url: str) -> bool:
    """True for the PostgreSQL URL spellings :func:`driver_url` accepts."""
    return url.startswith(("postgresql://", "postgres://", "postgresql+asyncpg://"))


def _postgres_url(url: str) -> tuple[str, dict[str, Any]]:
    """The asyncpg URL and its connect arguments.

    libpq's ``sslmode`` is what people paste from their provider, but asyncpg spells it
    ``ssl``: translate rather than fail at the first connection.
    """
    parts = urlsplit(driver_url(url))
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in query if k != "sslmode"]
    connect_args: dict[str, Any] = {
        # Sessions in UTC, so nothing the server renders depends on its local zone.
        "server_settings": {"timezone": "UTC", "application_name": "tollhouse"},
    }
    for k, v in query:
        if k == "sslmode" and v != "disable":
            connect_args["ssl"] = v
    return urlunsplit(parts._replace(query=urlencode(kept))), connect_args


#: A pooled PostgreSQL connection idle for longer than this is pinged before it is handed
#: out. SQLAlchemy's ``pool_pre_ping`` pings at every checkout, which with asyncpg is
#: three round trips (BEGIN, a query, ROLLBACK) before each transaction: as many as the
#: job queue's whole finish. A connection back in the pool for less than this was
#: working a moment ago; if the server went away since, the next statement fails, the
#: pool is invalidated (SQLAlchemy does that on any disconnect error) and the caller's
#: retry gets a new connection. A restart takes longer than this, so after one every
#: pooled connection is pinged and replaced, as with ``pool_pre_ping``.
PING_AFTER_IDLE_SECONDS = 1.0
_IDLE_SINCE = "tollhouse_idle_since"


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info[_IDLE_SINCE] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Ping a connection that sat in the pool for a while; a dead one makes the pool
    replace it (and every connection pooled before it) and try again."""
    since = record.info.get(_IDLE_SINCE)
    if since is None or time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
        return  # fresh, or in use a moment ago
    try:
        dbapi_connection.ping()
    except Exception as exc:
        raise InvalidatePoolError(f"a pooled connection failed its ping: {exc}") from exc


def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
    """Open a connection; an unreachable server becomes the driver's ``OperationalError``.

    asyncpg raises ``OSError`` (``ConnectionRefusedError``, a timeout) unwrapped when it
    cannot open a connection; raised as a DBAPI error instead, SQLAlchemy wraps it like
    any other, so every caller that handles database errors sees an unreachable server
    as one (a 503, a retried flush) rather than an unexpected exception (a 500, a dead
    background task).
    """
    try:
        return dialect.connect(*cargs, **cparams)
    except OSError as exc:
        raise dialect.loaded_dbapi.OperationalError(
            f"cannot connect to the database: {exc}", exc
        ) from exc


#: Modes of what :func:`make_engine` creates for a SQLite database: the folder and the
#: file (which holds key hashes, webhook secrets and job payloads) readable by the owner
#: only. SQLite creates the ``-wal`` and ``-shm`` files with the database file's mode.
SQLITE_DIR_MODE = 0o700
SQLITE_FILE_MODE = 0o600


def prepare_sqlite_file(path: Path) -> None:
    """Create ``path``'s folder (``0700``) and the empty database file (``0600``) when
    missing, before SQLite opens it with the process's umask (often world-readable).
    An existing file keeps its mode; one readable by others is reported.

    Raises:
        OSError: the folder or the file cannot be created.
    """
    missing: list[Path] = []
    folder = path.parent
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        made.mkdir(mode=SQLITE_DIR_MODE)
        os.chmod(made, SQLITE_DIR_MODE)  # mkdir's mode is masked by the umask
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SQLITE_FILE_MODE)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            logger.warning(
                "the SQLite database is readable by other users; chmod 600 it",
                extra={"path": str(path), "mode": oct(mode)},
            )
        return
    os.fchmod(fd, SQLITE_FILE_MODE)
    os.close(fd)


def make_engine(url: str, *, log_parameters: bool = False) -> AsyncEngine:
    """An async engine for ``url``; creates the SQLite file's folder when missing.

    ``sqlite:///path`` runs on aiosqlite (WAL, busy timeout), its folder and file created
    owner-only (:func:`prepare_sqlite_file`); ``postgresql://…`` on asyncpg with a small
    pool whose dead connections are replaced transparently.

    Args:
        url: the database URL.
        log_parameters: let SQLAlchemy show statements' parameters in its log lines and
            error messages (``--log-bodies``). Off by default: parameters carry key
            hashes, webhook secrets and request bodies (``hide_parameters``).

    Raises:
        ConfigError: the URL's scheme is not supported or its folder cannot be created.
    """
    hide = not log_parameters
    if is_postgres(url):
        target, connect_args = _postgres_url(url)
        pg = create_async_engine(
            target, connect_args=connect_args, pool_size=5, max_overflow=10, hide_parameters=hide
        )
        event.listen(pg.sync_engine, "do_connect", _connect)
        # A server restart leaves dead sockets in the pool: connections idle for a while
        # are pinged at checkout and swapped out if dead (see _ping_if_idle).
        event.listen(pg.sync_engine.pool, "checkin", _note_checkin)
        event.listen(pg.sync_engine.pool, "checkout", _ping_if_idle)
        return pg
    path = sqlite_path(url)
    if path is not None:
        try:
            prepare_sqlite_file(path)
        except OSError as exc:
            raise ConfigError(f"database_url {url!r}: cannot create {path}: {exc}") from None
    engine = create_async_engine(driver_url(url), hide_parameters=hide)
    if path is not None or url.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine
