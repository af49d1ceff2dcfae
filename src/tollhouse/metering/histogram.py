"""The latency histogram: fixed log-spaced buckets, mergeable by adding counts.

Bucket ``0`` holds durations below :data:`BOUNDS_US[0] <BOUNDS_US>` (500 µs); bucket
``i`` holds ``[BOUNDS_US[i-1], BOUNDS_US[i])``; the last bucket everything from 262 s up.
Bounds grow by √2, so an estimated percentile lies in the same bucket as the exact
(nearest-rank) one — within 41 %, typically far less — and never outside the observed
min and max, which are exact.

Because the bounds are fixed, histograms of any two minutes, hours, keys or engines merge
by adding counts — which is what the rollups do in SQL (``h07 = h07 + excluded.h07``) and
why a percentile over any range is computed from one merged histogram: the answer depends
only on integer sums, so it is identical on SQLite and PostgreSQL.

Everything here is pure: plain integers in, plain numbers out.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence

#: Exclusive upper bounds of the buckets in whole microseconds: 500 µs × √2^k, k = 0…38.
BOUNDS_US: tuple[int, ...] = tuple(round(500 * 2 ** (k / 2)) for k in range(39))
#: Number of buckets (one more than bounds: the last is open-ended).
BUCKETS = len(BOUNDS_US) + 1
#: Column names of the buckets in the rollup tables: ``h00`` … ``h39``.
COLUMNS: tuple[str, ...] = tuple(f"h{i:02d}" for i in range(BUCKETS))


def bucket_of(duration_us: int) -> int:
    """The bucket index of a duration in microseconds (negative durations go to 0)."""
    return bisect_right(BOUNDS_US, duration_us)


def lower_bound(index: int) -> int:
    """The inclusive lower bound of bucket ``index`` in microseconds."""
    return 0 if index == 0 else BOUNDS_US[index - 1]


def upper_bound(index: int) -> int | None:
    """The exclusive upper bound of bucket ``index``; None for the open-ended last one."""
    return BOUNDS_US[index] if index < len(BOUNDS_US) else None


def merge(into: list[int], other: Sequence[int]) -> None:
    """Add ``other``'s counts to ``into`` in place."""
    for i, c in enumerate(other):
        if c:
            into[i] += c


def from_sparse(items: Iterable[tuple[int, int]]) -> list[int]:
    """A dense histogram (one count per bucket) from ``(bucket, count)`` pairs."""
    dense = [0] * BUCKETS
    for i, c in items:
        dense[i] += c
    return dense


def percentile(counts: Sequence[int], q: float, low_us: int, high_us: int) -> float | None:
    """Estimate the ``q``-quantile (0 ≤ q ≤ 1) in microseconds; None when empty.

    Nearest rank: the ``⌈q·n⌉``-th smallest value (at least the first). Its bucket is
    found by cumulative counts, and the bucket's ``c`` values are taken as evenly spread
    over the bucket narrowed to the observed ``[low_us, high_us]`` — except that the
    smallest value of the first bucket is the observed minimum and the largest of the
    last bucket the observed maximum. So q = 0 and q = 1 give the minimum and maximum
    exactly, as does any percentile of one or two values.

    Args:
        counts: one count per bucket (:data:`BUCKETS` long).
        q: the quantile, e.g. 0.5 for the median.
        low_us: the smallest duration in the histogram.
        high_us: the largest duration in the histogram.
    """
    n = sum(counts)
    if n <= 0:
        return None
    rank = max(1, math.ceil(q * n - 1e-9))
    nonzero = [i for i, c in enumerate(counts) if c > 0]
    first, last = nonzero[0], nonzero[-1]
    seen = 0
    for i in nonzero:
        c = counts[i]
        if seen + c < rank:
            seen += c
            continue
        j = rank - seen  # the j-th value (1-based) of this bucket
        if i == first and j == 1:
            return float(low_us)
        if i == last and j == c:
            return float(high_us)
        lo = max(lower_bound(i), low_us)
        up = upper_bound(i)
        hi = high_us if up is None else min(up, high_us)
        return lo + (hi - lo) * ((j - 0.5) / c)
    return float(high_us)
