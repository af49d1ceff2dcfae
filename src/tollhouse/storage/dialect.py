"""The few SQL spellings that differ between SQLite and PostgreSQL, in one place.

Everything else is plain SQLAlchemy Core that renders the same on both engines. Callers
pass the dialect name (``conn.dialect.name``) and get a construct for it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from tollhouse.errors import ConfigError

#: Dialects tollhouse's SQL stores run on.
SUPPORTED = ("sqlite", "postgresql")

Insert = sqlite.Insert | postgresql.Insert


def insert(dialect: str, table: Table) -> Insert:
    """``INSERT`` with ``ON CONFLICT`` support (``on_conflict_do_update``/``do_nothing``)."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise ConfigError(f"unsupported SQL dialect {dialect!r}; use one of {', '.join(SUPPORTED)}")


def least(dialect: str, a: Any, b: Any) -> ColumnElement[Any]:
    """The smaller of two values: ``LEAST`` on PostgreSQL, scalar ``min`` on SQLite."""
    return func.least(a, b) if dialect == "postgresql" else func.min(a, b)


def greatest(dialect: str, a: Any, b: Any) -> ColumnElement[Any]:
    """The larger of two values: ``GREATEST`` on PostgreSQL, scalar ``max`` on SQLite."""
    return func.greatest(a, b) if dialect == "postgresql" else func.max(a, b)


#: What a failing database raises: SQLAlchemy's errors, and ``OSError`` for connections
#: asyncpg could not even open (it raises ``ConnectionRefusedError`` unwrapped).
DATABASE_ERRORS: tuple[type[Exception], ...] = (SQLAlchemyError, OSError)
