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

#: SQLSTATE classes of errors caused by the values of a statement, not by the database's
#: health: 22 data exception (too long, out of range, bad encoding), 23 integrity
#: constraint violation (NOT NULL, CHECK, foreign key), 54 program limit exceeded (an
#: index row too big). Running the statement again fails again.
DATA_SQLSTATE_CLASSES = ("22", "23", "54")
#: …except conflicts between concurrent writers, which a retry resolves.
CONFLICT_SQLSTATES = ("23505", "23P01")
#: What Python's drivers raise before a value reaches the server: SQLite's binding of an
#: integer over 64 bits, a string with lone surrogates.
DATA_PYTHON_ERRORS: tuple[type[Exception], ...] = (OverflowError, UnicodeEncodeError)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, its ``orig`` (SQLAlchemy's DBAPI error) and their causes, outermost first."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen) or len(seen) > 8:
            continue
        seen.append(e)
        todo += [getattr(e, "orig", None), e.__cause__]
    return seen


def is_data_error(exc: BaseException) -> bool:
    """True when a database write failed because of the values it carried — the same
    statement would fail again — rather than because the database is unreachable, busy
    or restarting (those are worth retrying). Unique-key conflicts count as retryable.

    PostgreSQL's SQLSTATE decides (:data:`DATA_SQLSTATE_CLASSES`), asyncpg's client-side
    ``DataError`` (a value that cannot be encoded for its column) and SQLite's
    ``DataError``/``IntegrityError`` (but a ``UNIQUE`` one) count too, as do
    :data:`DATA_PYTHON_ERRORS`.
    """
    for e in _chain(exc):
        if isinstance(e, DATA_PYTHON_ERRORS):
            return True
        state = getattr(e, "sqlstate", None)
        if isinstance(state, str) and len(state) == 5:
            return state[:2] in DATA_SQLSTATE_CLASSES and state not in CONFLICT_SQLSTATES
        kind = type(e)
        module = kind.__module__
        if module.startswith("asyncpg") and kind.__name__ == "DataError":
            return True  # client-side: the value could not be encoded for its parameter
        if module == "sqlite3" and kind.__name__ == "DataError":
            return True
        if module == "sqlite3" and kind.__name__ == "IntegrityError":
            return "UNIQUE constraint failed" not in str(e)
    return False


def data_reason(exc: BaseException) -> str:
    """What the driver said about a refused value, without the statement or its
    parameters (SQLAlchemy's text carries both): for error bodies, logs and dead letters.
    """
    chain = _chain(exc)
    inner = chain[-1]
    for e in reversed(chain):  # the driver's own error is the innermost
        if getattr(e, "sqlstate", None) is not None or type(e).__module__ == "sqlite3":
            inner = e
            break
    text = str(inner.args[0]) if inner.args else type(inner).__name__
    if isinstance(inner, UnicodeEncodeError):
        text = f"a value cannot be encoded ({inner.reason})"
    return text.splitlines()[0][:200] if text else type(inner).__name__
