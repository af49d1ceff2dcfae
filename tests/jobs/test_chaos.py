"""Chaos: real `tollhouse worker` processes SIGKILLed at random while they run jobs, on
SQLite and PostgreSQL. Every accepted job must end terminal, and no org ever has more
jobs running than its cap — checked both in the database (sampled) and from the
handlers' own start/end log (independent of the queue's bookkeeping) — and the
finished-jobs rollup counts each finished job exactly once."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.conftest import cli_env
from tests.jobs.conftest import database, run
from tollhouse.jobs import NewJob, QueueSettings, open_queue
from tollhouse.jobs.schema import job_orgs, job_volume, jobs

ORGS = ("acme", "globex", "initech")
JOBS_PER_ORG = 16
CAP = 2
KILLS = 5
DEADLINE = 45.0


def _policy(tmp: Path) -> Path:
    path = tmp / "chaos.toml"
    path.write_text(
        "[[async_routes]]\n"
        'route = "POST /v1/score"\n'
        f"concurrency = {CAP}\n"
        'handler = "tests.jobs.handlers:sleepy"\n'
    )
    return path


def _start_worker(policy: Path, url: str, cwd: Path) -> subprocess.Popen[bytes]:
    # Output to a file per worker (read when a test fails); closed once the child has it.
    with open(cwd / f"worker-{time.monotonic_ns()}.log", "wb") as out:
        return _popen(policy, url, cwd, out)


def _popen(policy: Path, url: str, cwd: Path, out: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tollhouse.cli.worker",
            "--config",
            str(policy),
            "--database-url",
            url,
            "--concurrency",
            "4",
            "--lease-seconds",
            "2",
            "--poll-interval",
            "0.05",
            "--reap-interval",
            "0.3",
            "--grace",
            "2",
        ],
        cwd=cwd,
        env=cli_env(),
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = now = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


async def _chaos(url: str, tmp: Path) -> None:
    log = tmp / "handler.log"
    policy = _policy(tmp)
    rng = random.Random(11)
    async with database(url) as engine:
        queue = open_queue(engine, QueueSettings(default_cap=CAP))
        new = [
            NewJob(
                org=org,
                route="POST /v1/score",
                payload={"log": str(log), "n": n, "org": org, "sleep": 0.05},
            )
            for n in range(JOBS_PER_ORG)
            for org in ORGS
        ]
        accepted = {e.job.id for e in await queue.enqueue(new)}
        workers = [_start_worker(policy, url, tmp) for _ in range(3)]
        killed: dict[int, float] = {}
        kills = 0
        samples = 0
        deadline = time.monotonic() + DEADLINE
        next_kill = time.monotonic()
        try:
            while True:
                # One statement: one snapshot of both the counters and the job rows.
                running = (
                    select(func.count())
                    .select_from(jobs)
                    .where(
                        jobs.c.org_id == job_orgs.c.org_id,
                        jobs.c.environment == job_orgs.c.environment,
                        jobs.c.status == "running",
                    )
                    .scalar_subquery()
                )
                async with engine.connect() as conn:
                    rows = (
                        await conn.execute(select(job_orgs.c.org_id, job_orgs.c.running, running))
                    ).all()
                    open_jobs = (
                        await conn.execute(
                            select(func.count())
                            .select_from(jobs)
                            .where(jobs.c.status.in_(("queued", "running")))
                        )
                    ).scalar_one()
                    holders = {
                        int(str(w).rsplit(":", 1)[1])
                        for w in (
                            await conn.execute(
                                select(jobs.c.worker_id).where(jobs.c.status == "running")
                            )
                        ).scalars()
                        if w
                    }
                samples += 1
                for _org, counter, actual in rows:
                    assert counter == actual <= CAP
                if open_jobs == 0:
                    break
                assert time.monotonic() < deadline, f"{open_jobs} jobs still open"
                # Kill a worker that holds jobs right now, so every kill strands work.
                busy = [w for w in workers if w.poll() is None and w.pid in holders]
                if kills < KILLS and busy and time.monotonic() >= next_kill:
                    victim = rng.choice(busy)
                    victim.kill()
                    victim.wait()
                    killed[victim.pid] = time.time()
                    kills += 1
                    workers.append(_start_worker(policy, url, tmp))
                    next_kill = time.monotonic() + rng.uniform(0.2, 0.6)
                await asyncio.sleep(0.05)
        finally:
            for w in workers:
                if w.poll() is None:
                    w.terminate()
            for w in workers:
                try:
                    w.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    w.kill()
                    w.wait()
        async with engine.connect() as conn:
            states = dict((await conn.execute(select(jobs.c.id, jobs.c.status))).all())
            finished = (
                await conn.execute(
                    select(jobs.c.org_id, jobs.c.status, func.count()).group_by(
                        jobs.c.org_id, jobs.c.status
                    )
                )
            ).all()
            rolled = (
                await conn.execute(
                    select(
                        job_volume.c.org_id,
                        job_volume.c.span,
                        func.sum(job_volume.c.completed),
                        func.sum(job_volume.c.failed),
                    ).group_by(job_volume.c.org_id, job_volume.c.span)
                )
            ).all()
        # The finished-jobs rollup counted every job once, whatever was killed mid-way.
        per_org = {org: [0, 0] for org in ORGS}
        for org, status, n in finished:
            per_org[org][status != "completed"] += n
        for span in ("minute", "hour"):
            assert {o: [c, f] for o, s, c, f in rolled if s == span} == per_org
        assert set(states) == accepted
        assert set(states.values()) <= {"completed", "dead"}, states
        assert kills >= 2 and samples > 0
        assert list(states.values()).count("completed") >= len(accepted) - kills

    # The handlers' own log: at no instant did an org have more than CAP executions.
    starts: dict[tuple[int, str, str], list[float]] = defaultdict(list)
    intervals: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for line in log.read_text().splitlines():
        kind, pid, org, n, at = line.split()
        key = (int(pid), org, n)
        if kind == "start":
            starts[key].append(float(at))
        else:
            intervals[org].append((starts[key].pop(0), float(at)))
    for (pid, org, _), pending in starts.items():
        for started in pending:
            assert pid in killed, "only a SIGKILLed worker leaves an execution without end"
            intervals[org].append((started, killed[pid]))
    for org in ORGS:
        assert 0 < _max_overlap(intervals[org]) <= CAP, org


@pytest.mark.integration
def test_chaos_sqlite(sqlite_url: str, tmp_path: Path) -> None:
    run(_chaos(sqlite_url, tmp_path))


@pytest.mark.integration
@pytest.mark.postgres
def test_chaos_postgres(pg_url: str, tmp_path: Path) -> None:
    run(_chaos(pg_url, tmp_path))
