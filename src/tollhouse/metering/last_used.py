"""When each key of an org was last used, read from the usage rollups.

Nothing is written per request for this: the rollups already count every admitted call
per key (``usage_dims.key_id``). A key's last use is the start of the latest bucket it
has calls in, taken from the finest rollup that still holds it (minutes, else hours, else
days, as retention drops the finer ones), so it is accurate to the minute for recent
use. Calls still in a process's meter show up after its next flush.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.metering.schema import ROLLUPS, usage_dims
from tollhouse.storage.transactions import read_connection

__all__ = ["last_used"]


async def last_used(engine: AsyncEngine, org: str, environment: str) -> dict[str, datetime]:
    """Key id → the start (UTC) of the latest minute, hour or day it made a call in.

    Keys never used are absent.

    Raises:
        StorageError: the usage tables could not be read.
    """
    d = usage_dims.c
    found: dict[str, datetime] = {}
    async with read_connection(engine, "could not read when keys were last used") as conn:
        for rollup in ROLLUPS:  # finest first: a finer bucket's start is the later one
            q = (
                select(d.key_id, func.max(rollup.c.bucket))
                .join(rollup, rollup.c.dim_id == d.id)
                .where(d.org == org, d.environment == environment)
                .group_by(d.key_id)
            )
            for key_id, bucket in (await conn.execute(q)).all():
                if key_id not in found and bucket is not None:
                    found[key_id] = datetime.fromtimestamp(int(bucket), UTC)
    return found
