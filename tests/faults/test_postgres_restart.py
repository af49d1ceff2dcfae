"""PostgreSQL restarted under a running `tollhouse serve` carrying load.

Product calls and status calls keep flowing on cached keys and in-memory limits; routes
that need SQL answer 503 with ``Retry-After`` in the error envelope while it is away,
never 500; metering is buffered and flushed once it is back (counted == answered); every
job accepted before or during the outage ends completed.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import stop_server
from tests.faults.support import (
    Deployment,
    Load,
    auth,
    call_counts,
    handler_log,
    wait_jobs_terminal,
)
from tests.services import PostgresServer

# A hang guard: servers start, stop and recover, on a machine that may be busy.
pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.timeout(150)]


def unavailable(r: httpx.Response) -> None:
    """A 503 with ``Retry-After`` and the error envelope."""
    assert r.status_code == 503, (r.status_code, r.text)
    assert r.headers.get("retry-after") == "1", r.headers
    error = r.json()["error"]
    assert error["code"] == "SERVICE_UNAVAILABLE" and error["status"] == 503, r.text
    assert error["requestId"].startswith("req_"), r.text


def test_postgres_restarted_under_load(
    tmp_path: Path, pg_cluster: PostgresServer, pg_database: str
) -> None:
    since = time.time()
    deploy = Deployment(tmp_path, pg_database)
    key = deploy.key("pg-restart")
    fresh_key = deploy.key("pg-restart-unused")  # not in the auth cache when PG goes
    server = deploy.serve()
    load = Load(server.url, key, tmp_path / "tasks.log")
    try:
        load.start(things=2, status=1, tasks=1)
        load.wait_more(60)
        # A backlog that is running and queued when the database goes away.
        backlog = [
            httpx.post(
                server.url + "/v1/tasks",
                json={"log": str(tmp_path / "tasks.log"), "n": -1 - i, "sleep": 0.5},
                headers=auth(key),
            )
            for i in range(12)
        ]
        assert [r.status_code for r in backlog] == [202] * 12
        pg_cluster.stop("fast")
        try:
            # Traffic while the database is away: product calls, and job submissions that
            # are either refused with 503 or (already in flight) accepted.
            load.wait_more(60, "things")
            load.wait_more(5, "tasks")
            # What needs SQL answers 503 with Retry-After in the error envelope.
            job_id = backlog[-1].json()["scoringJobId"]
            unavailable(httpx.get(f"{server.url}/v1/tasks/{job_id}", headers=auth(key)))
            unavailable(httpx.get(server.url + "/v1/things/x", headers=auth(fresh_key)))
            unavailable(
                httpx.get(
                    server.url + "/call-counts/historical/ENDPOINTS/",
                    params={"start_timestamp": since, "end_timestamp": time.time() + 60},
                    headers=auth(key),
                )
            )
        finally:
            pg_cluster.start()
        load.wait_more(40)
    finally:
        load.stop()
    try:
        figures = load.figures()
        print("postgres restart:", figures)
        # No 5xx on product and status routes; no 500 anywhere.
        assert load.server_errors("things") == 0, load.bad[:3]
        assert load.server_errors("status") == 0, load.bad[:3]
        for kind, status, text, headers in load.bad:
            assert (kind, status) == ("tasks", 503), (kind, status, text)
            unavailable(httpx.Response(status, headers=headers, text=text))
        assert load.statuses["tasks"][202] > 0
        # Metering: buffered while PostgreSQL was away, flushed after.
        counts = call_counts(server.url, key, since)
        assert counts.get("THINGS", 0) == load.total("things")
        assert counts.get("TASKS", 0) == load.total("tasks") + len(backlog)
        assert counts.get("STATUS", 0) == load.total("status")
        # Jobs: every 202 ends completed.
        accepted = [r.json()["scoringJobId"] for r in backlog] + list(load.accepted)
        jobs = wait_jobs_terminal(server.url, key, accepted)
        assert {j["status"] for j in jobs.values()} == {"completed"}, jobs
        # ... each run once: outcomes written while the database was away are retried,
        # not left to a lease that expires and runs the job again.
        numbers = [-1 - i for i in range(len(backlog))] + list(load.accepted.values())
        starts = [n for kind, _, n in handler_log(tmp_path / "tasks.log") if kind == "start"]
        assert sorted(starts) == sorted(numbers)
    finally:
        stop_server(server)
