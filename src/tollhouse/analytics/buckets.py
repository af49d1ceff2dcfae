"""Time buckets, pure: granularity choice, alignment, zero-filling and the 100-bucket fold.

Everything is UTC epoch seconds; buckets are aligned to multiples of their step since the
epoch (minutes, hours, UTC midnights).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

MINUTE = 60
HOUR = 3600
DAY = 86400

#: The metrics catalogue shape (docs/api-shapes.md): ranges of up to 3 days are answered in
#: hourly buckets, longer ones daily.
HOURLY_UP_TO = 3 * DAY
#: The call-counts shape (docs/api-shapes.md): more points than this are folded into this
#: many buckets.
FOLD_TO = 100
#: Call counts: the finest rollup with at most this many buckets over the range is read.
MAX_NATIVE_POINTS = 1500


def metric_step(start: float, end: float) -> int:
    """The metrics catalogue shape's bucket size for a range: hourly up to 3 days, daily beyond."""
    return HOUR if end - start <= HOURLY_UP_TO else DAY


def floor_to(ts: float, step: int) -> int:
    """The start of the ``step``-second bucket holding ``ts`` (works before 1970 too)."""
    return math.floor(ts / step) * step


def bucket_starts(start: float, end: float, step: int) -> list[int]:
    """Every bucket start from the one holding ``start`` to the one holding ``end``."""
    first, last = floor_to(start, step), floor_to(end, step)
    return list(range(first, last + 1, step))


def iso_z(ts: float) -> str:
    """Epoch seconds → ``2026-01-15T10:00:00Z`` (seconds precision, UTC)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def bucket_name(ts: float, step: int) -> str:
    """A bar's name: ``2026-01-15`` for daily buckets, ``2026-01-15T10:00:00Z`` otherwise."""
    if step >= DAY:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")
    return iso_z(ts)


def native_step(span: float, steps: Sequence[int]) -> int:
    """The finest of ``steps`` giving at most :data:`MAX_NATIVE_POINTS` buckets over
    ``span`` seconds (the coarsest when none does)."""
    for step in steps:
        if span / step <= MAX_NATIVE_POINTS:
            return step
    return steps[-1]


def fold(
    points: Sequence[int],
    series: Sequence[dict[int, int]],
    start: float,
    end: float,
    size: int = FOLD_TO,
) -> tuple[list[float], list[list[int]]]:
    """The call-counts shape: the points with data, or ``size`` equal buckets when more.

    Args:
        points: sorted bucket starts (epoch s) holding data in any series.
        series: per series, bucket start → count.
        start: the range's start (epoch s).
        end: the range's end (epoch s).
        size: how many buckets more than ``size`` points are folded into.

    Returns:
        ``timestamps`` and, per series, ``counts`` aligned with them. Up to ``size``
        points are returned as they are; more are folded into ``size`` buckets of width
        ``(end - start) / size`` starting at ``start`` (bucket ``i`` starts at
        ``start + i·width``), each summing the points whose bucket starts in it — a point
        whose native bucket began before ``start`` goes to the first.
    """
    if len(points) <= size:
        stamps = [float(p) for p in points]
        return stamps, [[s.get(p, 0) for p in points] for s in series]
    width = (end - start) / size
    stamps = [start + i * width for i in range(size)]
    slot: dict[int, int] = {}
    for p in points:
        i = 0 if width <= 0 else int((max(p, start) - start) // width)
        slot[p] = min(max(i, 0), size - 1)
    folded: list[list[int]] = []
    for s in series:
        counts = [0] * size
        for p, c in s.items():
            at = slot.get(p)
            if at is not None:
                counts[at] += c
        folded.append(counts)
    return stamps, folded
