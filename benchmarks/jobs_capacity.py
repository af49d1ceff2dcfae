"""Does the queue deliver its capacity? With a cap of C jobs per org and a handler that
takes T seconds, the ceiling is C ÷ T jobs/s per org (the scoring API shape's: 500 ÷ 30 s).
This runs N jobs per org through one :class:`Dispatcher` and prints the achieved throughput
as a share of C ÷ T (target ≥ 95 %), on SQLite and PostgreSQL, plus how often the cap was
reached and never passed (sampled from the handler's own concurrency count).

The overall figure counts the whole run: the first claim (every slot starts at once)
and the tail (the last jobs' outcomes written) included. The steady-state figure is
the rate of completions between the end of the first round (the C × orgs-th
completion) and the start of the last one (the C × orgs-th before the end): what a
queue that is never empty delivers.

Both count completions between two moments, so both move with how the rounds are laid
out, not only with the queue: every slot starts at once, handlers that vary in length
smear the rounds apart as the run goes on (the last round then drains slot by slot, with
nothing left to claim), and the steady-state window holds fewer completions than a
steady rate would fill it with: the jobs in flight when it ends have run longer, on
average, than those in flight when it starts (the rounds are wider by then). A third
line says where the slots were over that window, averaged over time (exact, from the
handlers' and outcomes' stamps): running a handler, between a handler's end and its
outcome's write (the transaction that also refills the slot), or empty (no job held).
Running ÷ C is the queue's part of the share of C ÷ T, T ÷ the mean handler time the
handler's (over HTTP: the upstream's).

    .venv/bin/python benchmarks/jobs_capacity.py [--cap 50] [--seconds 1 0.2] [--rounds 20]
        [--orgs 2] [--engine sqlite|postgres|both] [--loop uvloop|asyncio] [--over http]

``--over http``: the handler is the product's own (``handler = "upstream"``), calling the
bundled example run standalone in another process (``tollhouse example serve`` on the same
database, ``TOLLHOUSE_EXAMPLE_PROCESSING_SECONDS`` = T) over HTTP, with the connection pool
the worker gives it (one connection per slot). It also checks ``estimatedWaitSeconds``: once
the first round has finished, a probe job is queued behind the org's backlog, and the wait
the queue quoted for it is compared with the wait it saw (target: within 20 %). The probe
is not one of the N jobs counted: queued behind them all, it is claimed when the last
round's first slot frees up and runs on after that round, alone, so the rates are taken up
to the last of the N outcomes (a line says when the probe's came and the overall rate had
it been counted). Figures like the scoring API shape's: ``--over http --cap 500 --orgs 1
--seconds 2 --rounds 10``.

``--rounds``: jobs per org = rounds × cap (each slot runs ``rounds`` jobs back to back).
``--loop``: the event loop, uvloop by default as in ``tollhouse serve`` and ``tollhouse
worker`` (asyncio's own when uvloop is not installed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.jobs_queue import database  # noqa: E402

from tollhouse.cli.common import event_loop_factory  # noqa: E402
from tollhouse.jobs import Dispatcher, Job, NewJob, QueueSettings, open_queue  # noqa: E402
from tollhouse.jobs.handlers import UpstreamHandler  # noqa: E402
from tollhouse.jobs.schema import create_job_schema  # noqa: E402
from tollhouse.storage.engine import make_engine  # noqa: E402


@dataclass
class Probe:
    """The wait the queue quoted for a job queued behind a full cap, and the one it saw."""

    quoted: float = 0.0
    queued_at: float = 0.0
    started_at: float = 0.0

    @property
    def observed(self) -> float:
        return self.started_at - self.queued_at


JOB = {
    "jobId": "job_1",
    "title": "Backend Engineer",
    "description": "Python, PostgreSQL and Redis; 5 years building APIs.",
}
CANDIDATE = {"name": "Ada", "resume": "Built Python APIs on PostgreSQL and Redis for 6 years."}


async def run(
    url: str, cap: int, seconds: float, per_org: int, orgs: int, upstream: str | None = None
) -> tuple[float, float | None, int, float, float, Probe | None]:
    """Returns jobs/s overall and in the steady state (None with fewer than 3 rounds),
    the peak running per org, this process's CPU ms per job, the mean idle time of a
    slot between two jobs (ms), and (over HTTP) the wait-estimate probe."""
    engine = make_engine(url)
    await create_job_schema(engine)
    queue = open_queue(engine, QueueSettings(default_cap=cap))
    names = [f"org{i}" for i in range(orgs)]
    body: dict[str, Any] = {}
    if upstream is not None:
        body = {"applicationId": "app", "jobId": "job_1", "candidate": CANDIDATE}
        async with httpx.AsyncClient(base_url=upstream) as client:
            for org in names:
                made = await client.post(
                    "/v1/criteria/generate",
                    json=JOB,
                    headers={"x-tollhouse-org": org, "x-tollhouse-environment": "PRODUCTION"},
                )
                made.raise_for_status()
    for org in names:
        for i in range(0, per_org, 100):
            n = min(100, per_org - i)
            await queue.enqueue(
                [NewJob(org=org, route="POST /v1/score", payload=body) for _ in range(n)]
            )
    total = per_org * orgs
    running: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    done = asyncio.Event()
    finished = 0
    failed: list[Any] = []
    ended: list[float] = []  # completion times, in order
    probe: Probe | None = None
    probe_id: str | None = None
    calls: list[float] = []  # seconds each upstream call took
    starts: list[float] = []  # when each handler started, and ended (refill lag)
    ends: list[float] = []
    call = (
        UpstreamHandler(base_url=upstream, timeout=seconds + 30, max_connections=cap * orgs)
        if upstream is not None
        else None
    )

    async def handler(job: Job) -> dict[str, Any]:
        nonlocal finished
        if job.id == probe_id and probe is not None:
            probe.started_at = time.perf_counter()
        running[job.org] += 1
        peak[job.org] = max(peak[job.org], running[job.org])
        starts.append(time.perf_counter())
        try:
            if call is not None:
                started = time.perf_counter()
                try:
                    return await call(job)
                finally:
                    calls.append(time.perf_counter() - started)
            await asyncio.sleep(seconds)
        finally:
            running[job.org] -= 1
            ends.append(time.perf_counter())
        return {}

    async def queue_probe() -> None:
        nonlocal probe, probe_id
        probe = Probe(queued_at=time.perf_counter())
        [accepted] = await queue.enqueue(
            [NewJob(org=names[0], route="POST /v1/score", payload=body)]
        )
        probe_id = accepted.job.id
        assert accepted.standing is not None
        probe.quoted = accepted.standing.wait_seconds

    probe_ended: list[float] = []

    def on_event(event: Any) -> None:
        nonlocal finished
        if event.outcome != "completed":
            failed.append(event)  # (a retried attempt also counts as one: reported)
        if event.job_id == probe_id:
            # The probe is queued behind the whole backlog, so it is claimed only when
            # the last round's first slot frees up and runs alone after it: counting it
            # would add most of one more round to the run for one job.
            probe_ended.append(time.perf_counter())
        else:
            finished += 1
            ended.append(time.perf_counter())
        if finished == cap * orgs and upstream is not None and probe is None:
            # The first round is over (the mean processing time is known): queue a probe
            # behind the backlog.
            asyncio.get_running_loop().create_task(queue_probe())
        if finished == total and (upstream is None or probe_ended):
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
    # Up to the last job's outcome (the probe's, over HTTP, is not one of them).
    elapsed = ended[-1] - t0
    cpu = time.process_time() - cpu0
    await d.stop()
    if call is not None:
        await call.aclose()
    await engine.dispose()
    if failed:
        print(f"  {len(failed)} jobs did not complete, e.g. {failed[0]}")
    if calls:
        calls.sort()
        p50, p99 = calls[len(calls) // 2], calls[int(len(calls) * 0.99)]
        mean = sum(calls) / len(calls)
        print(
            f"  upstream calls: mean {mean * 1000:.0f} ms, p50 {p50 * 1000:.0f} ms, "
            f"p99 {p99 * 1000:.0f} ms, max {calls[-1] * 1000:.0f} ms, "
            f"{len(calls) - total - len(probe_ended)} retried "
            f"(the example's processing time is {seconds * 1000:.0f} ms)"
        )
    if upstream is not None:
        print_refill(starts, ends, cap * orgs)
    if probe_ended:
        print(
            f"  the probe's outcome came {probe_ended[0] - ended[-1]:+.2f} s after the last "
            f"of the {total} jobs' (not counted: {(total + 1) / (probe_ended[0] - t0):,.0f} "
            f"jobs/s with it)"
        )
    # Each slot runs per_org ÷ cap jobs back to back; whatever of the run is not spent
    # in handlers is the queue's turnaround (claim, finish, wakeups) plus start and tail.
    idle = (elapsed * cap * orgs - total * seconds) / total
    first, last = cap * orgs - 1, total - cap * orgs - 1
    steady = (last - first) / (ended[last] - ended[first]) if last > first else None
    if last > first:
        print_occupancy(starts, ends, ended, (ended[first], ended[last]), cap * orgs, seconds)
    return total / elapsed, steady, max(peak.values()), cpu / total * 1000, idle * 1000, probe


def print_refill(starts: list[float], ends: list[float], slots: int) -> None:
    """Where a round's time goes between two calls. Slots are refilled in the order they
    free up, so the (k + slots)-th handler start refills the slot the k-th end freed: the
    gap between them is that slot's idle time (the outcome's write, the claim, the
    spawn, and the event loop's queue when a whole round ends at once)."""
    starts, ends = sorted(starts), sorted(ends)
    lags = sorted(starts[k + slots] - ends[k] for k in range(min(len(ends), len(starts) - slots)))
    if not lags:
        return
    spread = sorted(ends[k + slots - 1] - ends[k] for k in range(0, len(ends) - slots + 1, slots))

    def ms(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(len(values) * q))] * 1000

    print(
        f"  refill: a slot's next call starts {ms(lags, 0.5):.0f} ms (p50), "
        f"{ms(lags, 0.9):.0f} ms (p90), {sum(lags) / len(lags) * 1000:.0f} ms (mean) after "
        f"its last call ended; a round's {slots} ends arrive within "
        f"{ms(spread, 0.5):.0f} ms (median round)"
    )


