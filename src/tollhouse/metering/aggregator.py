"""The in-memory side of metering: one :class:`CallRecord` in, per-minute aggregates out.

:meth:`Aggregator.record` is called by the gateway after every response, on the event
loop, so it does no I/O, takes no lock (one event loop, no ``await`` inside) and costs a
tuple, a dict lookup and a few integer additions. The flusher
(:mod:`tollhouse.metering.flusher`) periodically :meth:`~Aggregator.drain`\\ s it and
writes a batch; when the write fails the batch is :meth:`~Aggregator.restore`\\ d.

Memory stays bounded while storage is down: aggregate cells grow with minutes × distinct
dimension sets (small) and are always kept; raw call-log entries are capped, and past the
cap the oldest are dropped and counted in :attr:`Aggregator.dropped_calls`.

What counts as what (documented in docs/analytics.md):

* ``errors`` — status ≥ 500: the API failed;
* ``client_errors`` — 400–499 except 429: the caller sent something wrong;
* ``throttled`` — 429: refused by a rate limit or in-flight cap;
* ``redirects`` — 300–399.

Everything else (status < 300) is a success; with these, every call falls in exactly one
status class (2xx, 3xx, 4xx = client errors + throttled, 5xx = errors).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from tollhouse.metering.histogram import bucket_of
from tollhouse.metering.record import CallRecord

logger = logging.getLogger(__name__)

#: Raw call-log entries kept in memory at most (per process) while storage is away.
DEFAULT_RAW_LOG_CAP = 100_000

#: ``(org, environment, key_id, tenant, endpoint_group, method, route, labels)`` with
#: ``""`` for a missing tenant, group or route and labels as ``(name, value)`` pairs in the
#: order the gateway gave them (the flusher sorts them: not worth a sort per call).
Dimensions = tuple[str, str, str, str, str, str, str, tuple[tuple[str, str], ...]]
#: A cell's key: the minute's start (epoch seconds, UTC) and the dimension set.
CellKey = tuple[int, Dimensions]


class Cell:
    """What is known about the calls of one dimension set in one minute (or coarser)."""

    __slots__ = (
        "client_errors",
        "count",
        "dur_max",
        "dur_min",
        "dur_sum",
        "errors",
        "hist",
        "redirects",
        "throttled",
    )

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.client_errors = 0
        self.throttled = 0
        self.redirects = 0
        self.dur_sum = 0
        self.dur_min = 0
        self.dur_max = 0
        self.hist: dict[int, int] = {}
        """Sparse latency histogram: bucket index → count."""

    def add(self, duration_us: int, status: int) -> None:
        """Account one call."""
        if self.count == 0 or duration_us < self.dur_min:
            self.dur_min = duration_us
        if self.count == 0 or duration_us > self.dur_max:
            self.dur_max = duration_us
        self.count += 1
        self.dur_sum += duration_us
        if status >= 300:
            if status >= 500:
                self.errors += 1
            elif status >= 400:
                if status == 429:
                    self.throttled += 1
                else:
                    self.client_errors += 1
            else:
                self.redirects += 1
        b = bucket_of(duration_us)
        hist = self.hist
        hist[b] = hist.get(b, 0) + 1

    def merge(self, other: Cell) -> None:
        """Add ``other``'s calls to this cell."""
        if other.count == 0:
            return
        if self.count == 0 or other.dur_min < self.dur_min:
            self.dur_min = other.dur_min
        if self.count == 0 or other.dur_max > self.dur_max:
            self.dur_max = other.dur_max
        self.count += other.count
        self.errors += other.errors
        self.client_errors += other.client_errors
        self.throttled += other.throttled
        self.redirects += other.redirects
        self.dur_sum += other.dur_sum
        hist = self.hist
        for b, c in other.hist.items():
            hist[b] = hist.get(b, 0) + c

    def copy(self) -> Cell:
        """An independent copy."""
        out = Cell()
        out.merge(self)
        return out


def duration_us(call: CallRecord) -> int:
    """A call's duration in whole microseconds (the unit every table stores)."""
    return max(0, round(call.duration_ms * 1000))


def dimensions(call: CallRecord) -> Dimensions:
    """The dimension set a call is aggregated under."""
    labels = call.labels
    return (
        call.org,
        call.environment,
        call.key_id,
        call.tenant or "",
        call.endpoint_group or "",
        call.method,
        call.route or "",
        tuple(labels.items()) if labels else (),
    )


