"""The raw call log, read page by page with a keyset on ``(time_us, id)``.

Keyset paging costs the same on page 1 and page 10,000 (an index range scan from the
last row seen), and a row recorded while paging neither repeats nor skips a row.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.errors import BadRequest, StorageError
from tollhouse.metering.schema import usage_calls
from tollhouse.storage.dialect import DATABASE_ERRORS

MAX_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class LoggedCall:
    """One row of the raw call log."""

    id: int
    time: float
    """When the request arrived, epoch seconds (UTC)."""
    key_id: str
    tenant: str | None
    endpoint_group: str | None
    method: str
    route: str | None
    status: int
    duration_ms: float
    labels: dict[str, str] = field(default_factory=dict)


def encode_position(time_us: int, row_id: int) -> str:
    """An opaque cursor for the row after (or before) ``(time_us, row_id)``."""
    return base64.urlsafe_b64encode(f"{time_us}:{row_id}".encode()).decode().rstrip("=")


def decode_position(cursor: str) -> tuple[int, int]:
    """The ``(time_us, id)`` a cursor stands for.

    Raises:
        BadRequest: not a cursor made by :func:`encode_position`.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        t, i = raw.split(":")
        return int(t), int(i)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("cursor is not a call-log cursor; start again without it.") from None


async def read_calls(
    engine: AsyncEngine,
    *,
    org: str,
    environment: str,
    start: float | None = None,
    end: float | None = None,
    cursor: str | None = None,
    limit: int = 100,
    newest_first: bool = True,
) -> tuple[list[LoggedCall], str | None]:
    """A page of ``org``'s calls in ``[start, end]`` and the cursor of the next page.

    Raises:
        BadRequest: a bad cursor or limit.
        StorageError: the database failed.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be from 1 to {MAX_LIMIT}, got {limit}.")
    c = usage_calls.c
    where = [c.org == org, c.environment == environment]
    if start is not None:
        where.append(c.time_us >= round(start * 1_000_000))
    if end is not None:
        where.append(c.time_us <= round(end * 1_000_000))
    if cursor:
        t, i = decode_position(cursor)
        if newest_first:
            where.append(or_(c.time_us < t, and_(c.time_us == t, c.id < i)))
        else:
            where.append(or_(c.time_us > t, and_(c.time_us == t, c.id > i)))
    order = (c.time_us.desc(), c.id.desc()) if newest_first else (c.time_us, c.id)
    stmt = select(usage_calls).where(*where).order_by(*order).limit(limit + 1)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
    except DATABASE_ERRORS as exc:
        raise StorageError(f"could not read the call log: {exc}") from exc
    more = len(rows) > limit
    rows = rows[:limit]
    calls = [
        LoggedCall(
            id=r.id,
            time=r.time_us / 1_000_000,
            key_id=r.key_id,
            tenant=r.tenant,
            endpoint_group=r.endpoint_group,
            method=r.method,
            route=r.route,
            status=r.status,
            duration_ms=r.duration_us / 1000,
            labels=dict(r.labels or {}),
        )
        for r in rows
    ]
    next_cursor = encode_position(rows[-1].time_us, rows[-1].id) if more and rows else None
    return calls, next_cursor
