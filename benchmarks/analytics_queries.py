"""Analytics reads on SQLite: rollups vs scanning the raw call log, same answers, same run.

Builds a SQLite database with N metered calls spread over 90 days (20 orgs × 10 keys,
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

    .venv/bin/python benchmarks/analytics_queries.py              # 1 M calls, ~1 min
    .venv/bin/python benchmarks/analytics_queries.py --calls 10000000 --keep DIR
                                                                  # 10 M calls, ~10 min

``--keep DIR`` leaves the database in DIR (and reuses it when it is already there), so
the 10 M build is paid once.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, func, literal, select
from sqlalchemy.ext.asyncio import AsyncEngine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tollhouse.analytics import call_counts
from tollhouse.analytics.buckets import DAY, fold
from tollhouse.analytics.catalogue import CATALOGUE
from tollhouse.analytics.metrics import run_metric
from tollhouse.metering import CallRecord, Retention, UsageMeter, prune
from tollhouse.metering.schema import usage_calls
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


async def main_async(args: argparse.Namespace) -> None:
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
    parser.add_argument("--keep", help="keep (and reuse) the database in this folder")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
