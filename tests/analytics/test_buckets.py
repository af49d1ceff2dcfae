"""Time buckets (pure): step choice, UTC alignment, the 100-bucket fold."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from tollhouse.analytics.buckets import (
    DAY,
    HOUR,
    MINUTE,
    bucket_name,
    bucket_starts,
    floor_to,
    fold,
    iso_z,
    metric_step,
    native_step,
)

DAY0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def test_metric_step_is_hourly_up_to_three_days_then_daily() -> None:
    assert metric_step(DAY0, DAY0 + 3 * DAY) == HOUR
    assert metric_step(DAY0, DAY0 + 3 * DAY + 1) == DAY
    assert metric_step(DAY0, DAY0 + 1) == HOUR


def test_native_step_is_the_finest_with_at_most_1500_buckets() -> None:
    steps = (MINUTE, HOUR, DAY)
    assert native_step(1500 * MINUTE, steps) == MINUTE
    assert native_step(1500 * MINUTE + 1, steps) == HOUR
    assert native_step(1500 * HOUR + 1, steps) == DAY
    assert native_step(10**12, steps) == DAY


def test_buckets_are_utc_aligned_even_before_1970() -> None:
    assert floor_to(DAY0 + 3599.9, HOUR) == DAY0
    assert floor_to(-1, DAY) == -DAY
    assert bucket_starts(DAY0 + 1800, DAY0 + 2 * HOUR, HOUR) == [DAY0, DAY0 + HOUR, DAY0 + 2 * HOUR]
    assert bucket_name(DAY0 + 5 * HOUR, HOUR) == "2026-01-01T05:00:00Z"
    assert bucket_name(DAY0 + 5 * HOUR, DAY) == "2026-01-01"
    assert iso_z(0) == "1970-01-01T00:00:00Z"


def test_up_to_100_points_are_returned_as_they_are() -> None:
    points = [DAY0 + i * 60 for i in range(100)]
    series = [dict.fromkeys(points, 2), {points[5]: 7}]
    stamps, counts = fold(points, series, DAY0, DAY0 + DAY)
    assert stamps == [float(p) for p in points]
    assert counts[0] == [2] * 100 and counts[1][5] == 7 and sum(counts[1]) == 7


def test_more_points_fold_into_100_equal_buckets_from_the_start() -> None:
    start, end = DAY0 + 30, DAY0 + 30 + 101 * 60
    points = [DAY0 + i * 60 for i in range(102)]  # the first began before `start`
    stamps, (counts,) = fold(points, [dict.fromkeys(points, 1)], start, end)
    assert len(stamps) == len(counts) == 100
    width = (end - start) / 100
    assert stamps[0] == start and stamps[1] == start + width
    assert sum(counts) == 102
    assert counts[0] >= 2  # the point before the start went to the first bucket
    assert counts[-1] >= 1  # the point at the very end went to the last


@settings(max_examples=40)
@given(
    st.lists(st.integers(min_value=0, max_value=10_000), min_size=101, max_size=400, unique=True),
    st.integers(min_value=1, max_value=1000),
)
def test_folding_keeps_every_count(offsets: list[int], weight: int) -> None:
    points = sorted(DAY0 + o * 60 for o in offsets)
    start, end = DAY0, DAY0 + 10_001 * 60
    stamps, (counts,) = fold(points, [dict.fromkeys(points, weight)], start, end)
    assert len(stamps) == 100 and sum(counts) == weight * len(points)
    assert all(b > a for a, b in itertools.pairwise(stamps))
