"""The pure decision maths, driven by Hypothesis with a fake clock (no sleeping)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from tollhouse.limits.maths import (
    MICROS,
    fixed_window,
    fixed_window_peek,
    gcra,
    gcra_interval,
    gcra_peek,
    window_start,
)

limits_ = st.integers(min_value=1, max_value=50)
windows = st.sampled_from([1.0, 2.0, 60.0, 3600.0])
costs = st.integers(min_value=1, max_value=5)
# Time steps between calls: many tiny ones, some long jumps across windows.
steps = st.lists(
    st.one_of(st.floats(0, 0.2), st.floats(0, 5.0), st.just(0.0)), min_size=1, max_size=200
)
START = 1_700_000_000.0


@settings(max_examples=300)
@given(limit=limits_, window=windows, cost=costs, gaps=steps)
def test_fixed_window_never_admits_more_than_the_limit_per_window(
    limit: int, window: float, cost: int, gaps: list[float]
) -> None:
    state = None
    now = START
    admitted: dict[float, int] = {}
    for gap in gaps:
        now += gap
        out = fixed_window(state, now, limit, window, cost)
        start = window_start(now, window)
        if out.allowed:
            admitted[start] = admitted.get(start, 0) + cost
            state = out.state
            assert out.retry_after == 0
        else:
            # A rejected call costs nothing: the state handed back is the one given.
            assert out.state is state
            assert 0 < out.retry_after <= window
            assert math.isclose(now + out.retry_after, start + window)
        assert out.reset_at == start + window
        assert 0 <= out.remaining <= limit
    assert all(v <= limit for v in admitted.values())


@given(limit=limits_, window=windows, cost=costs, calls=st.integers(1, 100))
def test_fixed_window_admits_exactly_the_limit_in_one_instant(
    limit: int, window: float, cost: int, calls: int
) -> None:
    state = None
    allowed = 0
    for _ in range(calls):
        out = fixed_window(state, START, limit, window, cost)
        if out.allowed:
            allowed += 1
            state = out.state
    assert allowed == min(calls, limit // cost)
    used, _, touched = fixed_window_peek(state, START, limit, window)
    assert used == allowed * cost
    assert touched == (allowed > 0)


def test_fixed_window_limit_change_applies_to_the_running_window() -> None:
    out = fixed_window(None, START, 10, 60)
    for _ in range(4):
        out = fixed_window(out.state, START, 10, 60)  # type: ignore[arg-type]
    assert out.remaining == 5
    lowered = fixed_window(out.state, START, 5, 60)  # type: ignore[arg-type]
    assert not lowered.allowed
    assert lowered.remaining == 0


@settings(max_examples=300)
@given(limit=limits_, window=windows, cost=costs, gaps=steps)
def test_gcra_admits_at_most_burst_plus_rate(
    limit: int, window: float, cost: int, gaps: list[float]
) -> None:
    interval = gcra_interval(limit, window)
    state = None
    now = START
    times: list[int] = []
    for gap in gaps:
        now += gap
        out = gcra(state, now, limit, window, cost)
        if out.allowed:
            times.extend([int(now * MICROS)] * cost)
            state = out.state
            assert out.retry_after == 0
        else:
            assert out.state is state
            assert out.retry_after > 0
            if cost > limit:
                continue  # can never fit; nothing to wait for
            # Waiting retry_after is enough.
            again = gcra(state, now + out.retry_after + 1e-5, limit, window, cost)
            assert again.allowed
        assert 0 <= out.remaining <= limit
    # In any interval [a, b], GCRA admits at most the burst plus what refilled meanwhile.
    for i, a in enumerate(times):
        for j in range(i, len(times)):
            span = times[j] - a
            assert j - i + 1 <= limit + span // interval


@given(limit=limits_, window=windows)
def test_gcra_burst_from_idle_is_the_limit(limit: int, window: float) -> None:
    state = None
    allowed = 0
    for _ in range(limit * 2):
        out = gcra(state, START, limit, window)
        if out.allowed:
            allowed += 1
            state = out.state
    assert allowed == limit
    used, reset_at, touched = gcra_peek(state, START, limit, window)
    assert (used, touched) == (limit, True)
    assert math.isclose(reset_at, START + window)
    # After one interval exactly one more unit is available.
    assert gcra(state, START + window / limit, limit, window).allowed
    assert gcra_peek(None, START, limit, window) == (0, START, False)
