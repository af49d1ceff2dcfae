"""Metered-call ingestion: the hot path, and calls/s into SQLite and PostgreSQL.

1. Hot path: ``UsageMeter.record`` per call (what the gateway pays), against a bare
   ``list.append`` of the same record as the floor.
2. Ingestion into each engine: N calls recorded and flushed once per simulated second
   (rollups 1 m / 1 h / 1 d with histograms, plus the raw call log), as calls/s end to
   end, against the baseline of writing one plain 7-column row per call (no aggregation,
   the driver's executemany, one transaction per second) in the same run; and with the
   raw log switched off (rollups only). On PostgreSQL also the raw log alone
   (``usage_calls`` rows by the flusher's binary ``COPY`` into the day partitions, one
   transaction per simulated second). On PostgreSQL, also with the portable per-row
   statements instead of the bulk path (``unnest`` upserts, ``COPY``), for comparison.

Traffic: 20 orgs × 10 keys (Zipf: a few keys do most calls), two or three routes per
key, 2,000 calls per second by default. Dimension sets per minute are what rollups cost;
calls per minute are what they save.

    .venv/bin/python benchmarks/metering_ingest.py [--calls 200000] [--rate 2000]
        [--postgres-url URL | --no-postgres]

Without ``--postgres-url`` a throwaway PostgreSQL cluster is started (tests/services.py)
when its binaries are installed; ``--no-postgres`` skips it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table
from sqlalchemy.ext.asyncio import AsyncEngine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tollhouse.metering import CallRecord, UsageMeter
from tollhouse.metering.aggregator import Dimensions
from tollhouse.metering.flusher import _copy_calls as copy_calls
from tollhouse.metering.flusher import canonical, driver_sql, log_head
from tollhouse.metering.partitions import days_of
from tollhouse.schema import create_schema
from tollhouse.storage.engine import make_engine

T0 = 1_767_225_600.0
ROUTES = [
    ("POST", "/v1/score", "SCORING"),
    ("GET", "/v1/score/{scoringJobId}", "SCORING"),
    ("POST", "/v1/criteria/generate", "CRITERIA_AI"),
    ("GET", "/v1/criteria/{jobId}", "CRITERIA"),
    ("PATCH", "/v1/criteria/{jobId}/{criterionId}", "CRITERIA"),
    ("GET", "/v1/rate-limit/status", "RATE_LIMIT_STATUS"),
]
LABELS = [{}, {"db": "movies"}, {"db": "books", "scenario": "home", "reco_type": "ITEMS"}]

plain = MetaData()
plain_calls = Table(
    "bench_plain_calls",
    plain,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("time_us", BigInteger),
    Column("org", String(64)),
    Column("key_id", String(64)),
    Column("method", String(16)),
    Column("route", String(400)),
    Column("status", Integer),
    Column("duration_us", BigInteger),
)


def traffic(n: int, rate: float, seed: int = 1) -> list[CallRecord]:
    """``n`` calls at ``rate`` per second: 20 orgs × 10 keys, a few keys doing most of the
    traffic (Zipf), each key using two or three routes and one label set."""
    rng = random.Random(seed)
    keys = []
    for k in range(200):
        routes = rng.sample(ROUTES, rng.randint(2, 3))
        keys.append((f"org{k % 20}", f"key_{k}", routes, LABELS[k % len(LABELS)]))
    weights = [1 / (k + 1) ** 1.1 for k in range(len(keys))]
    picks = rng.choices(keys, weights, k=n)
    out = []
    for i, (org, key, routes, labels) in enumerate(picks):
        method, route, group = rng.choice(routes)
        out.append(
            CallRecord(
                T0 + i / rate,
                org,
                "PRODUCTION",
                key,
                None,
                group,
                method,
                route,
                rng.choice((200, 200, 200, 201, 404, 429, 500)),
                rng.lognormvariate(3, 1),
                labels,
            )
        )
    return out


def dims_of(c: CallRecord) -> Dimensions:
    """A call's dimension set, as the aggregator keys it."""
    labels = tuple(c.labels.items())
    return (c.org, c.environment, c.key_id, c.tenant or "", c.endpoint_group or "", c.method,
            c.route or "", labels)  # fmt: skip


def bench_hot_path(calls: list[CallRecord]) -> tuple[float, float]:
    best_meter = best_append = 0.0
    for _ in range(3):
        sink: list[CallRecord] = []
        append = sink.append
        t = time.perf_counter()
        for c in calls:
            append(c)
        best_append = max(best_append, len(calls) / (time.perf_counter() - t))
        meter = UsageMeter(make_engine("sqlite:///:memory:"))
        record = meter.record
        t = time.perf_counter()
        for c in calls:
            record(c)
        best_meter = max(best_meter, len(calls) / (time.perf_counter() - t))
    return best_meter, best_append


