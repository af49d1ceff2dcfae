"""The in-memory side of metering: one :class:`CallRecord` in, per-minute aggregates out.

:meth:`Aggregator.record` is called by the gateway after every response, on the event
loop, so it does no I/O, takes no lock (one event loop, no ``await`` inside) and only
appends the record to an inbox. Every :data:`INBOX` calls, and before anything reads the
aggregator, :meth:`Aggregator.absorb` aggregates the inbox in one pass: a tuple, a dict
lookup and a few integer additions per call, with everything in local variables. The
raw call-log entry it keeps is as small: the call's own three integers (arrival µs,
status, duration µs) and the cell it was counted in, whose dimension set the flusher
turns into the row's other columns once per dimension set, not once per call. The
flusher (:mod:`tollhouse.metering.flusher`) periodically :meth:`~Aggregator.drain`\\ s
it and writes a batch; when the write fails the batch is :meth:`~Aggregator.restore`\\ d.

Memory stays bounded while storage is down: aggregate cells grow with minutes × distinct
dimension sets (small) and are always kept; raw call-log entries are capped, and past the
cap the oldest are dropped and counted in :attr:`Aggregator.dropped_calls`; the inbox
holds fewer than :data:`INBOX` records.

What counts as what (documented in docs/analytics.md):

* ``errors`` — status ≥ 500: the API failed;
* ``client_errors`` — 400–499 except 429: the caller sent something wrong;
* ``throttled`` — 429: refused by a rate limit or in-flight cap;
* ``redirects`` — 300–399;
* ``unknown`` — below 100: status 0, a call decided in forward-auth mode whose access-log
  line never came (:mod:`tollhouse.http.access_log`).

Everything else (100–299) is a success; with these, every call falls in exactly one
status class (2xx, 3xx, 4xx = client errors + throttled, 5xx = errors, unknown). When
the line of a call counted as unknown comes late, :meth:`Aggregator.reclassify` moves it
to its class: a cell of corrections (count 0, unknown −1, the class +1, the latency
moved), added to the rollups like any other, and the raw call-log row's status and
duration set (:attr:`Batch.fixes`).
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tollhouse.metering.histogram import BOUNDS_US
from tollhouse.metering.record import CallRecord

logger = logging.getLogger(__name__)

#: Raw call-log entries kept in memory at most (per process) while storage is away.
DEFAULT_RAW_LOG_CAP = 100_000
#: Calls :meth:`Aggregator.record` holds before aggregating them in one pass: big enough
#: for the pass to pay off, small enough that it holds the event loop about a millisecond.
INBOX = 1024

#: ``(org, environment, key_id, tenant, endpoint_group, method, route, labels)`` with
#: ``""`` for a missing tenant, group or route and labels as ``(name, value)`` pairs in the
#: order the gateway gave them (the flusher sorts them: not worth a sort per call).
Dimensions = tuple[str, str, str, str, str, str, str, tuple[tuple[str, str], ...]]
#: A cell's key: the minute's start (epoch seconds, UTC) and the dimension set.
CellKey = tuple[int, Dimensions]
#: An aggregator's own cell key: ``(minute, *dimensions)`` as one flat tuple.
FlatKey = tuple[int, str, str, str, str, str, str, str, tuple[tuple[str, str], ...]]
#: What a raw call-log entry holds of its own: ``(time_us, status, duration_us)``; the
#: rest of the row is its cell's dimension set.
LogValues = tuple[int, int, int]
#: A raw call-log row to correct (a late access-log line): ``(dims, time_us,
#: old_duration_us, status, duration_us)`` — the row of that dimension set and time with
#: status unknown and the old duration gets the status and duration.
LogFix = tuple[Dimensions, int, int, int, int]
#: Statuses below this are "unknown" (status 0: no access-log line); HTTP's start at 100.
UNKNOWN_BELOW = 100


def status_kind(status: int) -> int:
    """A status's class as :meth:`Aggregator.absorb` counts it: 0 success (100–299),
    1 redirect, 2 client error, 3 throttled (429), 4 error (≥ 500), 5 unknown (< 100)."""
    if status < 300:
        return 0 if status >= UNKNOWN_BELOW else 5
    if status >= 500:
        return 4
    if status < 400:
        return 1
    return 3 if status == 429 else 2


class Cell:
    """What is known about the calls of one dimension set in one minute (or coarser).

    Args:
        dims: the dimension set, when the cell is an aggregator's (the flusher reads the
            raw call-log rows' dimension columns from it).
    """

    __slots__ = (
        "client_errors",
        "count",
        "dims",
        "dur_max",
        "dur_min",
        "dur_sum",
        "errors",
        "hist",
        "redirects",
        "request_id",
        "throttled",
        "unknown",
    )

    def __init__(self, dims: Dimensions | None = None) -> None:
        self.dims = dims
        self.request_id = ""
        """The request id of the first call counted here: names the cell's calls if the
        database refuses them (set once per cell, not per call)."""
        self.count = 0
        self.errors = 0
        self.client_errors = 0
        self.throttled = 0
        self.redirects = 0
        self.unknown = 0
        """Calls with status unknown; negative in a cell of corrections (calls moved out
        of it by late access-log lines, :meth:`Aggregator.reclassify`)."""
        self.dur_sum = 0
        self.dur_min = 0
        self.dur_max = 0
        self.hist: dict[int, int] = {}
        """Sparse latency histogram: bucket index → count."""

    def merge(self, other: Cell) -> None:
        """Add ``other``'s calls (or corrections) to this cell."""
        if other.count == 0 and other.unknown == 0:
            return
        if not self.request_id:
            self.request_id = other.request_id
        # A cell of corrections has count 0 and unknown < 0: its min and max are the
        # moved calls' durations.
        blank = self.count == 0 and self.unknown == 0
        if blank or other.dur_min < self.dur_min:
            self.dur_min = other.dur_min
        if blank or other.dur_max > self.dur_max:
            self.dur_max = other.dur_max
        self.count += other.count
        self.errors += other.errors
        self.client_errors += other.client_errors
        self.throttled += other.throttled
        self.redirects += other.redirects
        self.unknown += other.unknown
        self.dur_sum += other.dur_sum
        hist = self.hist
        for b, c in other.hist.items():
            hist[b] = hist.get(b, 0) + c

    def copy(self) -> Cell:
        """An independent copy."""
        out = Cell(self.dims)
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
    log: list[LogValues] = field(default_factory=list)
    """Raw call-log entries, oldest first: ``(time_us, status, duration_us)``."""
    log_cells: list[Cell] = field(default_factory=list)
    """The cell each entry of :attr:`log` was counted in (same order): its dimension set
    is the rest of the entry's row."""
    since: float | None = None
    """Arrival time (epoch s) of the oldest call in this batch; None if empty."""
    fixes: list[LogFix] = field(default_factory=list)
    """Raw call-log rows to correct, written after :attr:`log` (calls that were
    unknown and whose line came late); their rollup corrections are in :attr:`cells`."""

    @property
    def empty(self) -> bool:
        """True when there is nothing to write."""
        return not self.cells and not self.log and not self.fixes

    @property
    def call_count(self) -> int:
        """Calls aggregated in this batch."""
        return sum(c.count for c in self.cells.values())


