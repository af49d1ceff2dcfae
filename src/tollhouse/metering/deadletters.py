"""Dead letters: rows the database refused, set aside for an operator instead of retried.

The usage flusher and the events writer write batches. When a batch fails because of
its *data* — a value too long for its column, out of range, not encodable
(:func:`tollhouse.storage.dialect.is_data_error`) — retrying it would fail forever and
hold back every good row with it. So the writer splits the batch, writes the good rows
and hands the bad ones here: each becomes one ``dead_letters`` row holding what was
refused (as escaped JSON text, so the row itself can always be stored), the database's
reason and the request id, is logged with that request id, and counted in
``tollhouse_dead_letters_total`` on ``/metrics``. ``tollhouse dead-letters`` lists them.

A batch that fails because the database is unreachable is *not* split: the writers keep
it and retry, as before.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table, Text, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.errors import DataRejected
from tollhouse.storage.schema import metadata
from tollhouse.storage.transactions import read_connection, write_transaction

logger = logging.getLogger(__name__)

#: The table's name (the only place it is spelled).
DEAD_LETTERS = "dead_letters"
#: What a dead letter holds: ``usage`` — one dimension set's calls of one flush (counts
#: per minute and raw call-log entries); ``event`` — one product event.
Kind = Literal["usage", "event"]
KINDS: tuple[Kind, ...] = ("usage", "event")
#: Raw call-log entries kept in one usage dead letter at most (its counts are whole).
MAX_LOG_ENTRIES = 1000
#: Longest error and identifier text kept (the payload keeps values whole).
MAX_TEXT = 500

_SERIAL = BigInteger().with_variant(Integer(), "sqlite")

dead_letters = Table(
    DEAD_LETTERS,
    metadata,
    Column("id", _SERIAL, primary_key=True, autoincrement=True),
    Column("at_us", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),
    # Text, not String(n): whatever was refused must fit here.
    Column("org", Text, nullable=False),
    Column("request_id", Text, nullable=True),
    Column("error", Text, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("payload", Text, nullable=False),
    Index("ix_dead_letters_at", "at_us"),
)


class SetAsideCounts:
    """Rows set aside by this process, by kind (read by ``/metrics``)."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = dict.fromkeys(KINDS, 0)

    def add(self, kind: Kind, rows: int) -> None:
        """Count ``rows`` more of ``kind``."""
        self.rows[kind] = self.rows.get(kind, 0) + rows


#: This process's counts (one per process, like every figure on ``/metrics``).
COUNTS = SetAsideCounts()


def printable(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` as any column can store it: lone surrogates and NUL escaped, cut at
    ``limit`` characters."""
    safe = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return safe if len(safe) <= limit else safe[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One set-aside row (or group of rows) and why it was refused."""

    kind: Kind
    org: str
    error: str
    """What the database said (never the statement or its parameters)."""
    rows: int
    """Calls (``usage``) or events (``event``) it holds."""
    payload: dict[str, Any]
    """What was refused, whole (but a usage letter's raw log past
    :data:`MAX_LOG_ENTRIES`)."""
    request_id: str | None = None
    """The request that carried the refused value (for usage: the first call counted
    under the refused dimension set in the earliest of its minutes)."""
    at: float = 0.0
    """When it was set aside, epoch seconds."""
    id: int | None = None

    def as_json(self) -> dict[str, Any]:
        """For ``tollhouse dead-letters --json``."""
        return {
            "id": self.id,
            "at": self.at,
            "kind": self.kind,
            "org": self.org,
            "requestId": self.request_id,
            "error": self.error,
            "rows": self.rows,
            "payload": self.payload,
        }


async def set_aside(
    engine: AsyncEngine, letters: Sequence[DeadLetter], *, clock: Any = time.time
) -> None:
    """Store ``letters`` (one transaction), log each with its request id, count them.

    Raises:
        StorageError: the database is unreachable; nothing was stored or counted (the
            caller keeps the rows and tries again later).
    """
    if not letters:
        return
    now = clock()
    values = [
        {
            "at_us": round(now * 1_000_000),
            "kind": letter.kind,
            "org": printable(letter.org),
            "request_id": printable(letter.request_id) if letter.request_id else None,
            "error": printable(letter.error),
            "rows": letter.rows,
            # ensure_ascii: NULs and lone surrogates become escapes, so any engine and
            # any column type holds it.
            "payload": json.dumps(letter.payload, ensure_ascii=True, default=str),
        }
        for letter in letters
    ]
    try:
        async with write_transaction(engine, "could not store dead letters") as conn:
            await conn.execute(dead_letters.insert(), values)
    except DataRejected:  # pragma: no cover - every value above is escaped text
        logger.exception("dead letters refused too; dropped", extra={"rows": len(letters)})
        stored = False
    else:
        stored = True
    for letter in letters:
        COUNTS.add(letter.kind, letter.rows)
        logger.warning(
            "the database refused %s data; set aside as a dead letter",
            letter.kind,
            extra={
                "request_id": printable(letter.request_id or "", 100),
                "org": printable(letter.org, 100),
                "rows": letter.rows,
                "error": letter.error,
                "stored": stored,
            },
        )


async def list_dead_letters(
    engine: AsyncEngine, *, kind: Kind | None = None, org: str | None = None, limit: int = 100
) -> list[DeadLetter]:
    """The latest ``limit`` dead letters (of ``kind``, of ``org``), oldest first.

    Raises:
        StorageError: the database failed.
    """
    q = select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit)
    if kind is not None:
        q = q.where(dead_letters.c.kind == kind)
    if org is not None:
        q = q.where(dead_letters.c.org == org)
    async with read_connection(engine, "could not read dead letters") as conn:
        rows = (await conn.execute(q)).all()
    out: list[DeadLetter] = []
    for r in reversed(rows):
        try:
            payload = json.loads(r.payload)
        except ValueError:  # pragma: no cover - written by json.dumps above
            payload = {"unreadable": r.payload}
        out.append(
            DeadLetter(
                kind=r.kind,
                org=r.org,
                error=r.error,
                rows=r.rows,
                payload=payload,
                request_id=r.request_id,
                at=r.at_us / 1_000_000,
                id=r.id,
            )
        )
    return out
