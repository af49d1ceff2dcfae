"""``UsageMeter``: the one object the app wires in — a Meter with its flusher.

::

    meter = UsageMeter(engine)            # Gateway(..., meter=meter)
    await meter.start()                   # on startup: background flushes every second
    meter.record(call)                    # per call, on the hot path: a list append
    await meter.stop()                    # on shutdown: flushes everything left
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.metering.aggregator import DEFAULT_RAW_LOG_CAP, Aggregator
from tollhouse.metering.flusher import Flusher, FlushResult
from tollhouse.metering.record import CallRecord
from tollhouse.metering.retention import Retention


@dataclass(frozen=True, slots=True)
class MeterStats(Mapping[str, Any]):
    """Counters of a meter, for metrics exporters, status pages and logs.

    A read-only mapping (``dict(meter.stats())`` is a plain dict; ``stats["buffered_calls"]``)
    whose keys are also attributes (``stats.buffered_calls``).
    """

    buffered_calls: int
    """Calls recorded but not yet written to the rollups (held in memory)."""
    buffered_log_entries: int
    """Raw call-log entries held in memory, not yet written."""
    dropped_log_entries: int
    """Raw call-log entries dropped oldest-first at the cap while storage was away (their
    counts in the rollups are kept)."""
    last_flush_at: float | None
    """When a flush last succeeded (epoch s; a flush with nothing to write counts), None
    before the first."""
    flush_lag_seconds: float
    """Age of the oldest call not yet written (0.0 when everything is written)."""
    recorded_calls: int
    """Calls accounted since start."""
    rejected_calls: int
    """Malformed records that could not be accounted."""
    set_aside_calls: int
    """Calls the database refused (a value of their dimension set: a tenant longer than
    its column…), kept as dead letters (``tollhouse dead-letters``), not counted."""
    buffered_cells: int
    """Aggregate cells (minute × dimension set) not yet written."""
    raw_log_cap: int
    """Raw call-log entries kept in memory at most."""
    flushes: int
    """Flushes that wrote something."""
    flush_failures: int
    """Failed flush attempts."""
    last_error: str | None
    """The last flush error, None once a flush succeeded."""

    @property
    def pending_calls(self) -> int:
        """Former name of :attr:`buffered_log_entries`."""
        return self.buffered_log_entries

    @property
    def dropped_calls(self) -> int:
        """Former name of :attr:`dropped_log_entries`."""
        return self.dropped_log_entries

    @property
    def pending_cells(self) -> int:
        """Former name of :attr:`buffered_cells`."""
        return self.buffered_cells

    def __getitem__(self, key: str) -> Any:
        if key not in _STAT_NAMES:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_STAT_NAMES)

    def __len__(self) -> int:
        return len(_STAT_NAMES)


#: The keys of :class:`MeterStats`, in order.
_STAT_NAMES: tuple[str, ...] = tuple(f.name for f in fields(MeterStats))


class UsageMeter:
    """An in-memory :class:`~tollhouse.metering.record.Meter` flushed to SQL in batches.

    Args:
        engine: the usage database (SQLite or PostgreSQL), schema already created.
        flush_interval: seconds between background flushes.
        raw_log_cap: raw call-log entries kept in memory at most while storage is away.
        keep_raw_log: False skips the raw call log (``api_calls_log`` stays empty).
        retention: table ages enforced hourly by the flusher; None never prunes.
        clock: wall clock, epoch seconds (injected in tests).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        flush_interval: float = 1.0,
        raw_log_cap: int = DEFAULT_RAW_LOG_CAP,
        keep_raw_log: bool = True,
        retention: Retention | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.aggregator = Aggregator(raw_log_cap=raw_log_cap, keep_raw_log=keep_raw_log)
        self.flusher = Flusher(
            self.aggregator, engine, interval=flush_interval, retention=retention, clock=clock
        )
        # Once per request: the aggregator's own method, without a call through this one.
        self.record = self.aggregator.record  # type: ignore[method-assign]

    @property
    def engine(self) -> AsyncEngine:
        """The database flushed to."""
        return self.flusher.engine

    def record(self, call: CallRecord) -> None:
        """Account one call: memory only, never blocks, never raises (the instance's
        ``record`` is :meth:`Aggregator.record` itself)."""
        self.aggregator.record(call)

    def reclassify(self, call: CallRecord, status: int, duration_ms: float) -> None:
        """Move ``call``, recorded earlier with status unknown, to ``status`` and
        ``duration_ms`` (:meth:`Aggregator.reclassify`): memory only, never raises."""
        self.aggregator.reclassify(call, status, duration_ms)

    async def flush(self) -> FlushResult:
        """Write everything recorded so far now.

        Raises:
            StorageError: the write failed; nothing is lost, the next flush retries.
        """
        return await self.flusher.flush()

    async def start(self) -> None:
        """Start the background flusher (idempotent)."""
        await self.flusher.start()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop the background flusher and flush what is left (graceful shutdown), retrying
        for up to ``grace`` seconds while the database is unreachable."""
        await self.flusher.stop(grace)

    @property
    def has_pending(self) -> bool:
        """True when something recorded is not written yet (also while a drained batch is
        being written: a read that flushes first then waits for it)."""
        agg = self.aggregator
        return (
            agg.pending_cells > 0
            or agg.pending_calls > 0
            or self.flusher.oldest_in_flight is not None
        )

    def stats(self) -> MeterStats:
        """The meter's counters now: a mapping with at least ``buffered_calls``,
        ``dropped_log_entries``, ``last_flush_at`` and ``flush_lag_seconds`` (see
        :class:`MeterStats`). Cheap: no I/O; at most the last
        :data:`~tollhouse.metering.aggregator.INBOX` calls are aggregated first."""
        agg, fl = self.aggregator, self.flusher
        since = agg.pending_since
        done = fl.written_calls + fl.set_aside_calls
        if since is None and done < agg.recorded_calls:
            since = fl.oldest_in_flight  # drained, being written right now
        lag = 0.0 if since is None else max(0.0, fl.clock() - since)
        return MeterStats(
            buffered_calls=agg.recorded_calls - done,
            buffered_log_entries=agg.pending_calls,
            dropped_log_entries=agg.dropped_calls,
            last_flush_at=fl.last_flush_at,
            flush_lag_seconds=lag,
            recorded_calls=agg.recorded_calls,
            rejected_calls=agg.rejected_calls,
            set_aside_calls=fl.set_aside_calls,
            buffered_cells=agg.pending_cells,
            raw_log_cap=agg.raw_log_cap,
            flushes=fl.flushes,
            flush_failures=fl.failures,
            last_error=fl.last_error,
        )
