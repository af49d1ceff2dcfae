"""Pure decision maths: ``(state, now, params) → (allowed, new_state, remaining, reset, retry)``.

No I/O and no clock: ``now`` is passed in (seconds since the epoch, float). The memory store
calls these functions; the Redis Lua script implements the same formulas and a property test
drives both with the same sequences.

Fixed window
    Windows are aligned to the epoch (``start = now - now % window``), so every
    caller of a bucket shares one ``resetAt``, as the partner rate-limit status and scoring
    API shapes show (docs/api-shapes.md). State is ``(window_end, used)``: the end names
    the window and tells when the state expires.
    The limit is not part of the state, so a changed limit applies to the running window
    at once.

GCRA (generic cell rate algorithm)
    State is the theoretical arrival time ``tat`` (integer microseconds). The emission
    interval is ``T = window / limit`` (whole microseconds, rounded down); a request of
    cost ``c`` is allowed when ``max(tat, now) + c·T − now ≤ window``, i.e. a full burst
    of ``limit`` is allowed from an idle bucket, refilled smoothly at one unit every ``T``
    seconds.
"""

from __future__ import annotations

from typing import NamedTuple

#: GCRA keeps time in integer microseconds.
MICROS = 1_000_000


class Outcome(NamedTuple):
    """What one bucket says about one request."""

    allowed: bool
    """Whether the request fits in this bucket."""
    state: tuple[float, int] | int | None
    """The bucket's state after the request (unchanged when not allowed)."""
    remaining: int
    """Cost units still available after this request (before it, when not allowed)."""
    reset_at: float
    """Epoch seconds when the bucket is whole again (fixed window: the window's end)."""
    retry_after: float
    """Seconds until a request of this cost could be allowed (0 when allowed)."""


def window_start(now: float, window: float) -> float:
    """Start of the epoch-aligned window containing ``now``.

    ``now - now % window`` rather than ``floor(now / window) * window``: float ``%`` is
    exact, while the division can round up across a window boundary.
    """
    return now - now % window


def fixed_window(
    state: tuple[float, int] | None, now: float, limit: int, window: float, cost: int = 1
) -> Outcome:
    """Decide one request against a fixed-window bucket.

    Args:
        state: ``(window_end, used)`` as last stored, or None for a fresh bucket.
        now: the current time, epoch seconds.
        limit: cost units allowed per window.
        window: window length in seconds.
        cost: units this request takes.

    Returns:
        The :class:`Outcome`; its ``state`` is what to store (the old state when denied).
    """
    reset_at = window_start(now, window) + window
    used = state[1] if state is not None and state[0] == reset_at else 0
    if used + cost <= limit:
        used += cost
        return Outcome(True, (reset_at, used), limit - used, reset_at, 0.0)
    return Outcome(False, state, max(0, limit - used), reset_at, reset_at - now)


def fixed_window_peek(
    state: tuple[float, int] | None, now: float, limit: int, window: float
) -> tuple[int, float, bool]:
    """``(used, reset_at, touched)`` of a fixed-window bucket without consuming anything.

    ``touched`` is False when no request was counted in the current window.
    """
    reset_at = window_start(now, window) + window
    if state is not None and state[0] == reset_at:
        return state[1], reset_at, True
    return 0, reset_at, False


def gcra_interval(limit: int, window: float) -> int:
    """Emission interval in whole microseconds, rounded down so a full burst always fits."""
    return max(1, round(window * MICROS) // limit)


def gcra(state: int | None, now: float, limit: int, window: float, cost: int = 1) -> Outcome:
    """Decide one request against a GCRA bucket.

    Times are integer microseconds inside, so sums of intervals are exact (also in the
    Redis script, whose numbers are doubles: integers up to 2**53 µs are exact).

    Args:
        state: the stored theoretical arrival time in µs, or None for an idle bucket.
        now: the current time, epoch seconds.
        limit: burst size and units per window.
        window: seconds in which ``limit`` units refill.
        cost: units this request takes.

    Returns:
        The :class:`Outcome`; its ``state`` is the new ``tat`` (the old one when denied).
    """
    interval = gcra_interval(limit, window)
    window_us = interval * limit
    now_us = int(now * MICROS)
    tat = now_us if state is None or state < now_us else state
    new_tat = tat + cost * interval
    if new_tat - now_us <= window_us:
        remaining = (window_us - (new_tat - now_us)) // interval
        return Outcome(True, new_tat, remaining, new_tat / MICROS, 0.0)
    remaining = max(0, (window_us - (tat - now_us)) // interval)
    return Outcome(False, state, remaining, tat / MICROS, (new_tat - window_us - now_us) / MICROS)


def gcra_peek(state: int | None, now: float, limit: int, window: float) -> tuple[int, float, bool]:
    """``(used, reset_at, touched)`` of a GCRA bucket without consuming anything.

    ``used`` is the number of units not yet refilled; ``reset_at`` is when the bucket is
    whole again; ``touched`` is False when the bucket is idle (whole).
    """
    now_us = int(now * MICROS)
    if state is None or state <= now_us:
        return 0, now, False
    interval = gcra_interval(limit, window)
    used = min(limit, -(-(state - now_us) // interval))
    return used, state / MICROS, True