def print_occupancy(
    starts: list[float],
    ends: list[float],
    written: list[float],
    window: tuple[float, float],
    slots: int,
    seconds: float,
) -> None:
    """Where the slots were over the steady-state window, on average: running a handler,
    between a handler's end and its outcome's write (``written``: the dispatcher's event,
    after the transaction that also refilled the slot), or empty (no job held). Exact,
    not sampled: over [a, b], the time-weighted count of stamps passed is
    Σ (b − clamp(stamp, a, b)) ÷ (b − a), so no pairing of starts with ends is needed.

    Counting completions between two moments (the steady-state rate) is swayed by where
    those moments fall in the rounds; occupancy is not. With it, the share of C ÷ T the
    queue delivers splits into the two factors: slots running handlers ÷ C (the queue's
    part) × T ÷ the mean handler time (the upstream's part)."""
    a, b = window
    if b <= a or not ends:
        return

    def passed(stamps: list[float]) -> float:
        return sum(b - min(max(s, a), b) for s in stamps) / (b - a)

    running = passed(starts) - passed(ends)
    writing = passed(ends) - passed(written)
    empty = max(0.0, slots - running - writing)
    # Every handler started has ended by now: the mean over all of them.
    mean = (sum(ends) - sum(starts)) / len(ends)
    share = running / slots * (seconds / mean)
    print(
        f"  slots in the steady state (time-weighted, of {slots}): {running:.1f} running "
        f"handlers, {writing:.1f} between a handler's end and its outcome's write, "
        f"{empty:.1f} empty; {running / slots:.1%} running × T ÷ mean handler time "
        f"({mean * 1000:.0f} ms) = {share:.1%} of C ÷ T"
    )


