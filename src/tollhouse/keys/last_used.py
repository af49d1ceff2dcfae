"""When each key last made a call: ``api_keys.last_used_at``, kept off the request path.

The meter's aggregator shows every pass of recorded calls to :meth:`KeyUse.observe` (a
dict update per call, in the background flush, never on the request path); the flush
then writes the latest time of each key seen since the last write, in one transaction,
only ever moving a key's time forward. What the provider API shows as ``lastUsedAt`` is
thus as fresh as the usage flush (a second by default).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import bindparam, or_, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.keys.schema import api_keys
from tollhouse.storage.transactions import write_transaction

logger = logging.getLogger(__name__)


class _Call(Protocol):
    @property
    def time(self) -> float: ...

    @property
    def key_id(self) -> str: ...


class KeyUse:
    """The latest call time per key, since the last :meth:`flush`."""

    def __init__(self) -> None:
        self._latest: dict[str, float] = {}

    def observe(self, calls: Iterable[_Call]) -> None:
        """Note the calls of one aggregation pass (never raises)."""
        latest = self._latest
        for call in calls:
            seen = latest.get(call.key_id)
            if seen is None or call.time > seen:
                latest[call.key_id] = call.time

    async def flush(self, engine: AsyncEngine) -> int:
        """Write the noted times; returns how many keys were written.

        Raises:
            StorageError: the write failed; the times are kept for the next flush.
        """
        noted, self._latest = self._latest, {}
        if not noted:
            return 0
        c = api_keys.c
        statement = (
            update(api_keys)
            .where(
                c.id == bindparam("kid"),
                or_(c.last_used_at.is_(None), c.last_used_at < bindparam("at")),
            )
            .values(last_used_at=bindparam("at"))
        )
        rows = [
            {"kid": key_id, "at": datetime.fromtimestamp(t, UTC)} for key_id, t in noted.items()
        ]
        try:
            async with write_transaction(engine, "could not note when keys were used") as conn:
                await conn.execute(statement, rows)
        except BaseException:
            for key_id, t in noted.items():
                if t > self._latest.get(key_id, 0.0):
                    self._latest[key_id] = t
            raise
        return len(rows)
