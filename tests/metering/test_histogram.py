"""The latency histogram: fixed log buckets, mergeable, percentiles within a bucket."""

from __future__ import annotations

import itertools
import math

from hypothesis import given
from hypothesis import strategies as st

from tollhouse.metering.histogram import (
    BOUNDS_US,
    BUCKETS,
    COLUMNS,
    bucket_of,
    from_sparse,
    lower_bound,
    merge,
    percentile,
    upper_bound,
)


def dense(values: list[int]) -> list[int]:
    out = [0] * BUCKETS
    for v in values:
        out[bucket_of(v)] += 1
    return out


def test_bounds_grow_by_root_two_from_half_a_millisecond_to_262_seconds() -> None:
    assert BOUNDS_US[0] == 500 and BOUNDS_US[-1] == 262_144_000
    assert all(b > a for a, b in itertools.pairwise(BOUNDS_US))
    assert all(1.40 < b / a < 1.43 for a, b in itertools.pairwise(BOUNDS_US))
    assert BUCKETS == len(COLUMNS) == 40 and COLUMNS[0] == "h00" and COLUMNS[-1] == "h39"


def test_each_bound_starts_the_next_bucket() -> None:
    assert bucket_of(0) == 0 and bucket_of(-5) == 0 and bucket_of(499) == 0
    for i, bound in enumerate(BOUNDS_US):
        assert bucket_of(bound - 1) == i
        assert bucket_of(bound) == i + 1
        assert lower_bound(i + 1) == bound and upper_bound(i) == bound
    assert bucket_of(10**12) == BUCKETS - 1 and upper_bound(BUCKETS - 1) is None


def test_percentile_ends_are_the_observed_min_and_max() -> None:
    values = [900, 1_200, 5_000, 80_000, 81_000]
    h = dense(values)
    assert percentile(h, 0.0, min(values), max(values)) == 900
    assert percentile(h, 1.0, min(values), max(values)) == 81_000
    assert percentile([0] * BUCKETS, 0.5, 0, 0) is None
    one = dense([42_000])
    assert percentile(one, 0.5, 42_000, 42_000) == 42_000


@given(st.lists(st.integers(min_value=0, max_value=400_000_000), min_size=1, max_size=300))
def test_percentile_is_within_the_bucket_of_the_exact_one(values: list[int]) -> None:
    h = dense(values)
    ordered = sorted(values)
    for q in (0.25, 0.5, 0.9, 0.99):
        estimate = percentile(h, q, ordered[0], ordered[-1])
        assert estimate is not None
        exact = ordered[max(1, math.ceil(q * len(ordered) - 1e-9)) - 1]
        # Same bucket (or the clamped edge of it) as the nearest-rank value.
        b = bucket_of(exact)
        low, up = lower_bound(b), upper_bound(b)
        assert max(low, ordered[0]) <= estimate <= min(up or ordered[-1], ordered[-1])


@given(
    st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=100),
    st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=100),
)
def test_merged_histograms_answer_like_one_over_all_values(a: list[int], b: list[int]) -> None:
    merged = dense(a)
    merge(merged, dense(b))
    assert merged == dense(a + b)
    sparse = from_sparse((bucket_of(v), 1) for v in a + b)
    assert sparse == merged
    lo, hi = min(a + b), max(a + b)
    for q in (0.5, 0.9):
        assert percentile(merged, q, lo, hi) == percentile(dense(a + b), q, lo, hi)
