"""Does the queue deliver its capacity? With a cap of C jobs per org and a handler that
takes T seconds, the ceiling is C ÷ T jobs/s per org (seed 004: 500 ÷ 30 s). This runs
N jobs per org through one :class:`Dispatcher` and prints the achieved throughput as a
share of C ÷ T (target ≥ 95 %), on SQLite and PostgreSQL, plus how often the cap was
reached and never passed (sampled from the handler's own concurrency count).

The overall figure counts the whole run: the first claim (every slot starts at once)
and the tail (the last jobs' outcomes written) included. The steady-state figure is
the rate of completions between the end of the first round (the C × orgs-th
completion) and the start of the last one (the C × orgs-th before the end): what a
queue that is never empty delivers.

    .venv/bin/python benchmarks/jobs_capacity.py [--cap 50] [--seconds 1 0.2] [--rounds 20]
        [--orgs 2] [--engine sqlite|postgres|both] [--loop uvloop|asyncio]

``--rounds``: jobs per org = rounds × cap (each slot runs ``rounds`` jobs back to back).
``--loop``: the event loop, uvloop by default as in ``tollhouse serve`` and ``tollhouse
worker`` (asyncio's own when uvloop is not installed).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.jobs_queue import database  # noqa: E402

from tollhouse.cli.common import event_loop_factory  # noqa: E402
from tollhouse.jobs import Dispatcher, Job, NewJob, QueueSettings, open_queue  # noqa: E402
from tollhouse.jobs.schema import create_job_schema  # noqa: E402
from tollhouse.storage.engine import make_engine  # noqa: E402


async def run(
    url: str, cap: int, seconds: float, per_org: int, orgs: int
) -> tuple[float, float | None, int, float, float]:
    """Returns jobs/s overall and in the steady state (None with fewer than 3 rounds),
    the peak running per org, this process's CPU ms per job and the mean idle time of a
    slot between two jobs (ms)."""
    engine = make_engine(url)
    await create_job_schema(engine)
    queue = open_queue(engine, QueueSettings(default_cap=cap))
    names = [f"org{i}" for i in range(orgs)]
    for org in names:
        for i in range(0, per_org, 100):
            n = min(100, per_org - i)
            await queue.enqueue(
                [NewJob(org=org, route="POST /v1/score", payload={}) for _ in range(n)]
            )
    total = per_org * orgs
    running: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    done = asyncio.Event()
    finished = 0
    ended: list[float] = []  # completion times, in order

    async def handler(job: Job) -> dict[str, Any]:
        nonlocal finished
        running[job.org] += 1
        peak[job.org] = max(peak[job.org], running[job.org])
        try:
            await asyncio.sleep(seconds)
        finally:
            running[job.org] -= 1
        return {}

    def on_event(_: Any) -> None:
        nonlocal finished
        finished += 1
        ended.append(time.perf_counter())
        if finished == total:
            done.set()

    d = Dispatcher(queue, handler, slots=cap * orgs, poll_interval=0.05, on_event=on_event)
    # A running server's pool is warm: open the connections the dispatcher and (on
    # PostgreSQL) its listener use before the clock starts.
    async with engine.connect(), engine.connect():
        pass
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    await d.start()
    await done.wait()
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    await d.stop()
    await engine.dispose()
    # Each slot runs per_org ÷ cap jobs back to back; whatever of the run is not spent
    # in handlers is the queue's turnaround (claim, finish, wakeups) plus start and tail.
    idle = (elapsed * cap * orgs - total * seconds) / total
    first, last = cap * orgs - 1, total - cap * orgs - 1
    steady = (last - first) / (ended[last] - ended[first]) if last > first else None
    return total / elapsed, steady, max(peak.values()), cpu / total * 1000, idle * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cap", type=int, default=50)
    parser.add_argument("--seconds", type=float, nargs="+", default=[1.0, 0.2])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--orgs", type=int, default=2)
    parser.add_argument("--engine", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    factory = event_loop_factory() if args.loop == "uvloop" else None
    print(f"event loop: {'uvloop' if factory else 'asyncio'}")
    kinds = ("sqlite", "postgres") if args.engine == "both" else (args.engine,)
    jobs = args.rounds * args.cap
    for seconds in args.seconds:
        ideal = args.cap / seconds * args.orgs
        print(
            f"cap {args.cap} per org × {args.orgs} orgs, handler {seconds * 1000:.0f} ms, "
            f"{jobs} jobs per org: ceiling C ÷ T = {ideal:,.0f} jobs/s"
        )
        for kind in kinds:
            with database(kind) as url:
                if url is None:
                    print(f"  {kind:<9} not installed, skipped")
                    continue
                with asyncio.Runner(loop_factory=factory) as runner:
                    rate, steady, peak, cpu_ms, idle_ms = runner.run(
                        run(url, args.cap, seconds, jobs, args.orgs)
                    )
                verdict = "ok" if rate >= 0.95 * ideal else "below target"
                print(
                    f"  {kind:<9} {rate:>8,.0f} jobs/s = {rate / ideal:6.1%} of C ÷ T "
                    f"(target ≥ 95 %: {verdict}); peak running per org {peak} (cap {args.cap}); "
                    f"slot idle {idle_ms:.0f} ms/job, CPU {cpu_ms:.2f} ms/job"
                )
                if steady is not None:
                    print(
                        f"  {'':<9} {steady:>8,.0f} jobs/s = {steady / ideal:6.1%} of C ÷ T "
                        "in the steady state (first round's end to last round's start)"
                    )


if __name__ == "__main__":
    main()
