"""Which rollup table answers a question, given its bucket size and the retention."""

from __future__ import annotations

from sqlalchemy import Table

from tollhouse.metering.retention import Retention
from tollhouse.metering.schema import GRANULARITY, ROLLUP_1D, ROLLUP_1H, ROLLUP_1M, ROLLUPS


def retention_days(retention: Retention, table: Table) -> float | None:
    """Days ``table`` keeps rows under ``retention`` (None: forever)."""
    return {
        ROLLUP_1M: retention.rollup_1m_days,
        ROLLUP_1H: retention.rollup_1h_days,
        ROLLUP_1D: retention.rollup_1d_days,
    }[table.name]


def granularity(table: Table) -> int:
    """Seconds per bucket of a rollup table."""
    return GRANULARITY[table.name]


def rollup_for(
    step: int, start: float, now: float, retention: Retention, end: float | None = None
) -> Table:
    """The rollup to read for buckets of ``step`` seconds from ``start`` on.

    The finest table whose buckets divide ``step`` at most 60 times (so edges of the
    range are as precise as the data allows without scanning minutes for a year) and
    whose retention still covers ``start``; failing that, the finest coarser table that
    does; failing that, the daily one. A coarser table is read instead when the range
    ``[start, end]`` is aligned to its buckets (``00:00:00`` to ``23:59:59``): the answer
    is the same from fewer rows.
    """
    preferred = [t for t in ROLLUPS if step // 60 <= granularity(t) <= step]
    covered: list[Table] = [
        t for t in preferred if retention.covers(retention_days(retention, t), start, now)
    ]
    if covered:
        if end is not None:
            for coarse in covered[::-1]:
                g = granularity(coarse)
                if start % g == 0 and (end + 1) % g == 0:
                    return coarse
        return covered[0]
    for table in ROLLUPS:
        if granularity(table) > step and retention.covers(
            retention_days(retention, table), start, now
        ):
            return table
    return ROLLUPS[-1]
