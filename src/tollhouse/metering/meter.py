"""``UsageMeter``: the one object the app wires in — a Meter with its flusher.

::

    meter = UsageMeter(engine)            # Gateway(..., meter=meter)
    await meter.start()                   # on startup: background flushes every second
    meter.record(call)                    # per call, on the hot path: memory only
    await meter.stop()                    # on shutdown: flushes everything left
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.metering.aggregator import DEFAULT_RAW_LOG_CAP, Aggregator
from tollhouse.metering.flusher import Flusher, FlushResult
from tollhouse.metering.record import CallRecord
from tollhouse.metering.retention import Retention


@dataclass(frozen=True, slots=True)
class MeterStats:
    """Counters of a meter, for status pages and logs."""

    recorded_calls: int
    """Calls accounted since start."""
    dropped_calls: int
    """Raw call-log entries dropped oldest-first while storage was away (counts kept)."""
    rejected_calls: int
    """Malformed records that could not be accounted."""
    pending_cells: int
    """Aggregate cells not yet written."""
    pending_calls: int
    """Raw call-log entries not yet written."""
    flushes: int
    """Flushes that wrote something."""
    flush_failures: int
    """Failed flush attempts."""
    last_error: str | None
    """The last flush error, None once a flush succeeded."""


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

    @property
    def engine(self) -> AsyncEngine:
        """The database flushed to."""
        return self.flusher.engine

    def record(self, call: CallRecord) -> None:
        """Account one call: memory only, never blocks, never raises."""
        self.aggregator.record(call)

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
        """True when something recorded is not written yet."""
        agg = self.aggregator
        return agg.pending_cells > 0 or agg.pending_calls > 0

    def stats(self) -> MeterStats:
        """The meter's counters now."""
        agg, fl = self.aggregator, self.flusher
        return MeterStats(
            recorded_calls=agg.recorded_calls,
            dropped_calls=agg.dropped_calls,
            rejected_calls=agg.rejected_calls,
            pending_cells=agg.pending_cells,
            pending_calls=agg.pending_calls,
            flushes=fl.flushes,
            flush_failures=fl.failures,
            last_error=fl.last_error,
        )
