"""The queue's pure maths: wait estimates, moving averages, slot sharing, backoff.

Plain values in, plain values out; the SQL queue calls these inside its transactions.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from datetime import datetime


def estimate_wait(position: int, running: int, cap: int, processing_seconds: float) -> int:
    """Seconds until a queued job starts: ``(position ÷ concurrency) × time``, the scoring API
    shape's estimate (docs/api-shapes.md).

    The shape states the formula for a system whose workers are all busy. When ``running``
    is below ``cap`` the free slots take the first jobs at once, so only the jobs beyond
    them wait: ``max(0, position - free) ÷ cap × time``. With every slot busy this is the
    shape's formula exactly (position 251, cap 500, 30 s → 15 s).

    Args:
        position: 1-based place in the org's queue.
        running: the org's jobs running now.
        cap: the org's concurrency.
        processing_seconds: mean processing time of one job.

    Returns:
        Whole seconds, rounded to the nearest (the shape rounds 15.06 to 15 seconds).
    """
    free = max(0, cap - running)
    waiting = max(0, position - free)
    if waiting == 0:
        return 0
    return math.floor(waiting / max(1, cap) * processing_seconds + 0.5)


def place_position(
    place: int | None, queued: int, enqueued: int, claimed_through: int
) -> int | None:
    """A queued job's 1-based position from its queue's counters, without counting.

    Jobs leave ``queued`` only by a claim, and a claim takes a queue's jobs in order
    (its places), so every job placed above ``claimed_through`` (the highest place a
    claim took) is still queued. For such a job the ``enqueued − place`` jobs placed
    after it are all among the ``queued``, and every other queued job is ahead of it:
    its position is ``queued − (enqueued − place)``. A job placed at or below
    ``claimed_through`` went back to the queue after a claim (a retry, a release, a
    reaped lease); jobs after it may be running, so only counting answers (None).

    Args:
        place: the job's place (None for a job no process numbered: count it).
        queued: the queue's queued counter.
        enqueued: the last place the queue gave.
        claimed_through: the highest place a claim of the queue took.

    Returns:
        The position, or None when the queued jobs ahead must be counted.
    """
    if place is None or place <= claimed_through:
        return None
    return queued - (enqueued - place)


def any_worker_running(last_seen: datetime | None, now: datetime, within: float) -> bool:
    """True when a worker recorded itself at most ``within`` seconds before ``now``
    (``last_seen`` is the latest record of any worker, None when there is none).

    A wait estimate assumes something runs the jobs: without a running worker the
    answer is "unknown" (``estimatedWaitSeconds: null``), not 0.
    """
    return last_seen is not None and (now - last_seen).total_seconds() <= within


def quoted_wait(
    position: int,
    running: int,
    cap: int,
    processing_seconds: float,
    workers: bool,
) -> int | None:
    """:func:`estimate_wait` when ``workers`` run (:func:`any_worker_running`), else None."""
    return estimate_wait(position, running, cap, processing_seconds) if workers else None


def moving_average(previous: float | None, sample: float, alpha: float) -> float:
    """Exponentially weighted moving average; the first sample is taken as it is."""
    if previous is None:
        return sample
    return previous + alpha * (sample - previous)


def ewma_terms(samples: Sequence[float], alpha: float) -> tuple[float, float]:
    """Folding ``samples`` into a moving average in one step: ``(decay, offset)`` such
    that applying :func:`moving_average` to each sample in turn from ``previous`` gives
    ``previous × decay + offset`` (lets SQL update the average without reading it)."""
    decay, offset = 1.0, 0.0
    for sample in samples:
        decay *= 1 - alpha
        offset = offset * (1 - alpha) + alpha * sample
    return decay, offset


def share_slots(free: int, headroom: Sequence[int]) -> list[int]:
    """Deal ``free`` slots round robin to orgs, each at most its ``headroom``.

    Orgs come in the order they should be served (least recently served first); the
    first ones get the odd slots. ``share_slots(5, [1, 10, 10]) == [1, 2, 2]``.
    """
    shares = [0] * len(headroom)
    left = free
    while left > 0:
        dealt = False
        for i, room in enumerate(headroom):
            if left == 0:
                break
            if shares[i] < room:
                shares[i] += 1
                left -= 1
                dealt = True
        if not dealt:
            break
    return shares


def retry_delay(
    attempts: int,
    base: float,
    cap: float,
    rng: random.Random | None = None,
) -> float:
    """Backoff before the next attempt after ``attempts`` attempts: exponential with
    "equal jitter" (half fixed, half random), so retries of jobs that failed together
    spread out without ever retrying at once.

    ``attempts=1`` → between ``base/2`` and ``base``; doubling per attempt up to ``cap``.
    """
    ceiling = min(cap, base * 2.0 ** max(0, attempts - 1))
    r = rng.random() if rng is not None else random.random()
    return ceiling / 2 + ceiling / 2 * r
