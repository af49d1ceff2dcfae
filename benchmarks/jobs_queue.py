"""Job queue speed on SQLite and PostgreSQL, each against a baseline in the same run.

1. Enqueue: jobs/s through ``queue.enqueue`` (one job per call, as ``POST /v1/score``
   does, and 100 per call, as a full batch does) vs the same rows written by a bare
   ``INSERT`` in one transaction per job (the floor any durable enqueue pays).
2. Drain: no-op jobs/s through a :class:`Dispatcher` (claim, run, complete — each a
   transaction, counters included), 3 orgs, cap 500.
3. Dispatch latency: enqueue → handler start with a free slot, same process (the enqueue
   wakes the dispatcher), p50 / p99; on PostgreSQL also from another engine (another
   process's enqueue), polling only vs LISTEN/NOTIFY.

    .venv/bin/python benchmarks/jobs_queue.py [--engine sqlite|postgres|both] [--jobs 2000]

PostgreSQL is a throwaway cluster started on loopback (tests/services.py; skipped when
PostgreSQL is not installed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import delete  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: E402

from tollhouse.jobs import Dispatcher, Job, NewJob, QueueSettings, open_queue  # noqa: E402
from tollhouse.jobs.schema import JOB_TABLES, create_job_schema, jobs  # noqa: E402
from tollhouse.storage.engine import make_engine  # noqa: E402

ROUTE = "POST /v1/score"
ORGS = ("acme", "globex", "initech")
PAYLOAD = {"applicationId": "app", "jobId": "job", "candidate": {"name": "A", "resume": "r"}}


async def _wipe(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        for table in JOB_TABLES:
            await conn.execute(delete(table))


def _new(n: int) -> list[NewJob]:
    return [NewJob(org=ORGS[i % 3], route=ROUTE, payload=PAYLOAD) for i in range(n)]


async def bench_enqueue(engine: AsyncEngine, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    await _wipe(engine)
    t0 = time.perf_counter()
    async with engine.connect():
        pass
    for i in range(n):
        async with engine.begin() as conn:
            await conn.execute(
                jobs.insert().values(
                    id=f"raw_{i}",
                    org_id=ORGS[i % 3],
                    route=ROUTE,
                    payload="{}",
                    status="queued",
                    attempts=0,
                    max_attempts=5,
                    run_after=_now(),
                    created_at=_now(),
                )
            )
    out["bare insert, 1/txn"] = n / (time.perf_counter() - t0)
    await _wipe(engine)
    queue = open_queue(engine, QueueSettings())
    t0 = time.perf_counter()
    for job in _new(n):
        await queue.enqueue([job])
    out["enqueue, 1/call"] = n / (time.perf_counter() - t0)
    await _wipe(engine)
    batch = _new(n)
    t0 = time.perf_counter()
    for i in range(0, n, 100):
        await queue.enqueue(batch[i : i + 100])
    out["enqueue, 100/call"] = n / (time.perf_counter() - t0)
    return out


def _now() -> Any:
    from tollhouse.jobs.model import utc_now

    return utc_now()


async def bench_drain(engine: AsyncEngine, n: int) -> float:
    await _wipe(engine)
    queue = open_queue(engine, QueueSettings(default_cap=500))
    for i in range(0, n, 100):
        await queue.enqueue(_new(n)[i : i + 100])
    done = asyncio.Event()
    finished = 0

    async def noop(job: Job) -> dict[str, Any]:
        return {}

    def on_event(_: Any) -> None:
        nonlocal finished
        finished += 1
        if finished == n:
            done.set()

    d = Dispatcher(queue, noop, slots=500, poll_interval=0.05, on_event=on_event)
    t0 = time.perf_counter()
    await d.start()
    await done.wait()
    elapsed = time.perf_counter() - t0
    await d.stop()
    return n / elapsed


async def bench_latency(engine: AsyncEngine, samples: int) -> tuple[float, float]:
    await _wipe(engine)
    queue = open_queue(engine, QueueSettings())
    started: asyncio.Queue[float] = asyncio.Queue()

    async def handler(job: Job) -> dict[str, Any]:
        started.put_nowait(time.perf_counter())
        return {}

    d = Dispatcher(queue, handler, slots=10, poll_interval=1.0)
    await d.start()
    lat = []
    for _ in range(samples):
        t0 = time.perf_counter()
        await queue.enqueue(_new(1))
        lat.append((await started.get()) - t0)
        await asyncio.sleep(0.005)
    await d.stop()
    lat.sort()
    return statistics.median(lat), lat[int(len(lat) * 0.99) - 1]


async def bench_cross_process(url: str, samples: int, listen: bool) -> tuple[float, float]:
    """Enqueue through one engine (the API process), run on another (a worker process
    polling every 0.5 s, the CLI default): enqueue → handler start, with and without
    LISTEN/NOTIFY."""
    worker_engine, api_engine = make_engine(url), make_engine(url)
    try:
        await _wipe(worker_engine)
        api = open_queue(api_engine, QueueSettings())
        started: asyncio.Queue[float] = asyncio.Queue()

        async def handler(job: Job) -> dict[str, Any]:
            started.put_nowait(time.perf_counter())
            return {}

        d = Dispatcher(
            open_queue(worker_engine, QueueSettings()),
            handler,
            slots=10,
            poll_interval=0.5,
            listen=listen,
        )
        await d.start()
        lat = []
        for _ in range(samples):
            t0 = time.perf_counter()
            await api.enqueue(_new(1))
            lat.append((await started.get()) - t0)
            # Let the job finish and the dispatcher go idle (else the finishing
            # transaction's refill claims the next job, whatever the wakeups).
            await asyncio.sleep(0.05)
        await d.stop()
    finally:
        await worker_engine.dispose()
        await api_engine.dispose()
    lat.sort()
    return statistics.median(lat), lat[int(len(lat) * 0.99) - 1]


@contextlib.contextmanager
def database(kind: str) -> Iterator[str | None]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/bench.db"
        return
    from tests import services

    if services._pg_bindir() is None:
        yield None
        return
    with services.postgres_server() as pg:
        yield pg.create_database("bench")


async def run_engine(kind: str, url: str, n: int) -> None:
    engine = make_engine(url)
    await create_job_schema(engine)
    try:
        rates = await bench_enqueue(engine, n)
        base = rates["bare insert, 1/txn"]
        print(f"\n== {kind}")
        for name, rate in rates.items():
            print(f"  {name:<22} {rate:>9,.0f} jobs/s   {rate / base:5.2f}× bare insert")
        drain = await bench_drain(engine, n)
        print(
            f"  {'drain (no-op jobs)':<22} {drain:>9,.0f} jobs/s   {drain / base:5.2f}× bare insert"
        )
        p50, p99 = await bench_latency(engine, 200)
        print(f"  dispatch latency       p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms")
        if kind == "postgres":
            for listen in (False, True):
                p50, p99 = await bench_cross_process(url, 60, listen)
                how = "LISTEN/NOTIFY" if listen else "poll 0.5 s only"
                print(
                    f"  other-process enqueue → start ({how}): "
                    f"p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms"
                )
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    kinds = ("sqlite", "postgres") if args.engine == "both" else (args.engine,)
    for kind in kinds:
        with database(kind) as url:
            if url is None:
                print(f"\n== {kind}: not installed, skipped")
                continue
            asyncio.run(run_engine(kind, url, args.jobs))


if __name__ == "__main__":
    main()
