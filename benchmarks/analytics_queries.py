"""Analytics reads on SQLite or PostgreSQL: rollups vs the raw call log, same answers, same run.

Builds a database with N metered calls spread over 90 days (20 orgs × 10 keys,
Zipf traffic, two or three routes per key) through the real meter — rollups 1 m / 1 h /
1 d and the raw call log — then applies the default retention to the rollups (minute
rollups kept 7 days), as a server would have; the raw log is kept whole so that it can
answer over 90 days too. For the busiest org it times, p50 over repeated runs:

* call counts ``GET /call-counts/historical/`` over 90 days (daily points) and over the last
  24 hours (minute points), and ``…/ENDPOINTS/`` over 90 days;
* catalogue metrics ``api_calls_per_date`` (daily bars) and ``api_calls_per_endpoint`` over
  90 days;

each against the same answer computed from the raw call log (an indexed ``GROUP BY``
over the org's rows), checked equal, and prints the ratio.

On PostgreSQL (``--engine postgresql``) the build is bulk by default (:func:`bulk_build`:
the raw log by binary ``COPY`` into its day partitions, rollups from it in SQL;
``--build meter`` goes through the meter as the SQLite build does). It then makes one
finished scoring job per ``POST /v1/score`` call (``INSERT … SELECT`` from the log),
builds the finished-jobs rollup from them with schema step 17's own SQL (jobs made
outside the queue are counted as the step counts a database's existing jobs) and trims
the rollup rows no range reads (the minute rows past a day, as the prune does), and runs
``VACUUM ANALYZE`` (what autovacuum does on a live server), so that the scoring volume
(``GET /v1/analytics/scoring-volume?timeRange=90d``, jobs per day, read from the rollup)
is timed too, against the same counts from the raw log and from the jobs table (the
route's read before the rollup). It prints the disk each table takes.

    .venv/bin/python benchmarks/analytics_queries.py              # 1 M calls, ~1 min
    .venv/bin/python benchmarks/analytics_queries.py --calls 10000000 --keep DIR
                                                                  # 10 M calls, ~10 min
    .venv/bin/python benchmarks/analytics_queries.py --engine postgresql --calls 10000000

``--keep DIR`` leaves the SQLite database in DIR (and reuses it when it is already
there), so the 10 M build is paid once. On PostgreSQL a throwaway cluster is started
(tests/services.py) unless ``--postgres-url`` names a database; a database that already
holds calls is reused as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, case, func, literal, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tollhouse.analytics import call_counts
from tollhouse.analytics.buckets import DAY, fold
from tollhouse.analytics.catalogue import CATALOGUE
from tollhouse.analytics.metrics import run_metric
from tollhouse.jobs import open_queue
from tollhouse.jobs.retention import prune_volume
from tollhouse.jobs.schema import add_volume_rollup, jobs
from tollhouse.jobs.volume import volume_body, window
from tollhouse.metering import CallRecord, Retention, UsageMeter, prune
from tollhouse.metering.flusher import LOG_COLUMNS, dim_id, dim_row
from tollhouse.metering.histogram import BOUNDS_US
from tollhouse.metering.histogram import COLUMNS as HISTOGRAM
from tollhouse.metering.partitions import ensure_days
from tollhouse.metering.schema import ROLLUPS, usage_calls, usage_dims
from tollhouse.policy.model import EndpointGroup
from tollhouse.schema import create_schema
from tollhouse.storage.engine import make_engine

END = 1_775_001_600 - 1  # 2026-04-01T00:00:00Z minus a second
START = END + 1 - 90 * DAY
ROUTES = [
    ("POST", "/v1/score", "SCORING"),
    ("GET", "/v1/score/{scoringJobId}", "SCORING"),
    ("POST", "/v1/criteria/generate", "CRITERIA_AI"),
    ("GET", "/v1/criteria/{jobId}", "CRITERIA"),
    ("PATCH", "/v1/criteria/{jobId}/{criterionId}", "CRITERIA"),
    ("GET", "/v1/rate-limit/status", "RATE_LIMIT_STATUS"),
]
GROUPS = [EndpointGroup(g, f"{g.lower()} calls", ()) for g in sorted({r[2] for r in ROUTES})]
ORG, ENV = "org0", "PRODUCTION"


async def build(engine: AsyncEngine, n: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    keys = []
    for k in range(200):
        keys.append((f"org{k % 20}", f"key_{k}", rng.sample(ROUTES, rng.randint(2, 3))))
    weights = [1 / (k + 1) ** 1.1 for k in range(len(keys))]
    meter = UsageMeter(engine, raw_log_cap=10**9)
    batch = 200_000
    t0 = time.perf_counter()
    for first in range(0, n, batch):
        count = min(batch, n - first)
        picks = rng.choices(keys, weights, k=count)
        times = sorted(rng.uniform(START, END) for _ in range(count))
        for t, (org, key, routes) in zip(times, picks, strict=True):
            method, route, group = rng.choice(routes)
            meter.record(
                CallRecord(
                    t,
                    org,
                    ENV,
                    key,
                    None,
                    group,
                    method,
                    route,
                    rng.choice((200, 200, 200, 201, 404, 429, 500)),
                    rng.lognormvariate(3, 1),
                    {},
                )
            )
        await meter.flush()
        done = first + count
        print(f"\r  built {done:,} calls ({time.perf_counter() - t0:.0f} s)", end="", flush=True)
    # Minute rollups are kept 7 days as in production; the raw log is kept whole here
    # (not 30 days) so that the baseline can answer over 90 days too.
    deleted = await prune(engine, Retention(calls_days=None), END)
    print(f"\n  retention applied at the range end: {deleted}")
    if engine.dialect.name == "postgresql":
        await build_jobs(engine)


def _rollup_select(source: str, step_us: int, where: str = "") -> str:
    """Rollup rows per dimension set and bucket from raw call-log rows, counted as the
    meter counts them (:func:`tollhouse.metering.aggregator.status_kind`, histogram
    bucket = ``bisect_right(BOUNDS_US, duration)`` = ``width_bucket``)."""
    bounds = ",".join(map(str, BOUNDS_US))
    hist = ", ".join(f"count(*) FILTER (WHERE hb = {i})" for i in range(len(HISTOGRAM)))
    return (
        f"SELECT d.id, (c.time_us / {step_us}) * {step_us // 1_000_000}, count(*), "
        "count(*) FILTER (WHERE status >= 500), "
        "count(*) FILTER (WHERE status >= 400 AND status < 500 AND status <> 429), "
        "count(*) FILTER (WHERE status = 429), "
        "count(*) FILTER (WHERE status >= 300 AND status < 400), "
        "count(*) FILTER (WHERE status < 100), "
        f"sum(duration_us), min(duration_us), max(duration_us), {hist} "
        f"FROM (SELECT *, width_bucket(duration_us, ARRAY[{bounds}]::bigint[]) AS hb "
        f"FROM {source} {where}) c "
        "JOIN usage_dims d ON d.org = c.org AND d.environment = c.environment "
        "AND d.key_id = c.key_id AND d.method = c.method AND d.route = coalesce(c.route, '') "
        "AND d.endpoint_group = coalesce(c.endpoint_group, '') "
        "AND d.tenant = coalesce(c.tenant, '') GROUP BY 1, 2"
    )


async def bulk_build(engine: AsyncEngine, n: int, seed: int = 1) -> None:
    """PostgreSQL's bulk build, same traffic as :func:`build`: the raw log by binary
    ``COPY`` (rows made in time order, straight into the day partitions), then the
    rollups from it in SQL, counted as the meter counts — hourly from the log, daily from
    the hourly rows, minutes for the last 8 days only (retention keeps 7) — and the
    default retention applied. The meter's own path (``--build meter``) writes ~5 k
    calls/s here because 90 days of spread-out calls make about one minute row per
    call; this one is what a 100 M build needs."""
    rng = random.Random(seed)
    keys = []
    for k in range(200):
        keys.append((f"org{k % 20}", f"key_{k}", rng.sample(ROUTES, rng.randint(2, 3))))
    weights = [1 / (k + 1) ** 1.1 for k in range(len(keys))]
    dims = {
        (org, ENV, key, "", group, method, route, ())
        for org, key, routes in keys
        for method, route, group in routes
    }
    rows = [dim_row(dim_id(d), d) for d in dims]
    async with engine.begin() as conn:
        await conn.execute(usage_dims.insert(), rows)
        # The partitions of the 90 days, as the flusher makes them for its batches.
        await ensure_days(conn, range(START // 86400, END // 86400 + 1))
    statuses = (200, 200, 200, 201, 404, 429, 500)
    chunk = 500_000
    slices = max(1, math.ceil(n / chunk))
    span = (END - START) / slices
    t0 = time.perf_counter()
    done = 0
    for i in range(slices):
        count = min(chunk, n - done)
        low = START + i * span
        times = sorted(round((low + rng.random() * span) * 1e6) for _ in range(count))
        picks = rng.choices(keys, weights, k=count)
        records = []
        for t, (org, key, routes) in zip(times, picks, strict=True):
            method, route, group = rng.choice(routes)
            us = round(rng.lognormvariate(3, 1) * 1000)
            records.append(
                (org, ENV, key, None, group, method, route, "{}", t, rng.choice(statuses), us)
            )
        async with engine.begin() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            await driver.copy_records_to_table("usage_calls", records=records, columns=LOG_COLUMNS)
        done += count
        print(f"\r  copied {done:,} calls ({time.perf_counter() - t0:.0f} s)", end="", flush=True)
    print()
    steps = [
        ("usage_rollup_1h", _rollup_select("usage_calls", 3_600_000_000)),
        (
            "usage_rollup_1m",
            _rollup_select(
                "usage_calls", 60_000_000, f"WHERE time_us >= {(END - 8 * DAY) * 1_000_000}"
            ),
        ),
    ]
    cols = ", ".join(c.name for c in ROLLUPS[0].columns)
    for table, sql in steps:
        t = time.perf_counter()
        async with engine.begin() as conn:
            # One hash aggregate in memory instead of spilling its 50 sums to disk.
            await conn.exec_driver_sql("SET LOCAL work_mem = '512MB'")
            await conn.exec_driver_sql(f"INSERT INTO {table} ({cols}) {sql}")
        print(f"  {table} from the log in {time.perf_counter() - t:.0f} s")
    t = time.perf_counter()
    add = ", ".join(f"sum({c})" for c in ("count", "errors", "client_errors", "throttled",
                                           "redirects", "unknown", "dur_sum_us"))  # fmt: skip
    hist = ", ".join(f"sum({h})" for h in HISTOGRAM)
    async with engine.begin() as conn:
        await conn.exec_driver_sql(
            f"INSERT INTO usage_rollup_1d ({cols}) SELECT dim_id, bucket / 86400 * 86400, "
            f"{add}, min(dur_min_us), max(dur_max_us), {hist} FROM usage_rollup_1h GROUP BY 1, 2"
        )
    print(f"  usage_rollup_1d from the hourly rows in {time.perf_counter() - t:.0f} s")
    deleted = await prune(engine, Retention(calls_days=None), END)
    print(f"  retention applied at the range end: {deleted}")
    await build_jobs(engine)


async def build_jobs(engine: AsyncEngine) -> None:
    """One finished scoring job per ``POST /v1/score`` call, finished when the call was
    made (failed when it answered 5xx), made in the database from the log; then
    ``VACUUM ANALYZE``, as autovacuum would have done on a server."""
    t = time.perf_counter()
    async with engine.begin() as conn:
        await conn.exec_driver_sql(
            "INSERT INTO jobs (id, org_id, environment, route, payload, status, attempts, "
            "max_attempts, run_after, created_at, finished_at) "
            "SELECT 'job_' || id, org, environment, route, '{}', "
            "CASE WHEN status >= 500 THEN 'failed' ELSE 'completed' END, 1, 3, "
            "to_timestamp(time_us / 1e6), to_timestamp(time_us / 1e6), "
            "to_timestamp(time_us / 1e6) "
            "FROM usage_calls WHERE method = 'POST' AND route = '/v1/score'"
        )
    print(f"  scoring jobs made in {time.perf_counter() - t:.0f} s")
    t = time.perf_counter()
    async with engine.begin() as conn:
        await conn.exec_driver_sql("DROP TABLE job_volume")
        await conn.run_sync(add_volume_rollup)
    print(f"  finished-jobs rollup built (step 17) in {time.perf_counter() - t:.0f} s")
    trimmed = await prune_volume(engine, datetime.fromtimestamp(END, UTC))
    print(f"  its rows no range reads trimmed at the range end: {trimmed}")
    t = time.perf_counter()
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.exec_driver_sql("VACUUM ANALYZE")
    print(f"  VACUUM ANALYZE in {time.perf_counter() - t:.0f} s")


async def p50(fn: Callable[[], Awaitable[Any]], rounds: int) -> tuple[float, Any]:
    answer = await fn()
    await fn()
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples), answer


def _big(v: int) -> Any:
    return literal(v, BigInteger)


async def raw_counts(engine: AsyncEngine, start: float, end: float, step: int, by: Any = None):
    """Calls per native bucket (and per ``by`` column) straight from the raw log."""
    c = usage_calls.c
    origin = math.floor(start / step) * step
    idx = (c.time_us - _big(origin * 1_000_000)) // _big(step * 1_000_000)
    cols = [idx] + ([by] if by is not None else [])
    stmt = (
        select(*cols, func.count())
        .where(
            c.org == ORG,
            c.environment == ENV,
            c.time_us >= _big(origin * 1_000_000),
            c.time_us <= _big(int(end * 1_000_000)),
        )
        .group_by(*cols)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    series: dict[Any, dict[int, int]] = {}
    for row in rows:
        key = row[1] if by is not None else None
        series.setdefault(key, {})[origin + int(row[0]) * step] = int(row[-1])
    points = sorted({p for s in series.values() for p in s})
    keys = sorted(series, key=str)
    stamps, counts = fold(points, [series[k] for k in keys], start, end)
    return stamps, dict(zip(keys, counts, strict=True))


async def raw_per_endpoint(engine: AsyncEngine, start: float, end: float) -> dict[Any, int]:
    c = usage_calls.c
    stmt = (
        select(c.route, c.method, func.count())
        .where(
            c.org == ORG,
            c.environment == ENV,
            c.time_us >= _big(int(start * 1_000_000)),
            c.time_us <= _big(int(end * 1_000_000)),
        )
        .group_by(c.route, c.method)
    )
    async with engine.connect() as conn:
        return {(r[0], r[1]): int(r[2]) for r in (await conn.execute(stmt)).all()}


async def bench(engine: AsyncEngine, rounds: int) -> None:
    kw: dict[str, Any] = {"org": ORG, "environment": ENV, "now": END}
    rows: list[tuple[str, float, float]] = []

    # call counts, 90 days, total
    t_roll, a = await p50(
        lambda: call_counts.historical(engine, start=START, end=END, **kw), rounds
    )
    t_raw, b = await p50(lambda: raw_counts(engine, START, END, DAY), rounds)
    assert (a["timestamps"], a["counts"]) == (b[0], b[1][None]), "90-day totals differ"
    rows.append(("call-counts, 90 days (daily)", t_roll, t_raw))

    # call counts, last 24 h, total (minute points folded to 100)
    day_start = END - DAY
    t_roll, a = await p50(
        lambda: call_counts.historical(engine, start=day_start, end=END, **kw), rounds
    )
    t_raw, b = await p50(lambda: raw_counts(engine, day_start, END, 60), rounds)
    assert (a["timestamps"], a["counts"]) == (b[0], b[1][None]), "24-hour totals differ"
    rows.append(("call-counts, 24 h (minutes)", t_roll, t_raw))

    # call counts, 90 days, ENDPOINTS
    def endpoints() -> Awaitable[Any]:
        return call_counts.historical_by_label(
            engine, "ENDPOINTS", start=START, end=END, groups=GROUPS, amt=128, **kw
        )

    t_roll, a = await p50(endpoints, rounds)
    t_raw, b = await p50(
        lambda: raw_counts(engine, START, END, DAY, usage_calls.c.endpoint_group), rounds
    )
    assert {s["key"]: s["counts"] for s in a["series"]} == b[1], "ENDPOINTS differ"
    rows.append(("call-counts ENDPOINTS, 90 days", t_roll, t_raw))

    # catalogue metric api_calls_per_date, 90 days (daily bars from hourly rollups)
    def per_date() -> Awaitable[Any]:
        return run_metric(engine, CATALOGUE["api_calls_per_date"], start=START, end=END, **kw)

    t_roll, a = await p50(per_date, rounds)
    t_raw, b = await p50(lambda: raw_counts(engine, START, END, DAY), rounds)
    bars = [v["values"]["calls"] for v in a["value"]["values"]]
    assert sum(bars) == sum(b[1][None]), "api_calls_per_date differs"
    rows.append(("api_calls_per_date, 90 days", t_roll, t_raw))

    # catalogue metric api_calls_per_endpoint, 90 days
    def per_endpoint() -> Awaitable[Any]:
        return run_metric(engine, CATALOGUE["api_calls_per_endpoint"], start=START, end=END, **kw)

    t_roll, a = await p50(per_endpoint, rounds)
    t_raw, b = await p50(lambda: raw_per_endpoint(engine, START, END), rounds)
    got = {(r["Endpoint"], r["Method"]): r["Calls"] for r in a["value"]["rows"]}
    assert got == b, "api_calls_per_endpoint differs"
    rows.append(("api_calls_per_endpoint, 90 days", t_roll, t_raw))

    if engine.dialect.name == "postgresql":
        rows.extend(await bench_scoring_volume(engine, rounds))

    async with engine.connect() as conn:
        org_calls = (
            await conn.execute(
                select(func.count()).select_from(usage_calls).where(usage_calls.c.org == ORG)
            )
        ).scalar_one()
    print(f"  busiest org {ORG}: {org_calls:,} calls in 90 days; p50 of {rounds} runs")
    print(f"  {'query':<34} {'rollups':>10} {'raw log':>10} {'ratio':>8}")
    for name, roll, raw in rows:
        print(f"  {name:<34} {roll * 1000:>8.2f}ms {raw * 1000:>8.1f}ms {raw / roll:>7.0f}×")
    if engine.dialect.name == "postgresql":
        await print_sizes(engine)


async def raw_scoring_volume(engine: AsyncEngine, start: float, end: float) -> dict[int, tuple]:
    """The busiest org's ``POST /v1/score`` calls per day from the raw log: (completed,
    failed) as the jobs made from them finished."""
    c = usage_calls.c
    origin = math.floor(start / DAY) * DAY
    idx = (c.time_us - _big(origin * 1_000_000)) // _big(DAY * 1_000_000)
    stmt = (
        select(
            idx,
            func.sum(case((c.status < 500, 1), else_=0)),
            func.sum(case((c.status >= 500, 1), else_=0)),
        )
        .where(
            c.org == ORG,
            c.environment == ENV,
            c.method == "POST",
            c.route == "/v1/score",
            c.time_us >= _big(int(start * 1_000_000)),
            c.time_us <= _big(int(end * 1_000_000)),
        )
        .group_by(idx)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return {origin + int(r[0]) * DAY: (int(r[1]), int(r[2])) for r in rows}


async def jobs_scoring_volume(
    engine: AsyncEngine, start: datetime, end: datetime
) -> list[tuple[datetime, int, int]]:
    """The busiest org's finished jobs per day counted in the jobs table (through
    ``ix_jobs_scope_finished``): the route's read before the finished-jobs rollup."""
    j = jobs.c
    day = func.date_trunc("day", func.timezone("UTC", j.finished_at))
    stmt = (
        select(
            day,
            func.sum(case((j.status == "completed", 1), else_=0)),
            func.sum(case((j.status.in_(("failed", "dead")), 1), else_=0)),
        )
        .where(
            j.org_id == ORG,
            j.environment == ENV,
            j.finished_at >= start,
            j.finished_at <= end,
            j.status.in_(("completed", "failed", "dead")),
        )
        .group_by(day)
        .order_by(day)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [(r[0].replace(tzinfo=UTC), int(r[1]), int(r[2])) for r in rows]


async def bench_scoring_volume(engine: AsyncEngine, rounds: int) -> list[tuple[str, float, float]]:
    """``GET /v1/analytics/scoring-volume?timeRange=90d``: the route's query and body
    (from the rollup), against the raw log and against the jobs table."""
    queue = open_queue(engine)
    start, end, granularity = window("90d", datetime.fromtimestamp(END, UTC))

    async def answer() -> dict[str, Any]:
        counts = await queue.volume(ORG, start, end, granularity, environment=ENV)
        return volume_body(start, end, granularity, counts)

    t_rollup, body = await p50(answer, rounds)
    t_raw, raw = await p50(
        lambda: raw_scoring_volume(engine, start.timestamp(), end.timestamp()), rounds
    )
    got = {
        int(datetime.fromisoformat(d["timestamp"].replace("Z", "+00:00")).timestamp()): (
            d["completed"],
            d["failed"],
        )
        for d in body["data"]
        if d["total"]
    }
    assert got == raw, "scoring volume differs"
    t_table, counted = await p50(lambda: jobs_scoring_volume(engine, start, end), rounds)
    assert volume_body(start, end, granularity, counted) == body, "jobs table differs"
    return [
        ("scoring-volume 90d (rollup)", t_rollup, t_raw),
        ("  the same, vs the jobs table", t_rollup, t_table),
    ]


async def print_sizes(engine: AsyncEngine) -> None:
    """Disk per table (partitions summed into their table), rows per table."""
    async with engine.connect() as conn:
        sizes = (
            await conn.execute(
                text(
                    "SELECT coalesce(p.relname, c.relname) AS name, "
                    "sum(pg_table_size(c.oid)) AS heap, sum(pg_indexes_size(c.oid)) AS idx, "
                    "sum(c.reltuples) AS rows, count(*) AS parts "
                    "FROM pg_class c LEFT JOIN pg_inherits i ON i.inhrelid = c.oid "
                    "LEFT JOIN pg_class p ON p.oid = i.inhparent "
                    "WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace "
                    "AND (c.relname LIKE 'usage%' OR c.relname IN ('jobs', 'job_volume')) "
                    "GROUP BY 1 ORDER BY 2 DESC"
                )
            )
        ).all()
        total = (await conn.execute(text("SELECT pg_database_size(current_database())"))).scalar()
    print(f"  {'table':<18} {'rows (est.)':>14} {'heap':>10} {'indexes':>10} {'parts':>6}")
    for name, heap, idx, n, parts in sizes:
        print(f"  {name:<18} {int(n):>14,} {heap / 2**20:>8.0f}MB {idx / 2**20:>8.0f}MB {parts:>6}")
    print(f"  database total {total / 2**30:.2f} GB")


async def run_postgres(url: str, args: argparse.Namespace) -> None:
    engine = make_engine(url)
    try:
        await create_schema(engine)
        async with engine.connect() as conn:
            have = (await conn.execute(select(func.count()).select_from(usage_calls))).scalar()
        if not have:
            print(f"building {args.calls:,} calls over 90 days into PostgreSQL ({args.build})")
            t = time.perf_counter()
            if args.build == "bulk":
                await bulk_build(engine, args.calls)
            else:
                await build(engine, args.calls)
            print(f"  built in {time.perf_counter() - t:.0f} s")
        await bench(engine, args.rounds)
    finally:
        await engine.dispose()


@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from tests.services import postgres_server

    with postgres_server() as server:
        yield server.create_database("bench_analytics")


async def main_async(args: argparse.Namespace) -> None:
    if args.engine == "postgresql":
        with postgres(args.postgres_url) as url:
            await run_postgres(url, args)
        return
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="tollhouse-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / f"analytics-{args.calls}.db"
    fresh = not db.exists()
    engine = make_engine(f"sqlite:///{db}")
    try:
        await create_schema(engine)
        if fresh:
            print(f"building {args.calls:,} calls over 90 days into {db}")
            t = time.perf_counter()
            await build(engine, args.calls)
            print(f"  built in {time.perf_counter() - t:.0f} s")
        await bench(engine, args.rounds)
    finally:
        await engine.dispose()
        if not args.keep:
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--keep", help="keep (and reuse) the SQLite database in this folder")
    parser.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--postgres-url", help="an existing database (default: a throwaway one)")
    parser.add_argument(
        "--build",
        choices=("bulk", "meter"),
        default="bulk",
        help="PostgreSQL: COPY + rollups in SQL (default), or through the meter",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