class Aggregator:
    """An in-memory :class:`~tollhouse.metering.record.Meter`: aggregates per minute per
    dimension set and keeps a bounded raw call log until the flusher takes them.

    :meth:`record` only appends the call to an inbox; every :data:`INBOX` calls, and
    before anything reads the aggregator (:meth:`drain`, :meth:`restore`, the counters
    and ``pending_*`` properties), :meth:`absorb` aggregates the inbox in one pass. The
    counts are the same as one call at a time; the request path pays a list append.

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
        self._inbox: list[CallRecord] = []
        # Keyed by (minute, *dimensions), one flat tuple: a tuple fewer per call than a
        # CellKey; drain() hands CellKeys out.
        self._cells: dict[FlatKey, Cell] = {}
        self._log: deque[LogValues] = deque()
        self._log_cells: deque[Cell] = deque()
        self._fixes: list[LogFix] = []
        self._recorded = 0
        self._dropped = 0
        self._rejected = 0
        self._since: float | None = None
        self.observers: list[Callable[[list[CallRecord]], None]] = []
        """Called with each pass's calls after they are aggregated (once per pass of up
        to :data:`INBOX` calls, never per call; they must not raise): the fair-use tap
        (:mod:`tollhouse.fairuse.tap`) watches 429s and the next arrivals here."""

    def record(self, call: CallRecord) -> None:
        """Account one call: memory only, never blocks, never raises.

        Runs once per request on the event loop, so it only appends to the inbox
        (bounded: every :data:`INBOX` calls it is aggregated).
        """
        inbox = self._inbox
        inbox.append(call)
        if len(inbox) >= INBOX:
            self.absorb()

    def absorb(self) -> None:
        """Aggregate the calls recorded since the last absorb (never raises: a malformed
        record is counted in :attr:`rejected_calls`, logged, and skipped whole)."""
        calls = self._inbox
        if not calls:
            return
        self._inbox = []
        # One pass with everything in locals: what makes a call cheaper here than alone.
        cells = self._cells
        find = cells.get
        keep, cap = self.keep_raw_log, self.raw_log_cap
        log, log_cells = self._log, self._log_cells
        since = self._since
        accounted = dropped = 0
        for call in calls:
            try:
                t, org, env, key_id, tenant, group, method, route, status, ms, labels, rid = call
                us = round(ms * 1000)
                if us < 0:
                    us = 0
                # The minute from the logged microsecond, so a call's rollup minute and
                # its raw-log row always agree (and integer division is cheaper).
                t_us = round(t * 1_000_000)
                key: FlatKey = (
                    t_us // 60_000_000 * 60,
                    org,
                    env,
                    key_id,
                    tenant or "",
                    group or "",
                    method,
                    route or "",
                    tuple(labels.items()) if labels else (),
                )
                b = bisect_right(BOUNDS_US, us)
                # 0: success, 1: redirect, 2: client error, 3: throttled, 4: error,
                # 5: unknown (status_kind, inlined; 100 is UNKNOWN_BELOW, a literal
                # here to spare a global lookup per call).
                if status < 300:
                    kind = 0 if status >= 100 else 5
                elif status >= 500:
                    kind = 4
                elif status < 400:
                    kind = 1
                else:
                    kind = 3 if status == 429 else 2
                cell = find(key)
                if cell is None:
                    cell = cells[key] = Cell(key[1:])
                    cell.request_id = rid
            except Exception:
                # Every step that can fail on a malformed record came before the first
                # change: such a record is refused whole, and the gateway never fails a
                # response because of metering.
                self._rejected += 1
                if self._rejected == 1 or self._rejected % 1000 == 0:
                    logger.exception("could not meter a call", extra={"rejected": self._rejected})
                continue
            # Cell.merge of a one-call cell, inlined.
            n = cell.count
            if n == 0 and not cell.unknown:  # (unknown < 0: a cell of corrections)
                cell.dur_min = cell.dur_max = us
            elif us < cell.dur_min:
                cell.dur_min = us
            elif us > cell.dur_max:
                cell.dur_max = us
            cell.count = n + 1
            cell.dur_sum += us
            if kind:
                if kind == 4:
                    cell.errors += 1
                elif kind == 1:
                    cell.redirects += 1
                elif kind == 2:
                    cell.client_errors += 1
                elif kind == 3:
                    cell.throttled += 1
                else:
                    cell.unknown += 1
            hist = cell.hist
            hist[b] = hist.get(b, 0) + 1
            accounted += 1
            if since is None or t < since:
                since = t
            if keep:
                if len(log) >= cap:
                    dropped += 1
                    if cap == 0:
                        continue
                    log.popleft()
                    log_cells.popleft()
                log.append((t_us, status, us))
                log_cells.append(cell)
        self._recorded += accounted
        self._dropped += dropped
        self._since = since
        for observe in self.observers:
            observe(calls)

    def reclassify(self, call: CallRecord, status: int, duration_ms: float) -> None:
        """Move ``call``, recorded earlier with status unknown, to the class of
        ``status`` with ``duration_ms`` — a forward-auth call whose access-log line came
        after it was metered as unknown. Call it once per such call (the access-log join
        makes sure); the call's count does not change.

        Its minute's cell gets a correction — unknown −1, the class +1, the latency moved
        from the old duration's bucket to the new one's — and its raw call-log row is
        corrected when the batch is written. A status that is itself unknown changes
        nothing.
        """
        kind = status_kind(status)
        if kind == 5:
            return
        self.absorb()  # the unknown record may still be in the inbox: it goes first
        try:
            dims = dimensions(call)
            t_us = round(call.time * 1_000_000)
            old_us = duration_us(call)
        except Exception:
            self._rejected += 1
            logger.exception("could not reclassify a call")
            return
        new_us = max(0, round(duration_ms * 1000))
        key: FlatKey = (t_us // 60_000_000 * 60, *dims)
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = Cell(dims)
            cell.request_id = call.request_id
        if cell.count == 0 and cell.unknown == 0:
            cell.dur_min = cell.dur_max = new_us
        else:
            cell.dur_min = min(cell.dur_min, new_us)
            cell.dur_max = max(cell.dur_max, new_us)
        cell.unknown -= 1
        if kind == 0:
            pass  # success: count − the other classes
        elif kind == 4:
            cell.errors += 1
        elif kind == 1:
            cell.redirects += 1
        elif kind == 2:
            cell.client_errors += 1
        else:
            cell.throttled += 1
        cell.dur_sum += new_us - old_us
        hist = cell.hist
        old_b, new_b = bisect_right(BOUNDS_US, old_us), bisect_right(BOUNDS_US, new_us)
        hist[old_b] = hist.get(old_b, 0) - 1
        hist[new_b] = hist.get(new_b, 0) + 1
        if self.keep_raw_log:
            self._fixes.append((dims, t_us, old_us, status, new_us))

    @property
    def recorded_calls(self) -> int:
        """Calls accounted since start."""
        self.absorb()
        return self._recorded

    @property
    def dropped_calls(self) -> int:
        """Raw call-log entries dropped (oldest first) because the cap was reached."""
        self.absorb()
        return self._dropped

    @property
    def rejected_calls(self) -> int:
        """Records that could not be accounted at all (malformed); logged."""
        self.absorb()
        return self._rejected

    @property
    def pending_since(self) -> float | None:
        """Arrival time (epoch s) of the oldest call not yet drained; None when none is."""
        self.absorb()
        return self._since

    @property
    def pending_cells(self) -> int:
        """Aggregate cells waiting for the flusher."""
        self.absorb()
        return len(self._cells)

    @property
    def pending_calls(self) -> int:
        """Raw call-log entries waiting for the flusher."""
        self.absorb()
        return len(self._log)

    def drain(self) -> Batch:
        """Take everything recorded so far (the aggregator starts empty again)."""
        self.absorb()
        cells: dict[CellKey, Cell] = {(key[0], key[1:]): cell for key, cell in self._cells.items()}
        batch = Batch(cells, list(self._log), list(self._log_cells), self._since, self._fixes)
        self._fixes = []
        self._cells = {}
        self._log = deque()
        self._log_cells = deque()
        self._since = None
        return batch

    def restore(self, batch: Batch) -> None:
        """Put back a batch whose write failed, merging it with what arrived since.

        Its raw entries are older than the ones recorded since, so when the cap is
        exceeded they are the first to go.
        """
        self.absorb()
        if batch.since is not None and (self._since is None or batch.since < self._since):
            self._since = batch.since
        cells = self._cells
        for (minute, dims), cell in batch.cells.items():
            key: FlatKey = (minute, *dims)
            mine = cells.get(key)
            if mine is None:
                if cell.dims is None:
                    cell.dims = dims
                cells[key] = cell
            else:
                mine.merge(cell)
        if batch.fixes:
            self._fixes[:0] = batch.fixes
        if not batch.log:
            return
        log: deque[LogValues] = deque(batch.log)
        log.extend(self._log)
        log_cells: deque[Cell] = deque(batch.log_cells)
        log_cells.extend(self._log_cells)
        overflow = max(0, len(log) - self.raw_log_cap)
        for _ in range(overflow):
            log.popleft()
            log_cells.popleft()
        self._dropped += overflow
        self._log = log
        self._log_cells = log_cells
