"""How long each usage table keeps its rows, and the prune that enforces it.

Rows are deleted by age, except the raw call log on PostgreSQL, which is partitioned by
day: whole partitions are dropped there (:func:`~.partitions.drop_days_before`), never a
``DELETE`` over the log.

:class:`Retention` also holds the ages of the fair-use tables, which
:func:`tollhouse.fairuse.retention.prune_fair_use` enforces (the fair-use package reads
the meter's tables, so the deletes live beside its own tables, not here).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.errors import StorageError
from tollhouse.metering.partitions import drop_days_before, is_partitioned
from tollhouse.metering.schema import (
    product_events,
    usage_calls,
    usage_rollup_1d,
    usage_rollup_1h,
    usage_rollup_1m,
)
from tollhouse.storage.dialect import DATABASE_ERRORS

logger = logging.getLogger(__name__)

DAY = 86400


@dataclass(frozen=True, slots=True)
class Retention:
    """Days of data kept per table; None keeps rows forever."""

    calls_days: float | None = 30
    """Raw call log (``api_calls_log``): one row per call, the biggest table."""
    rollup_1m_days: float | None = 7
    """Minute rollups: minute-precise edges for ranges of up to a few days."""
    rollup_1h_days: float | None = 400
    """Hourly rollups: hourly charts and hour-precise edges of daily charts for a year."""
    rollup_1d_days: float | None = None
    """Daily rollups: small, kept forever by default."""
    events_days: float | None = 400
    """Product events (the metrics catalogue shape, CHAT and LLM call counts)."""
    fair_use_days: float | None = 98
    """The fair-use tallies and jobs (``fair_use_tallies``, ``fair_use_jobs``): the
    90-day ``timeRange`` of ``GET /v1/analytics/fair-use``, the 7 days
    ``criteria_without_scoring`` looks back before it, and a day. Pruned by
    :func:`tollhouse.fairuse.retention.prune_fair_use`, never below what the policy's
    ``[[fair_use]]`` windows need."""
    fair_use_flags_days: float | None = 400
    """The flags the scheduled pass recorded (``fair_use_flags``, read by the catalogue
    metrics), by when each was last updated; a flag whose throttle override is not
    lifted yet is kept."""

    def covers(self, days: float | None, oldest: float, now: float) -> bool:
        """True when a table kept ``days`` still holds data from ``oldest`` (epoch s)."""
        return days is None or oldest >= now - days * DAY


async def prune(engine: AsyncEngine, retention: Retention, now: float) -> dict[str, int]:
    """Delete rows older than each table's retention (on PostgreSQL, drop the raw call
    log's partitions whose whole day is older than its retention).

    Args:
        engine: the usage database.
        retention: the ages to keep.
        now: the current time, epoch seconds (UTC).

    Returns:
        Rows deleted per table name.

    Raises:
        StorageError: the database failed (nothing is deleted from the failing table on).
    """
    plan = (
        (usage_calls, usage_calls.c.time_us, retention.calls_days, 1_000_000),
        (usage_rollup_1m, usage_rollup_1m.c.bucket, retention.rollup_1m_days, 1),
        (usage_rollup_1h, usage_rollup_1h.c.bucket, retention.rollup_1h_days, 1),
        (usage_rollup_1d, usage_rollup_1d.c.bucket, retention.rollup_1d_days, 1),
        (product_events, product_events.c.time_us, retention.events_days, 1_000_000),
    )
    deleted: dict[str, int] = {}
    try:
        for table, column, days, scale in plan:
            if days is None:
                continue
            cutoff = int((now - days * DAY) * scale)
            async with engine.begin() as conn:
                if table is usage_calls and await conn.run_sync(is_partitioned):
                    gone = await conn.run_sync(drop_days_before, cutoff)
                else:
                    result = await conn.execute(delete(table).where(column < cutoff))
                    gone = max(0, result.rowcount or 0)
            deleted[str(table.name)] = gone
    except DATABASE_ERRORS as exc:
        raise StorageError(f"could not prune usage data: {exc}") from exc
    if any(deleted.values()):
        logger.info("pruned usage data", extra={"deleted": deleted})
    return deleted