@dataclass(slots=True)
class Batch:
    """What one drain took out of the aggregator."""

    cells: dict[CellKey, Cell] = field(default_factory=dict)
    """Per-minute aggregates."""
    calls: list[CallRecord] = field(default_factory=list)
    """Raw call-log entries, oldest first."""
    since: float | None = None
    """Arrival time (epoch s) of the oldest call in this batch; None if empty."""

    @property
    def empty(self) -> bool:
        """True when there is nothing to write."""
        return not self.cells and not self.calls

    @property
    def call_count(self) -> int:
        """Calls aggregated in this batch."""
        return sum(c.count for c in self.cells.values())


class Aggregator:
    """An in-memory :class:`~tollhouse.metering.record.Meter`: aggregates per minute per
    dimension set and keeps a bounded raw call log until the flusher takes them.

    Args:
        raw_log_cap: raw call-log entries kept at most while not flushed; beyond it the
            oldest are dropped and counted (aggregates are never dropped).
        keep_raw_log: False skips the raw call log (``api_calls_log`` stays empty).
    """

    def __init__(self, *, raw_log_cap: int = DEFAULT_RAW_LOG_CAP, keep_raw_log: bool = True):
        if raw_log_cap < 0:
            raise ValueError("raw_log_cap must be >= 0")
        self.raw_log_cap = raw_log_cap
        self.keep_raw_log = keep_raw_log
        self._cells: dict[CellKey, Cell] = {}
        self._calls: deque[CallRecord] = deque()
        self.recorded_calls = 0
        """Calls accounted since start."""
        self.dropped_calls = 0
        """Raw call-log entries dropped (oldest first) because the cap was reached."""
        self.rejected_calls = 0
        """Records that could not be accounted at all (malformed); logged."""
        self.pending_since: float | None = None
        """Arrival time (epoch s) of the oldest call not yet drained; None when none is."""

    def record(self, call: CallRecord) -> None:
        """Account one call: memory only, never blocks, never raises."""
        try:
            us = max(0, round(call.duration_ms * 1000))
            labels = call.labels
            key = (
                int(call.time // 60) * 60,
                (
                    call.org,
                    call.environment,
                    call.key_id,
                    call.tenant or "",
                    call.endpoint_group or "",
                    call.method,
                    call.route or "",
                    tuple(labels.items()) if labels else (),
                ),
            )
            cell = self._cells.get(key)
            if cell is None:
                cell = self._cells[key] = Cell()
            cell.add(us, call.status)
        except Exception:
            # The gateway must never fail a response because of metering.
            self.rejected_calls += 1
            if self.rejected_calls == 1 or self.rejected_calls % 1000 == 0:
                logger.exception("could not meter a call", extra={"rejected": self.rejected_calls})
            return
        self.recorded_calls += 1
        since = self.pending_since
        if since is None or call.time < since:
            self.pending_since = call.time
        if self.keep_raw_log:
            calls = self._calls
            if len(calls) >= self.raw_log_cap:
                if self.raw_log_cap == 0:
                    self.dropped_calls += 1
                    return
                calls.popleft()
                self.dropped_calls += 1
            calls.append(call)

    @property
    def pending_cells(self) -> int:
        """Aggregate cells waiting for the flusher."""
        return len(self._cells)

    @property
    def pending_calls(self) -> int:
        """Raw call-log entries waiting for the flusher."""
        return len(self._calls)

    def drain(self) -> Batch:
        """Take everything recorded so far (the aggregator starts empty again)."""
        batch = Batch(self._cells, list(self._calls), self.pending_since)
        self._cells = {}
        self._calls = deque()
        self.pending_since = None
        return batch

    def restore(self, batch: Batch) -> None:
        """Put back a batch whose write failed, merging it with what arrived since.

        Its raw entries are older than the ones recorded since, so when the cap is
        exceeded they are the first to go.
        """
        if batch.since is not None and (
            self.pending_since is None or batch.since < self.pending_since
        ):
            self.pending_since = batch.since
        cells = self._cells
        for key, cell in batch.cells.items():
            mine = cells.get(key)
            if mine is None:
                cells[key] = cell
            else:
                mine.merge(cell)
        if not batch.calls:
            return
        merged: deque[CallRecord] = deque(batch.calls)
        merged.extend(self._calls)
        overflow = len(merged) - self.raw_log_cap
        for _ in range(max(0, overflow)):
            merged.popleft()
        self.dropped_calls += max(0, overflow)
        self._calls = merged
