"""Prometheus metrics, read from plain counters at scrape time.

The hot path never calls prometheus-client: the gateway adds to ints in the
:class:`~tollhouse.http.counters.GatewayCounters` it is given (responses by endpoint group
and status, decisions by bucket); job and webhook hooks do the same.
:class:`OpsCollector` turns those into metric families when ``/metrics`` is scraped.
Queue depth is read from the queue's per-org counters (one small query) at most every
:data:`QUEUE_TTL` seconds, never per request.

No metric has an org, key or tenant label: label values would grow with customers and
would tell anyone who may scrape who the customers are.

Every figure is this process's, except queue depth (the queue's, shared by every process
on one database: aggregate it with ``max``, not ``sum``).
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from tollhouse.metering.deadletters import COUNTS as DEAD_LETTER_COUNTS

if TYPE_CHECKING:
    from tollhouse.http.counters import GatewayCounters
    from tollhouse.jobs.queue import JobQueue
    from tollhouse.jobs.webhooks import AttemptResult
    from tollhouse.jobs.worker import JobEvent
    from tollhouse.limits.store import LimitStore
    from tollhouse.metering import UsageMeter

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: Seconds a read of the queue's counters is reused by later scrapes.
QUEUE_TTL = 5.0
#: Upper bounds (seconds) of the job duration histogram's buckets.
JOB_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_NO_GROUP = "none"


class DurationHistogram:
    """A histogram kept as plain numbers per label value (no locks: one event loop)."""

    __slots__ = ("bounds", "series")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        #: label value → [per-bucket counts (the last is +Inf), sum]
        self.series: dict[str, tuple[list[int], list[float]]] = {}

    def observe(self, label: str, seconds: float) -> None:
        """Count one observation under ``label``."""
        found = self.series.get(label)
        if found is None:
            found = self.series[label] = ([0] * (len(self.bounds) + 1), [0.0])
        found[0][bisect.bisect_left(self.bounds, seconds)] += 1
        found[1][0] += seconds

    def family(self, name: str, doc: str, label: str) -> HistogramMetricFamily:
        """The histogram as a metric family (cumulative buckets)."""
        family = HistogramMetricFamily(name, doc, labels=[label])
        for value, (counts, total) in sorted(self.series.items()):
            running = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
                running += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
            family.add_metric([value], buckets, total[0])
        return family


class OpsMetrics:
    """What ``/metrics`` reports for one process, and the hooks that feed it.

    Args:
        counters: the gateway's response and decision counters; None in a
            ``tollhouse worker`` process, which reports jobs, webhooks and the queue.
        limits: the gateway's limit store (whether it is degraded).
        queue: the job queue, or None when the policy has no async routes.
        meter: the usage meter, or None.
        clock: monotonic seconds (injected in tests).
    """

    def __init__(
        self,
        counters: GatewayCounters | None,
        *,
        limits: LimitStore | None = None,
        queue: JobQueue | None = None,
        meter: UsageMeter | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.counters = counters
        self.limits = limits
        self.queue = queue
        self.meter = meter
        self.clock = clock
        self.jobs = DurationHistogram(JOB_SECONDS)
        #: outcome (delivered, retrying, failed, stale, unrecorded) → webhook attempts
        self.webhook_attempts: dict[str, int] = {}
        self._queue_depth: dict[str, int] | None = None
        self._queue_read_at = -math.inf
        self._queue_lock = asyncio.Lock()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(OpsCollector(self))

    # ---- hooks (called in-process, cheap) ---------------------------------------------

    def job_finished(self, event: JobEvent) -> None:
        """Dispatcher hook: one job attempt ended (``lost``: its lease was taken over)."""
        self.jobs.observe(event.outcome or "lost", event.seconds)

    def webhook_attempt(self, result: AttemptResult, status: str) -> None:
        """Webhook sender hook: one attempt made; ``status`` is the delivery's state after
        it (``pending`` counts as ``retrying``)."""
        outcome = "retrying" if status == "pending" else status
        self.webhook_attempts[outcome] = self.webhook_attempts.get(outcome, 0) + 1

    # ---- scrape ------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Re-read what needs I/O (queue depth) if the last read is older than the TTL."""
        if self.queue is None or self.clock() - self._queue_read_at < QUEUE_TTL:
            return
        async with self._queue_lock:
            if self.clock() - self._queue_read_at < QUEUE_TTL:
                return
            try:
                counters = await self.queue.counters()
            except Exception:
                # The database is away: report no depth rather than a stale one.
                self._queue_depth = None
            else:
                self._queue_depth = {
                    "queued": sum(c.queued for c in counters),
                    "running": sum(c.running for c in counters),
                }
            self._queue_read_at = self.clock()

    async def render(self) -> bytes:
        """The text exposition of every metric, after a :meth:`refresh`."""
        await self.refresh()
        return generate_latest(self.registry)


