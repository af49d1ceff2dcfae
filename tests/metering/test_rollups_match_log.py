"""Property: answers from the rollups equal answers computed from the raw call log.

Random calls are metered and flushed; then counts per bucket (call counts at minute, hour
and day granularity) and per-endpoint counts, errors, mean and percentiles (a calls
metric read from the 1 m, 1 h and 1 d rollups in turn), calls per status class and
latency percentiles per time bucket are compared with the same numbers computed in
Python from the raw call log read back from the database.

Some calls are metered with status 0 ("unknown": a forward-auth call whose access-log
line never came); some of those are then moved to their real status and duration (the
line came late: ``UsageMeter.reclassify``), before or after the first flush. The rollups
must still equal the raw call log, whose rows are corrected too — except that a rollup's
min and max keep the moved call's first duration as well (they cannot be subtracted).
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter, defaultdict
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.storage.support import run_with
from tollhouse.analytics import call_counts
from tollhouse.analytics.buckets import DAY, fold, metric_step
from tollhouse.analytics.catalogue import Measure, Metric
from tollhouse.analytics.metrics import run_metric
from tollhouse.analytics.sources import rollup_for
from tollhouse.metering import Retention, UsageMeter
from tollhouse.metering.histogram import BUCKETS as NBUCKETS
from tollhouse.metering.histogram import bucket_of, percentile
from tollhouse.metering.record import CallRecord
from tollhouse.metering.schema import usage_calls

DAY0 = 1_767_225_600  # 2026-01-01T00:00:00Z
ROUTES = [("POST", "/v1/score"), ("GET", "/v1/score/{scoringJobId}"), ("POST", "/v1/criteria")]
_orgs = itertools.count()

ENDPOINT_STATS = Metric(
    "endpoint_stats",
    "calls, errors, mean and percentiles per endpoint",
    "table",
    "calls",
    (
        Measure("Calls", "sum", ("calls",)),
        Measure("Errors", "sum", ("errors",)),
        Measure("Mean", "avg", ("duration_ms",)),
        Measure("P50", "percentile", ("duration_ms",), q=0.5),
        Measure("P90", "percentile", ("duration_ms",), q=0.9),
    ),
    group_by=("route", "method"),
    headings=("Endpoint", "Method"),
)

STATUSES = [0, 200, 200, 201, 302, 304, 404, 429, 500, 503]
#: A call whose status was unknown and whose line came late: (status, ms, after a flush).
Late = tuple[int, float, bool] | None
Call = tuple[float, int, int, float, dict[str, str], Late]

calls_strategy = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=3 * DAY - 1, allow_nan=False),
        st.integers(min_value=0, max_value=len(ROUTES) - 1),
        st.sampled_from(STATUSES),
        st.floats(min_value=0, max_value=120_000, allow_nan=False),
        st.sampled_from([{}, {"db": "main"}, {"db": "other", "scenario": "home"}]),
        st.one_of(
            st.none(),
            st.tuples(
                st.sampled_from([200, 302, 404, 429, 503]),
                st.floats(min_value=0, max_value=600_000, allow_nan=False),
                st.booleans(),
            ),
        ),
    ),
    min_size=1,
    max_size=60,
)


def status_class(status: int) -> str:
    return "unknown" if status < 100 else f"{status // 100}xx"


def expected_endpoints(
    rows: list[Any], first: dict[tuple[str, str], list[int]]
) -> dict[tuple[str, str], dict[str, Any]]:
    by: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for r in rows:
        by[(r.route, r.method)].append(r)
    out = {}
    for key, group in by.items():
        durations = [r.duration_us for r in group]
        hist = [0] * NBUCKETS
        for d in durations:
            hist[bucket_of(d)] += 1
        extremes = durations + first.get(key, [])
        lo, hi = min(extremes), max(extremes)
        p50, p90 = percentile(hist, 0.5, lo, hi), percentile(hist, 0.9, lo, hi)
        assert p50 is not None and p90 is not None
        out[key] = {
            "Calls": len(group),
            "Errors": sum(1 for r in group if r.status >= 500),
            "Mean": round(sum(durations) / len(durations) / 1000, 1),
            "P50": round(p50 / 1000, 1),
            "P90": round(p90 / 1000, 1),
        }
    return out


def expected_percentiles(rows: list[Any], first: list[int]) -> dict[str, float | None]:
    if not rows:
        return {"P50": None, "P90": None, "P99": None}
    durations = [r.duration_us for r in rows]
    hist = [0] * NBUCKETS
    for d in durations:
        hist[bucket_of(d)] += 1
    out: dict[str, float | None] = {}
    for name, q in (("P50", 0.5), ("P90", 0.9), ("P99", 0.99)):
        p = percentile(hist, q, min(durations + first), max(durations + first))
        assert p is not None
        out[name] = round(p / 1000, 1)
    return out


def check(url: str, calls: list[Call]) -> None:
    org = f"org{next(_orgs)}"

    async def go(engine: AsyncEngine) -> None:
        meter = UsageMeter(engine)
        later: list[tuple[CallRecord, int, float]] = []
        # Per endpoint and per bucket time: the first durations of the calls moved later.
        first_by_endpoint: dict[tuple[str, str], list[int]] = defaultdict(list)
        first_at: list[tuple[float, int]] = []
        final_statuses = []
        for offset, route, status, ms, labels, late in calls:
            method, template = ROUTES[route]
            for who, key in ((org, "key_1"), (org + "x", "key_2")):
                # A second org's identical traffic must never leak into the answers.
                call = CallRecord(
                    DAY0 + offset,
                    who,
                    "SANDBOX",
                    key,
                    None,
                    None,
                    method,
                    template,
                    0 if late is not None else status,
                    ms,
                    labels,
                )
                meter.record(call)
                if late is None:
                    continue
                if late[2]:
                    later.append((call, late[0], late[1]))
                else:
                    meter.reclassify(call, late[0], late[1])
            final_statuses.append(status if late is None else late[0])
            if late is not None:
                first_by_endpoint[(template, method)].append(max(0, round(ms * 1000)))
                first_at.append((DAY0 + offset, max(0, round(ms * 1000))))
        await meter.flush()
        for call, status, ms in later:
            meter.reclassify(call, status, ms)
        await meter.flush()
        async with engine.connect() as conn:
            rows = (await conn.execute(select(usage_calls).where(usage_calls.c.org == org))).all()
        assert len(rows) == len(calls)
        # The raw log holds every moved call's status, once.
        assert sorted(r.status for r in rows) == sorted(final_statuses)
        times = [r.time_us / 1e6 for r in rows]

        # Call-count totals at minute, hour and day granularity (span chooses the step).
        for span, step in ((DAY, 60), (3 * DAY, 3600), (90 * DAY, DAY)):
            end = DAY0 + span
            body = await call_counts.historical(
                engine, org=org, environment="SANDBOX", start=DAY0, end=end, now=end
            )
            per = Counter(b for b in (math.floor(t / step) * step for t in times) if b <= end)
            stamps, (counts,) = fold(sorted(per), [dict(per)], DAY0, end)
            assert body["timestamps"] == stamps and body["counts"] == counts, step

        # Endpoint stats from the 1 m, 1 h and 1 d rollups all equal the log's.
        want = expected_endpoints(rows, first_by_endpoint)
        for end, now, table in (
            (DAY0 + 3 * DAY - 30, DAY0 + 3 * DAY, "usage_rollup_1m"),  # hourly buckets
            (DAY0 + 3 * DAY - 1, DAY0 + 3 * DAY, "usage_rollup_1h"),  # … aligned to hours
            (DAY0 + 4 * DAY, DAY0 + 4 * DAY, "usage_rollup_1h"),  # daily buckets
            (DAY0 + 4 * DAY - 1, DAY0 + 4 * DAY, "usage_rollup_1d"),  # … aligned to days
            (DAY0 + 4 * DAY, DAY0 + 1000 * DAY, "usage_rollup_1d"),  # hours pruned
        ):
            step = metric_step(DAY0, end)
            assert rollup_for(step, DAY0, now, Retention(), end).name == table
            got = await run_metric(
                engine,
                ENDPOINT_STATS,
                org=org,
                environment="SANDBOX",
                start=DAY0,
                end=end,
                now=now,
            )
            table = {
                (r["Endpoint"], r["Method"]): {
                    k: r[k] for k in ("Calls", "Errors", "Mean", "P50", "P90")
                }
                for r in got["value"]["rows"]
            }
            assert table == want

        # Calls per hour and per day (the catalogue's api_calls_per_date) equal the log's.
        from tollhouse.analytics.catalogue import CATALOGUE

        for end, step in ((DAY0 + 3 * DAY - 1, 3600), (DAY0 + 5 * DAY, DAY)):
            got = await run_metric(
                engine,
                CATALOGUE["api_calls_per_date"],
                org=org,
                environment="SANDBOX",
                start=DAY0,
                end=end,
                now=end,
            )
            per = Counter(math.floor(t / step) for t in times)
            bars = [v["values"]["calls"] for v in got["value"]["values"]]
            first = DAY0 // step
            assert bars == [per.get(first + i, 0) for i in range(len(bars))]
            assert sum(bars) == len(calls)

            # Tollhouse's additions: status classes and latency percentiles per bucket.
            def run(name: str, end: float = end) -> Any:
                return run_metric(
                    engine,
                    CATALOGUE[name],
                    org=org,
                    environment="SANDBOX",
                    start=DAY0,
                    end=end,
                    now=end,
                )

            by_bucket: dict[int, list[Any]] = defaultdict(list)
            for r in rows:
                by_bucket[math.floor(r.time_us / 1e6 / step) - first].append(r)
            first_in: dict[int, list[int]] = defaultdict(list)
            for t, us in first_at:
                first_in[math.floor(round(t * 1e6) / 1e6 / step) - first].append(us)
            classes = (await run("api_calls_by_status_class"))["value"]["values"]
            latency = (await run("api_latency_percentiles"))["value"]["values"]
            assert len(classes) == len(latency) == len(bars)
            for i, (c, lat) in enumerate(zip(classes, latency, strict=True)):
                mine = by_bucket.get(i, [])
                want_classes = Counter(status_class(r.status) for r in mine)
                classes_of = ("2xx", "3xx", "4xx", "5xx", "unknown")
                assert c["values"] == {k: want_classes[k] for k in classes_of}
                assert lat["values"] == expected_percentiles(mine, first_in.get(i, [])), i

    run_with(url, go)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(calls=calls_strategy)
def test_rollup_answers_equal_raw_log_answers(database_url: str, calls: Any) -> None:
    check(database_url, calls)


def test_rollup_answers_equal_raw_log_answers_for_thousands_of_calls(database_url: str) -> None:
    """Past what the examples above reach: several aggregation passes of the inbox and
    full multi-row raw-log statements (a burst on one dimension set), plus scattered
    traffic."""
    rng = random.Random(2026)
    statuses = STATUSES
    labels: list[dict[str, str]] = [{}, {"db": "main"}, {"db": "other", "scenario": "home"}]
    burst = [
        (DAY + rng.uniform(0, 90), 0, rng.choice(statuses), rng.uniform(0, 900), {}, None)
        for _ in range(1400)
    ]
    scattered = [
        (
            rng.uniform(0, 3 * DAY - 1),
            rng.randrange(len(ROUTES)),
            rng.choice(statuses),
            rng.uniform(0, 120_000),
            rng.choice(labels),
            None,
        )
        for _ in range(1100)
    ]
    check(database_url, burst + scattered)
