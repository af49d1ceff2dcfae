"""Usage metering: one record per call into memory, flushed in batches to SQL rollups.

The gateway calls :meth:`UsageMeter.record` per call; :mod:`.aggregator` aggregates per
minute, :mod:`.flusher` writes 1 m / 1 h / 1 d rollups and the raw call log,
:mod:`.retention` prunes old rows, :mod:`.histogram` holds the latency buckets.
"""

from __future__ import annotations

from tollhouse.metering.aggregator import Aggregator
from tollhouse.metering.flusher import Flusher, FlushResult
from tollhouse.metering.meter import MeterStats, UsageMeter
from tollhouse.metering.record import CallRecord, Meter
from tollhouse.metering.retention import Retention, prune

__all__ = [
    "Aggregator",
    "CallRecord",
    "FlushResult",
    "Flusher",
    "Meter",
    "MeterStats",
    "Retention",
    "UsageMeter",
    "prune",
]