class OpsCollector(Collector):
    """Builds the metric families from :class:`OpsMetrics`' plain counters."""

    def __init__(self, metrics: OpsMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        if m.counters is not None:
            yield from _gateway_families(m.counters, m.limits)

        if m.queue is not None:
            depth = GaugeMetricFamily(
                "tollhouse_queue_jobs",
                "Jobs in the queue by state (whole queue, shared by every process; read "
                f"at most every {QUEUE_TTL:g} s).",
                labels=["state"],
            )
            if m._queue_depth is not None:
                for state, n in sorted(m._queue_depth.items()):
                    depth.add_metric([state], n)
            yield depth

        yield m.jobs.family(
            "tollhouse_job_duration_seconds",
            "Job attempts run in this process, by outcome (completed, retrying, failed, "
            "dead, lost).",
            "outcome",
        )

        attempts = CounterMetricFamily(
            "tollhouse_webhook_attempts",
            "Webhook delivery attempts made by this process, by outcome.",
            labels=["outcome"],
        )
        for outcome, n in sorted(m.webhook_attempts.items()):
            attempts.add_metric([outcome], n)
        yield attempts

        if m.meter is not None:
            yield from _meter_families(m.meter)

        set_aside = CounterMetricFamily(
            "tollhouse_dead_letters",
            "Rows the database refused (a value too long, out of range…), set aside as "
            "dead letters instead of retried, by kind: usage (metered calls), event.",
            labels=["kind"],
        )
        for kind, n in sorted(DEAD_LETTER_COUNTS.rows.items()):
            set_aside.add_metric([kind], n)
        yield set_aside


def _meter_families(meter: UsageMeter) -> Iterator[Metric]:
    stats = meter.stats()
    buffered = stats.buffered_calls
    dropped = stats.dropped_log_entries
    yield CounterMetricFamily(
        "tollhouse_meter_recorded_calls",
        "Calls metered by this process.",
        value=stats.recorded_calls,
    )
    yield GaugeMetricFamily(
        "tollhouse_meter_buffered_calls",
        "Metered calls held in memory, not yet written to the database.",
        value=buffered,
    )
    yield CounterMetricFamily(
        "tollhouse_meter_dropped_log_entries",
        "Raw call-log entries dropped (oldest first) while the database was away; their "
        "counts in the rollups are kept.",
        value=dropped,
    )
    yield CounterMetricFamily(
        "tollhouse_meter_flush_failures",
        "Failed flushes of the usage meter.",
        value=stats.flush_failures,
    )
    yield GaugeMetricFamily(
        "tollhouse_meter_flush_lag_seconds",
        "Age of the oldest metered call not yet written (0 when everything is written).",
        value=float(stats.flush_lag_seconds),
    )


def _gateway_families(gw: GatewayCounters, limits: LimitStore | None) -> Iterator[Metric]:
    requests = CounterMetricFamily(
        "tollhouse_requests",
        "Answered requests through the gateway, by endpoint group and status class.",
        labels=["endpoint_group", "status_class"],
    )
    by_class: dict[tuple[str, str], int] = {}
    for (group, status), n in list(gw.responses.items()):
        # Status 0: a forward-auth call whose access-log line never came.
        key = (group or _NO_GROUP, f"{status // 100}xx" if status >= 100 else "unknown")
        by_class[key] = by_class.get(key, 0) + n
    for labels, n in sorted(by_class.items()):
        requests.add_metric(list(labels), n)
    yield requests

    decisions = CounterMetricFamily(
        "tollhouse_limit_decisions",
        "Limit decisions per bucket or pool: allowed, denied (the first that said "
        "no), shadow_denied (a shadow bucket would have denied).",
        labels=["bucket", "outcome"],
    )
    counts: dict[tuple[str, str], int] = {}
    for names, n in list(gw.admitted.items()):
        for name in names:
            counts[(name, "allowed")] = counts.get((name, "allowed"), 0) + n
    for name, n in list(gw.denied.items()):
        counts[(name, "denied")] = counts.get((name, "denied"), 0) + n
    for (_, name), n in list(gw.shadow_denials.items()):
        counts[(name, "shadow_denied")] = counts.get((name, "shadow_denied"), 0) + n
    for labels, n in sorted(counts.items()):
        decisions.add_metric(list(labels), n)
    yield decisions

    yield GaugeMetricFamily(
        "tollhouse_limits_degraded",
        "1 while the shared limit store (Redis) is unreachable and limits are enforced locally.",
        value=1 if limits is not None and limits.degraded else 0,
    )