async def bench_engine(url: str, calls: list[CallRecord], rate: float) -> dict[str, float]:
    engine: AsyncEngine = make_engine(url)
    await create_schema(engine)
    async with engine.begin() as conn:
        await conn.run_sync(plain.create_all)
    out: dict[str, float] = {}
    try:
        # Baseline: one plain row per call, same driver, executemany in chunks.
        rows = [
            {
                "time_us": round(c.time * 1e6),
                "org": c.org,
                "key_id": c.key_id,
                "method": c.method,
                "route": c.route,
                "status": c.status,
                "duration_us": round(c.duration_ms * 1000),
            }
            for c in calls
        ]
        columns = tuple(rows[0])
        t = time.perf_counter()
        per_flush = max(1, int(rate))
        for i in range(0, len(rows), per_flush):
            async with engine.begin() as conn:
                sql = driver_sql(conn, plain_calls.insert(), columns)
                chunk = [tuple(r.values()) for r in rows[i : i + per_flush]]
                await conn.exec_driver_sql(sql, chunk)
        out["plain rows"] = len(calls) / (time.perf_counter() - t)
        if engine.dialect.name == "postgresql":
            # The raw log alone (usage_calls, day partitions): the flusher's binary COPY
            # of each simulated second's rows in a transaction of its own.
            log_rows = [
                (*log_head(canonical(dims_of(c))), round(c.time * 1e6), c.status,
                 round(c.duration_ms * 1000))
                for c in calls
            ]  # fmt: skip
            writer = UsageMeter(engine).flusher.writer
            await writer.prepare_days(days_of([r[8] for r in log_rows]))
            t = time.perf_counter()
            for i in range(0, len(log_rows), per_flush):
                async with engine.begin() as conn:
                    await copy_calls(conn, log_rows[i : i + per_flush])
            out["raw log alone, COPY"] = len(calls) / (time.perf_counter() - t)
        passes = [("rollups only", False, True), ("rollups + raw log", True, True)]
        if engine.dialect.name == "postgresql":
            # The portable per-row statements, for comparison with the bulk path
            # (unnest upserts and COPY) in the same run.
            passes += [("rollups only, per-row", False, False), ("+ raw log, per-row", True, False)]
        for name, keep, bulk in passes:
            meter = UsageMeter(engine, keep_raw_log=keep, raw_log_cap=len(calls))
            meter.flusher.writer.bulk_postgres = bulk
            t = time.perf_counter()
            # Flush once per simulated second of traffic, as the background flusher does.
            per_flush = max(1, int(rate))
            for i in range(0, len(calls), per_flush):
                for c in calls[i : i + per_flush]:
                    meter.record(c)
                await meter.flush()
            out[name] = len(calls) / (time.perf_counter() - t)
    finally:
        await engine.dispose()
    return out


@contextlib.contextmanager
def postgres(url: str | None, skip: bool) -> Iterator[str | None]:
    if skip:
        yield None
        return
    if url:
        yield url
        return
    try:
        from tests.services import _pg_bindir, postgres_server
    except ImportError:
        yield None
        return
    if _pg_bindir() is None:
        yield None
        return
    with postgres_server() as server:
        yield server.create_database("bench_ingest")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=2000.0, help="calls per second")
    parser.add_argument("--postgres-url")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    calls = traffic(args.calls, args.rate)
    meter_rate, append_rate = bench_hot_path(calls)
    print(f"hot path, {args.calls:,} calls")
    print(f"  UsageMeter.record     {meter_rate:>12,.0f} calls/s  ({1e6 / meter_rate:.2f} µs/call)")
    print(f"  list.append (floor)   {append_rate:>12,.0f} calls/s")
    with tempfile.TemporaryDirectory() as tmp, postgres(args.postgres_url, args.no_postgres) as pg:
        engines = [("SQLite", f"sqlite:///{tmp}/bench.db")]
        if pg:
            engines.append(("PostgreSQL", pg))
        for label, url in engines:
            rates = asyncio.run(bench_engine(url, calls, args.rate))
            base = rates["plain rows"]
            print(
                f"ingestion into {label}: {args.calls:,} calls at {args.rate:,.0f}/s, "
                "flushed every simulated second"
            )
            for name, rate in rates.items():
                print(f"  {name:<20} {rate:>12,.0f} calls/s   {rate / base:5.2f}× plain rows")


if __name__ == "__main__":
    main()
