"""`tollhouse example serve` as a process: it answers, applies its processing time, refuses
a bad one at startup, and shares its database with `tollhouse serve`'s in-process
example."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import cli_env, start_server, stop_server
from tests.example.support import start_example

pytestmark = pytest.mark.integration

JOB = {
    "jobId": "job-1",
    "title": "Backend Engineer",
    "description": "Python, PostgreSQL and Redis; 5+ years building APIs.",
}
SCORE = {
    "applicationId": "app-1",
    "jobId": "job-1",
    "candidate": {"name": "Ada", "resume": "Python services on PostgreSQL since 2016."},
}


def test_it_answers_on_the_environments_database_with_its_processing_time(
    tmp_path: Path,
) -> None:
    database = tmp_path / "data" / "example.db"
    env = {
        "TOLLHOUSE_DATABASE_URL": f"sqlite:///{database}",
        "TOLLHOUSE_EXAMPLE_PROCESSING_SECONDS": "0.25",
    }
    example = start_example(tmp_path, env)
    try:
        assert httpx.post(example.url + "/v1/criteria/generate", json=JOB).status_code == 200
        scored = httpx.post(example.url + "/v1/score", json=SCORE, timeout=30)
        assert scored.status_code == 200, scored.text
        assert scored.json()["status"] == "completed"
        # The setting was parsed and applied to this scoring.
        assert scored.headers["x-example-processing-seconds"] == "0.25"
        read = httpx.get(example.url + f"/v1/score/{scored.json()['scoringJobId']}")
        assert read.json() == scored.json()
    finally:
        output = example.stop()
    assert database.exists(), output
    assert "listening on" in output and "Application startup complete" in output


@pytest.mark.parametrize("value", ["soon", "-1", "3601"])
def test_a_bad_processing_time_stops_it_at_startup(tmp_path: Path, value: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tollhouse", "example", "serve", "--port", "9"],
        cwd=tmp_path,
        env=cli_env({"TOLLHOUSE_EXAMPLE_PROCESSING_SECONDS": value}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    message = " ".join(proc.stderr.split())  # the console wraps long lines
    assert "TOLLHOUSE_EXAMPLE_PROCESSING_SECONDS" in message
    assert "0 to 3600" in message
    assert not (tmp_path / ".tollhouse").exists()  # refused before opening a database


def test_serve_and_example_serve_share_one_database(tmp_path: Path) -> None:
    """`tollhouse serve` mounts the example in-process on its own engine; `tollhouse example
    serve` on the same database sees what it stored, and the other way round."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    server = start_server(tmp_path, env={"TOLLHOUSE_DATABASE_URL": url})
    example = start_example(tmp_path, None, "--database-url", url)
    try:
        key = server.key("acme")  # a test key: the SANDBOX environment
        auth = {"Authorization": f"Bearer {key['key']}", "X-Tenant-Id": "t1"}
        as_gateway = {"x-tollhouse-org": "acme", "x-tollhouse-environment": "SANDBOX"}

        made = httpx.post(server.url + "/v1/criteria/generate", json=JOB, headers=auth)
        assert made.status_code == 200, made.text
        read = httpx.get(example.url + "/v1/criteria/job-1", headers=as_gateway)
        assert read.json() == {**made.json(), "archived": False}
        other = httpx.get(example.url + "/v1/criteria/job-1", headers={"x-tollhouse-org": "acme"})
        assert other.status_code == 404  # no environment: not the sandbox's data

        job_2 = {**JOB, "jobId": "job-2"}
        assert httpx.post(
            example.url + "/v1/criteria/generate", json=job_2, headers=as_gateway
        ).is_success
        through_serve = httpx.get(server.url + "/v1/jobs/job-2/criteria", headers=auth)
        assert through_serve.status_code == 200, through_serve.text
    finally:
        example.stop()
        stop_server(server)
