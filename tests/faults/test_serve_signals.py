"""`tollhouse serve` stopped under load: SIGTERM (graceful) and SIGKILL (a crash).

SIGTERM: requests in flight get their answer, every metered call and every queued job
survives a restart on the same database. SIGKILL: jobs are recovered by lease after a
restart, none lost, none run again once completed; metered calls are lost at most for
the last flush interval (what was made after the last flush).
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server, stop_server
from tests.faults.support import (
    Deployment,
    Load,
    auth,
    call_counts,
    handler_log,
    jobs_by_id,
    wait_jobs_terminal,
    wait_until,
)

# A hang guard: servers start, stop and recover, on a machine that may be busy.
pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.timeout(150)]


def submit(server: Server, key: dict[str, str], log: Path, count: int, sleep: float) -> list[str]:
    """``count`` jobs (``n`` = 0 … count-1); returns their ids in order."""
    ids = []
    with httpx.Client(base_url=server.url, headers=auth(key), timeout=10) as client:
        for n in range(count):
            r = client.post("/v1/tasks", json={"log": str(log), "n": n, "sleep": sleep})
            assert r.status_code == 202, r.text
            ids.append(r.json()["scoringJobId"])
    return ids


def test_sigterm_under_load(tmp_path: Path, pg_database: str) -> None:
    since = time.time()
    deploy = Deployment(tmp_path, pg_database, concurrency=2)
    key = deploy.key("sigterm")
    log = tmp_path / "tasks.log"
    server = deploy.serve()
    try:
        ids = submit(server, key, log, 30, 0.3)
        load = Load(server.url, key, log)
        arrivals = Path(str(log) + ".slow")
        load.start(things=1, slow=6)
        try:
            load.wait_more(20, "things")

            def held() -> int:
                arrived = len(arrivals.read_text().splitlines()) if arrivals.exists() else 0
                return arrived - load.total("slow")

            # Several slow requests are being held upstream when the signal arrives.
            wait_until(lambda: held() >= 4, "slow requests in flight")
            server.proc.send_signal(signal.SIGTERM)
            # uvicorn exits by re-raising the signal once it has shut down gracefully.
            assert server.proc.wait(timeout=40) in (0, -signal.SIGTERM)
        finally:
            load.stop()
        figures = load.figures()
        print("sigterm:", figures)
        assert load.server_errors() == 0, load.bad[:3]
        assert not load.bad, load.bad[:3]
        # Every slow request that reached the upstream got its 200.
        arrived = len(arrivals.read_text().splitlines())
        assert load.statuses["slow"][200] == arrived >= 4
        # Jobs were still queued at the signal (else this proves nothing about them).
        assert len(handler_log(log)) < 2 * len(ids)
    finally:
        if server.proc.poll() is None:
            stop_server(server)

    server = deploy.serve()
    try:
        counts = call_counts(server.url, key, since)
        assert counts.get("THINGS", 0) == load.total("things")
        assert counts.get("SLOW", 0) == load.total("slow")
        assert counts.get("TASKS", 0) == len(ids)
        jobs = wait_jobs_terminal(server.url, key, ids)
        assert {j["status"] for j in jobs.values()} == {"completed"}
        # Each ran once: those running at the signal finished within the grace period,
        # the queued ones after the restart.
        starts = Counter(n for kind, _, n in handler_log(log) if kind == "start")
        assert starts == Counter(range(len(ids)))
    finally:
        stop_server(server)


#: Calls made after the last flush, right before the SIGKILL.
K = 25


#: A short job lease, so the crashed process's jobs are taken over within seconds.
LEASE = {"TOLLHOUSE_JOB_LEASE_SECONDS": "4"}


def test_sigkill_recovers_jobs_and_loses_at_most_one_flush(
    tmp_path: Path, pg_database: str
) -> None:
    since = time.time()
    deploy = Deployment(tmp_path, pg_database, concurrency=2)
    key = deploy.key("sigkill")
    log = tmp_path / "tasks.log"
    server = deploy.serve(LEASE)
    try:
        load = Load(server.url, key, log)
        load.start(things=2)
        try:
            load.wait_more(100, "things")
        finally:
            load.stop()
        # Traffic stopped; reading the counts flushes the meter: all of it is stored.
        assert call_counts(server.url, key, since).get("THINGS", 0) == load.total("things")
        ids = submit(server, key, log, 12, 1.0)
        wait_until(
            lambda: (
                sum(j["status"] == "completed" for j in jobs_by_id(server.url, key, ids).values())
                >= 2
            ),
            "two jobs completed",
        )
        answered = load.total("things")
        with httpx.Client(base_url=server.url, headers=auth(key), timeout=10) as client:
            for n in range(K):
                assert client.get(f"/v1/things/late{n}").status_code == 200
        answered += K
        snapshot: dict[str, dict[str, Any]] = {}

        def running() -> bool:
            snapshot.update(jobs_by_id(server.url, key, ids))
            return any(j["status"] == "running" for j in snapshot.values())

        # Crash while jobs run (and others wait): they must be taken over by lease.
        wait_until(running, "a job running")
        done_before = {i for i, j in snapshot.items() if j["status"] == "completed"}
        assert len(done_before) < len(ids), "every job ended before the crash"
        server.proc.kill()
        server.proc.wait()
        killed_pid = server.proc.pid
    finally:
        if server.proc.poll() is None:
            stop_server(server)

    server = deploy.serve(LEASE)
    try:
        counted = call_counts(server.url, key, since).get("THINGS", 0)
        print(f"sigkill: answered {answered}, counted {counted}, lost {answered - counted}")
        assert answered - K <= counted <= answered
        jobs = wait_jobs_terminal(server.url, key, ids, timeout=90)
        assert {j["status"] for j in jobs.values()} == {"completed"}
        rows = handler_log(log)
        n_of = {job_id: n for n, job_id in enumerate(ids)}
        for job_id, job in jobs.items():
            n = n_of[job_id]
            runs = [(kind, pid) for kind, pid, m in rows if m == n]
            after = [kind for kind, pid in runs if pid != killed_pid]
            if job_id in done_before:
                # Completed before the crash: never run again.
                assert after == [] and job["attempts"] == 1, (job, runs)
            else:
                # Completed at most once after the restart; an attempt the crash cut
                # short counts as one, and the job ran again.
                assert after.count("end") <= 1, (job, runs)
                cut_short = ("start", killed_pid) in runs and ("end", killed_pid) not in runs
                if cut_short:
                    assert job["attempts"] >= 2 and after.count("end") == 1, (job, runs)
        crashed = {n for kind, pid, n in rows if pid == killed_pid and kind == "start"} - {
            n for kind, pid, n in rows if pid == killed_pid and kind == "end"
        }
        assert crashed, "the crash cut no job short"
    finally:
        stop_server(server)
