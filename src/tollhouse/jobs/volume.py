"""``GET /v1/analytics/scoring-volume`` (the scoring-volume shape, docs/api-shapes.md):
finished jobs per time bucket.

Pure: the window and bucket maths, the response shape, and what a finish adds to the
finished-jobs rollup. The counts come from :meth:`tollhouse.jobs.queue.JobQueue.volume`,
which reads the rollup (``job_volume``): the transaction that finishes jobs adds them to
the row of the minute and of the hour they finished in (:func:`tallies`). ``1h`` reads
minute rows, ``24h`` hour rows, ``7d``/``30d``/``90d`` hour rows summed per day
(:func:`rollup_span`); the jobs table is never scanned, and pruning jobs leaves the counts.

The period ends now; it starts ``timeRange`` earlier, floored to the granularity so that
every bucket is whole-aligned (``1h`` → minutes, ``24h`` → hours, ``7d``/``30d``/``90d`` →
days, UTC). Every bucket of the period is listed, with zeros where nothing finished.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from tollhouse.errors import ValidationFailed
from tollhouse.jobs.model import iso

#: timeRange → (lookback, granularity), exactly as the scoring-volume shape defines them.
TIME_RANGES: Final[dict[str, tuple[timedelta, str]]] = {
    "1h": (timedelta(hours=1), "minute"),
    "24h": (timedelta(hours=24), "hour"),
    "7d": (timedelta(days=7), "day"),
    "30d": (timedelta(days=30), "day"),
    "90d": (timedelta(days=90), "day"),
}
STEPS: Final[dict[str, timedelta]] = {
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
}
#: granularity → the rollup span it is summed from.
ROLLUP_SPANS: Final[dict[str, str]] = {"minute": "minute", "hour": "hour", "day": "hour"}
#: How long rollup rows are kept per span: past it no range reads them (``1h`` starts at
#: most 61 minutes back, ``90d`` at most 91 days; a day's margin on top).
ROLLUP_KEEP: Final[dict[str, timedelta]] = {
    "minute": timedelta(days=1),
    "hour": timedelta(days=92),
}
#: The scoring-volume shape lets responses be cached for 60 seconds.
CACHE_CONTROL = "private, max-age=60"


def floor_to(moment: datetime, granularity: str) -> datetime:
    """The start of the bucket ``moment`` falls in (UTC)."""
    m = moment.astimezone(UTC)
    if granularity == "minute":
        return m.replace(second=0, microsecond=0)
    if granularity == "hour":
        return m.replace(minute=0, second=0, microsecond=0)
    if granularity == "day":
        return m.replace(hour=0, minute=0, second=0, microsecond=0)
    raise ValueError(f"unknown granularity {granularity!r}")


def check_time_range(raw: str | None) -> str:
    """``raw`` if it is one of :data:`TIME_RANGES` — the one check of a ``timeRange``
    query parameter (scoring volume, fair use).

    Raises:
        ValidationFailed: missing or not one of them (422, the error envelope).
    """
    if raw not in TIME_RANGES:
        choices = ", ".join(TIME_RANGES)
        problem = "is required" if not raw else f"must be one of {choices}"
        raise ValidationFailed(f'query parameter "timeRange" {problem} ({choices})')
    return raw


def window(time_range: str, now: datetime) -> tuple[datetime, datetime, str]:
    """``(start, end, granularity)`` of a ``timeRange``.

    Raises:
        KeyError: not one of :data:`TIME_RANGES`.
    """
    lookback, granularity = TIME_RANGES[time_range]
    return floor_to(now - lookback, granularity), now, granularity


def buckets(start: datetime, end: datetime, granularity: str) -> list[datetime]:
    """Every bucket start from ``start`` up to the bucket holding ``end``."""
    step = STEPS[granularity]
    out = []
    at = start
    while at <= end:
        out.append(at)
        at += step
    return out


def volume_body(
    start: datetime,
    end: datetime,
    granularity: str,
    counts: list[tuple[datetime, int, int]],
) -> dict[str, Any]:
    """The scoring-volume shape's body: ``period``, ``granularity``, and ``data[]`` with
    ``timestamp``, ``total`` (= completed + failed), ``completed``, ``failed``."""
    by_bucket = {floor_to(b, granularity): (c, f) for b, c, f in counts}
    data = []
    for b in buckets(start, end, granularity):
        completed, failed = by_bucket.get(b, (0, 0))
        data.append(
            {
                "timestamp": iso(b),
                "total": completed + failed,
                "completed": completed,
                "failed": failed,
            }
        )
    return {
        "period": {"start": iso(start), "end": iso(end)},
        "granularity": granularity,
        "data": data,
    }


def rollup_span(granularity: str) -> str:
    """The rollup span a granularity's buckets are summed from."""
    return ROLLUP_SPANS[granularity]


def tallies(
    finished: Iterable[tuple[str, str, str, datetime]],
) -> list[dict[str, Any]]:
    """What finishing jobs adds to the rollup: one row per scope, span and bucket, in key
    order (concurrent finishers lock rows in the same order).

    Args:
        finished: ``(org, environment, state, finished_at)`` per job that reached a final
            state (``completed``, ``failed`` or ``dead``).

    Returns:
        Rows with ``v_org``, ``v_env``, ``v_span``, ``v_bucket``, ``v_completed``,
        ``v_failed`` (the upsert's parameters).
    """
    counts: dict[tuple[str, str, str, datetime], list[int]] = {}
    for org, environment, state, at in finished:
        for span in ROLLUP_KEEP:
            row = counts.setdefault((org, environment, span, floor_to(at, span)), [0, 0])
            row[0 if state == "completed" else 1] += 1
    return [
        {
            "v_org": org,
            "v_env": environment,
            "v_span": span,
            "v_bucket": bucket,
            "v_completed": completed,
            "v_failed": failed,
        }
        for (org, environment, span, bucket), (completed, failed) in sorted(counts.items())
    ]
