"""Job queue speed on SQLite and PostgreSQL, each against a baseline in the same run.

1. Enqueue: jobs/s through ``queue.enqueue`` (one job per call, as ``POST /v1/score``
   does, and 100 per call, as a full batch does) vs the same rows written by a bare
   ``INSERT`` in one transaction per job (the floor any durable enqueue pays).
2. Drain: no-op jobs/s through a :class:`Dispatcher` (claim, run, complete — each a
   transaction, counters included), 3 orgs, cap 500.
3. Dispatch latency: enqueue → handler start with a free slot, same process (the enqueue
   wakes the dispatcher), p50 / p99; on PostgreSQL also from another engine (another
   process's enqueue), polling only vs LISTEN/NOTIFY.

With ``--orgs N --queued M`` it measures the queue at many orgs instead (the rows are
bulk-inserted with their places and counters, as enqueues would leave them):

4. Deep queue: M jobs queued in one org. A 202 (``queue.enqueue`` of one job, which
   answers ``queuePosition``/``estimatedWaitSeconds``) and a poll of the job at the back
   (``queue.standing``), p50/p99, against the statement a poll ran before positions were
   read from the counters (counting the queued jobs ahead) as the baseline.
5. Fairness: M jobs queued across N orgs, equal backlogs. Claims of ``--claim`` jobs in
   a loop (each claimed job completed in the next claim's transaction, as the dispatcher
   does): the spread of first-claim time across orgs, and the jobs each org got within
   the first 2 × N claimed.
6. Claim latency under load: the same claim loop while another task submits one job at
   a time to random orgs: claim (finish + claim) p50/p99 and the 202's p50/p99 meanwhile.

    .venv/bin/python benchmarks/jobs_queue.py [--engine sqlite|postgres|both] [--jobs 2000]
    .venv/bin/python benchmarks/jobs_queue.py --orgs 1000 --queued 100000 [--claim 50]

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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import delete  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: E402

from tollhouse.jobs import Dispatcher, Job, NewJob, QueueSettings, open_queue  # noqa: E402
from tollhouse.jobs.schema import JOB_TABLES, create_job_schema, job_volume, jobs  # noqa: E402
from tollhouse.storage.engine import make_engine  # noqa: E402

ROUTE = "POST /v1/score"
ORGS = ("acme", "globex", "initech")
PAYLOAD = {"applicationId": "app", "jobId": "job", "candidate": {"name": "A", "resume": "r"}}


async def _wipe(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        for table in (*JOB_TABLES, job_volume):
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
                    environment="PRODUCTION",
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


def _pct(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)]
    return f"p50 {statistics.median(ordered) * 1000:6.2f} ms, p99 {p99 * 1000:6.2f} ms"


async def _bulk_queue(engine: AsyncEngine, orgs: int, per_org: int) -> list[str]:
    """``per_org`` queued jobs in each of ``orgs`` orgs (``org10000``, ``org10001``, …),
    generated by the database in one statement, with their places and the counters an
    enqueue would leave (``queued``, ``enqueued``); returns the org names."""
    from sqlalchemy import DateTime, bindparam, text

    from tollhouse.jobs.schema import job_orgs
    from tollhouse.jobs.statements import dumps

    pg = engine.dialect.name == "postgresql"
    job_id = "substr(md5(random()::text), 1, 20)" if pg else "lower(hex(randomblob(10)))"
    fill = text(
        "WITH RECURSIVE p(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM p WHERE n < :per),"
        " o(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM o WHERE i < :orgs - 1)"
        " INSERT INTO jobs (id, org_id, environment, route, payload, status, attempts,"
        "  max_attempts, run_after, created_at, place)"
        f" SELECT 'sj_' || {job_id}, 'org' || (10000 + o.i), 'PRODUCTION', :route,"
        "  :payload, 'queued', 0, 5, :now, :now, p.n"
        " FROM p, o ORDER BY p.n, o.i"
    ).bindparams(bindparam("now", type_=DateTime(timezone=True)))
    names = [f"org{10000 + i}" for i in range(orgs)]
    async with engine.begin() as conn:
        await conn.execute(
            fill,
            {
                "per": per_org,
                "orgs": orgs,
                "route": ROUTE,
                "payload": dumps(PAYLOAD),
                "now": _now(),
            },
        )
        await conn.execute(
            job_orgs.insert(),
            [
                {
                    "org_id": org,
                    "environment": "PRODUCTION",
                    "running": 0,
                    "queued": per_org,
                    "enqueued": per_org,
                    "claimed_through": 0,
                    "last_served_at": datetime(1970, 1, 1, tzinfo=UTC),
                    "samples": 0,
                }
                for org in names
            ],
        )
    async with engine.connect() as conn:
        if pg:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("VACUUM ANALYZE jobs")
            await conn.exec_driver_sql("VACUUM ANALYZE job_orgs")
        else:
            await conn.exec_driver_sql("ANALYZE")
    return names


async def bench_deep(engine: AsyncEngine, queued: int, samples: int) -> None:
    from sqlalchemy import func, select

    await _wipe(engine)
    t0 = time.perf_counter()
    [deep] = await _bulk_queue(engine, 1, queued)
    print(f"  built {queued:,} queued jobs in one org in {time.perf_counter() - t0:.1f} s")
    queue = open_queue(engine, QueueSettings())
    await queue.record_worker("bench")  # so the 202 quotes a wait, as in production
    accepted, polled, counted = [], [], []
    last = None
    for _ in range(samples):
        t = time.perf_counter()
        [done] = await queue.enqueue([NewJob(org=deep, route=ROUTE, payload=PAYLOAD)])
        accepted.append(time.perf_counter() - t)
        last = done
    assert last is not None and last.standing is not None
    back = last.job
    count_ahead = (
        select(func.count())
        .select_from(jobs)
        .where(
            jobs.c.org_id == back.org,
            jobs.c.environment == back.environment,
            jobs.c.status == "queued",
            jobs.c.seq < back.seq,
        )
    )
    for _ in range(samples):
        t = time.perf_counter()
        standing = await queue.standing(back)
        polled.append(time.perf_counter() - t)
        assert standing is not None and standing.position == last.standing.position
        t = time.perf_counter()
        async with engine.connect() as conn:
            ahead = (await conn.execute(count_ahead)).scalar_one()
        counted.append(time.perf_counter() - t)
        assert ahead + 1 == standing.position
    print(
        f"  202 at position {last.standing.position:,} "
        f"(estimatedWaitSeconds {last.standing.wait_seconds}): {_pct(accepted)}"
    )
    print(f"  poll of the job at the back, read:    {_pct(polled)}")
    print(f"  baseline, counting the queued ahead:  {_pct(counted)}")
    print(f"  poll ÷ baseline (p50): {statistics.median(polled) / statistics.median(counted):.3f}")


async def _claim_loop(queue: Any, claim: int, rounds: int, on_claim: Any) -> list[float]:
    """``rounds`` claims of ``claim`` jobs, each completing the previous claim's jobs in
    its transaction (as the dispatcher's finish-and-claim does); returns their times."""
    from tollhouse.jobs.model import Finish

    held: list[Any] = []
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        _, held = await queue.finish_and_claim(
            [Finish(lease, result={}) for lease in held], "bench", claim
        )
        times.append(time.perf_counter() - t)
        on_claim(held, time.perf_counter())
    return times


async def bench_orgs(engine: AsyncEngine, orgs: int, queued: int, claim: int) -> None:
    import random

    await _wipe(engine)
    t0 = time.perf_counter()
    names = await _bulk_queue(engine, orgs, queued // orgs)
    print(
        f"  built {queued // orgs * orgs:,} queued jobs, {queued // orgs} in each of "
        f"{orgs:,} orgs, in {time.perf_counter() - t0:.1f} s"
    )
    queue = open_queue(engine, QueueSettings())
    first: dict[str, float] = {}
    got: dict[str, int] = dict.fromkeys(names, 0)
    claimed = 0
    start = time.perf_counter()

    def seen(leases: list[Any], at: float) -> None:
        nonlocal claimed
        for lease in leases:
            first.setdefault(lease.job.org, at - start)
            if claimed < 2 * orgs:
                got[lease.job.org] += 1
            claimed += 1

    rounds = -(-2 * orgs // claim) + 1
    times = await _claim_loop(queue, claim, rounds, seen)
    spread = max(first.values()) - min(first.values())
    print(
        f"  fairness: every org's first job claimed within {spread * 1000:.0f} ms "
        f"({len(first):,} of {orgs:,} orgs served, first claim at "
        f"{min(first.values()) * 1000:.1f} ms, last at {max(first.values()) * 1000:.0f} ms; "
        f"{-(-orgs // claim)} claims of {claim} reach them all)"
    )
    print(
        f"  jobs per org within the first {2 * orgs:,} claimed: "
        f"min {min(got.values())}, max {max(got.values())}"
    )
    print(f"  claim of {claim} (finish + claim, idle):   {_pct(times)}")
    accepted: list[float] = []
    stop = asyncio.Event()
    rng = random.Random(1)

    async def submit() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            org = names[rng.randrange(orgs)]
            await queue.enqueue([NewJob(org=org, route=ROUTE, payload=PAYLOAD)])
            accepted.append(time.perf_counter() - t)

    submitter = asyncio.create_task(submit())
    times = await _claim_loop(queue, claim, 40, lambda *_: None)
    stop.set()
    await submitter
    print(f"  claim of {claim} while submitting:      {_pct(times)}")
    print(f"  202 while claiming ({len(accepted):,}): {_pct(accepted)}")


async def run_scale(kind: str, url: str, orgs: int, queued: int, claim: int) -> None:
    engine = make_engine(url)
    await create_job_schema(engine)
    try:
        print(f"\n== {kind}: {orgs:,} orgs, {queued:,} jobs queued")
        await bench_deep(engine, queued, 150)
        await bench_orgs(engine, orgs, queued, claim)
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--orgs", type=int, help="measure at this many orgs instead")
    parser.add_argument("--queued", type=int, default=100_000, help="jobs queued (--orgs)")
    parser.add_argument("--claim", type=int, default=50, help="jobs per claim (--orgs)")
    args = parser.parse_args()
    kinds = ("sqlite", "postgres") if args.engine == "both" else (args.engine,)
    for kind in kinds:
        with database(kind) as url:
            if url is None:
                print(f"\n== {kind}: not installed, skipped")
                continue
            if args.orgs:
                asyncio.run(run_scale(kind, url, args.orgs, args.queued, args.claim))
            else:
                asyncio.run(run_engine(kind, url, args.jobs))


if __name__ == "__main__":
    main()
