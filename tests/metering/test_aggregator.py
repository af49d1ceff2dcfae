"""The in-memory aggregator: per-minute cells, status classes, a bounded raw log."""

from __future__ import annotations

from typing import Any

import pytest

from tollhouse.metering.aggregator import INBOX, Aggregator, Batch, Cell, dimensions
from tollhouse.metering.histogram import bucket_of
from tollhouse.metering.record import CallRecord

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def call(t: float = T0, **kw: Any) -> CallRecord:
    fields: dict[str, Any] = {
        "time": t,
        "org": "acme",
        "environment": "SANDBOX",
        "key_id": "key_a",
        "tenant": None,
        "endpoint_group": "SCORING",
        "method": "POST",
        "route": "/v1/score",
        "status": 200,
        "duration_ms": 10.0,
        "labels": {},
    }
    fields.update(kw)
    return CallRecord(**fields)


def logged_times(batch: Batch) -> list[float]:
    """Arrival times (epoch s) of a batch's raw call-log entries, in order."""
    return [t / 1_000_000 for t, _, _ in batch.log]


def test_calls_of_one_minute_and_dimension_set_share_a_cell() -> None:
    agg = Aggregator()
    for i, status in enumerate((200, 201, 404, 429, 500, 503, 302, 304, 399)):
        agg.record(call(T0 + i, status=status, duration_ms=1.0 + i))
    agg.record(call(T0 + 60, duration_ms=3))  # next minute
    agg.record(call(T0 + 1, key_id="key_b"))  # other key
    batch = agg.drain()
    assert len(batch.cells) == 3 and batch.call_count == 11
    cell = batch.cells[(int(T0), dimensions(call()))]
    counters = (cell.count, cell.errors, cell.client_errors, cell.throttled, cell.redirects)
    assert counters == (9, 2, 1, 1, 3)
    assert (cell.dur_min, cell.dur_max, cell.dur_sum) == (1000, 9000, 45000)
    assert sum(cell.hist.values()) == 9 and cell.hist[bucket_of(1000)] == 1
    assert agg.pending_cells == 0 and agg.pending_calls == 0
    assert logged_times(batch)[:2] == [T0, T0 + 1]


def test_minutes_are_utc_aligned_including_before_1970() -> None:
    agg = Aggregator()
    agg.record(call(T0 + 59.999))
    agg.record(call(-30.5))
    minutes = sorted(k[0] for k in agg.drain().cells)
    assert minutes == [-60, int(T0)]


def test_raw_log_is_capped_oldest_first_and_counted_but_counts_are_kept() -> None:
    agg = Aggregator(raw_log_cap=3)
    for i in range(5):
        agg.record(call(T0 + i))
    assert agg.pending_calls == 3 and agg.dropped_calls == 2
    batch = agg.drain()
    assert logged_times(batch) == [T0 + 2, T0 + 3, T0 + 4]
    assert batch.call_count == 5


def test_restore_merges_and_drops_the_oldest_beyond_the_cap() -> None:
    agg = Aggregator(raw_log_cap=4)
    for i in range(3):
        agg.record(call(T0 + i))
    failed = agg.drain()
    for i in range(3, 6):
        agg.record(call(T0 + i))
    agg.restore(failed)
    assert agg.dropped_calls == 2
    batch = agg.drain()
    assert logged_times(batch) == [T0 + 2, T0 + 3, T0 + 4, T0 + 5]
    assert batch.call_count == 6
    (cell,) = batch.cells.values()
    assert cell.dur_min == cell.dur_max == 10_000


def test_raw_log_can_be_switched_off() -> None:
    for agg in (Aggregator(keep_raw_log=False), Aggregator(raw_log_cap=0)):
        agg.record(call())
        batch = agg.drain()
        assert batch.log == [] and batch.call_count == 1


def test_a_malformed_record_is_counted_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    agg = Aggregator()
    agg.record(call(duration_ms="slow"))
    agg.record(call())
    assert agg.rejected_calls == 1 and agg.recorded_calls == 1
    assert "could not meter a call" in caplog.text
    assert Batch().empty and not agg.drain().empty


def test_negative_durations_count_as_zero() -> None:
    agg = Aggregator()
    agg.record(call(duration_ms=-3))
    (cell,) = agg.drain().cells.values()
    assert cell.dur_min == 0 and cell.hist == {0: 1}


def test_aggregator_is_a_meter() -> None:
    from tollhouse.metering.record import Meter

    meter: Meter = Aggregator()
    meter.record(call())


def cell_state(cell: Cell) -> tuple[Any, ...]:
    return (
        cell.count,
        cell.errors,
        cell.client_errors,
        cell.throttled,
        cell.redirects,
        cell.dur_sum,
        cell.dur_min,
        cell.dur_max,
        dict(sorted(cell.hist.items())),
    )


def test_calls_aggregated_in_passes_count_as_one_call_at_a_time() -> None:
    # Several inbox passes, a malformed record inside one, a cap that drops entries
    # across passes: the same as draining after every single call.
    statuses = (200, 201, 302, 400, 404, 429, 500, 503)
    calls = [
        call(
            T0 + i * 0.5,
            key_id=f"key_{i % 3}",
            status=statuses[i % len(statuses)],
            duration_ms=(i % 41) * 0.9,
            labels={"db": "main"} if i % 2 else {},
        )
        for i in range(3 * INBOX + 5)
    ]
    cap = 2 * INBOX
    agg = Aggregator(raw_log_cap=cap)
    for i, c in enumerate(calls):
        agg.record(c)
        if i == INBOX + 7:
            agg.record(call(duration_ms="slow"))
    n = len(calls)
    assert agg.recorded_calls == n and agg.rejected_calls == 1
    assert agg.pending_calls == cap and agg.dropped_calls == n - cap
    assert agg.pending_since == T0
    batch = agg.drain()
    assert logged_times(batch) == [c.time for c in calls[n - cap :]]
    assert batch.since == T0 and batch.call_count == n

    one_at_a_time: dict[Any, Cell] = {}
    single = Aggregator()
    for c in calls:
        single.record(c)
        for key, cell in single.drain().cells.items():
            one_at_a_time.setdefault(key, Cell()).merge(cell)
    assert {k: cell_state(c) for k, c in batch.cells.items()} == {
        k: cell_state(c) for k, c in one_at_a_time.items()
    }
    # Each raw entry points at the cell (dimension set, minute) it was counted in.
    for (t_us, status, us), cell in zip(batch.log, batch.log_cells, strict=True):
        original = calls[[c.time for c in calls].index(t_us / 1_000_000)]
        assert cell.dims == dimensions(original) and status == original.status
        assert us == round(original.duration_ms * 1000)
        assert batch.cells[(int(t_us // 60_000_000) * 60, dimensions(original))] is cell