@contextmanager
def example_upstream(url: str, seconds: float) -> Iterator[str]:
    """`tollhouse example serve` in its own process, on the benchmark's database."""
    port = free_port()
    env = {**os.environ, "TOLLHOUSE_EXAMPLE_PROCESSING_SECONDS": str(seconds)}
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("tollhouse")),
            "example",
            "serve",
            "--port",
            str(port),
            "--database-url",
            url,
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(base + "/v1/score/none", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("tollhouse example serve did not start") from None
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cap", type=int, default=50)
    parser.add_argument("--seconds", type=float, nargs="+", default=[1.0, 0.2])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--orgs", type=int, default=2)
    parser.add_argument("--engine", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--over", choices=("memory", "http"), default="memory")
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
                with ExitStack() as stack:
                    upstream = None
                    if args.over == "http":
                        # The example keeps its results in a database too: on SQLite a
                        # file of its own (one writer per file), on PostgreSQL the same
                        # server.
                        example_db = url
                        if kind == "sqlite":
                            tmp = stack.enter_context(tempfile.TemporaryDirectory())
                            example_db = f"sqlite:///{tmp}/example.db"
                        upstream = stack.enter_context(example_upstream(example_db, seconds))
                    runner = stack.enter_context(asyncio.Runner(loop_factory=factory))
                    rate, steady, peak, cpu_ms, idle_ms, probe = runner.run(
                        run(url, args.cap, seconds, jobs, args.orgs, upstream)
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
                if probe is not None:
                    error = abs(probe.quoted - probe.observed) / max(probe.observed, 1e-9)
                    verdict = "ok" if error <= 0.2 else "off target"
                    print(
                        f"  {'':<9} estimatedWaitSeconds {probe.quoted:.0f} s for a job queued "
                        f"behind the backlog; it waited {probe.observed:.1f} s "
                        f"({error:.0%} off; target ≤ 20 %: {verdict})"
                    )


if __name__ == "__main__":
    main()
