"""``estimatedWaitSeconds`` is null while no worker is running, on SQLite and PostgreSQL:
in the 202, in a poll, in ``GET /v1/queue``; and with real processes, a `tollhouse serve`
without embedded workers answers null until a `tollhouse worker` runs beside it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import cli_env, start_server, stop_server
from tests.jobs.conftest import FakeClock, database, run
from tests.jobs.test_jobs_app import SCORE, client_for
from tollhouse.jobs import Dispatcher, Job, QueueSettings, open_queue

SEEN = QueueSettings().worker_seen_seconds


async def _answers(client: httpx.AsyncClient, app_id: str, **headers: str) -> list[Any]:
    """The estimate of a new job's 202, of its poll, of the queue and of its queue row."""
    r = await client.post("/v1/score", json={**SCORE, "applicationId": app_id}, headers=headers)
    assert r.status_code == 202, r.text
    accepted = r.json()
    poll = (await client.get(f"/v1/score/{accepted['scoringJobId']}")).json()
    page = (await client.get("/v1/queue", params={"status": "queued", "limit": "100"})).json()
    [row] = [j for j in page["data"] if j["scoringJobId"] == accepted["scoringJobId"]]
    return [
        accepted["estimatedWaitSeconds"],
        poll["estimatedWaitSeconds"],
        page["queue"]["estimatedWaitSeconds"],
        row["estimatedWaitSeconds"],
    ]


def test_null_while_no_worker_was_seen_recently(db_url: str) -> None:
    clock = FakeClock()

    async def go() -> None:
        async with client_for(db_url, clock=clock, cap=1, worker_seen=False) as (client, q, _):
            assert not await q.workers_running()
            # Nothing has ever run here: no estimate, not 0.
            replayed = {"Idempotency-Key": "k1"}
            assert await _answers(client, "a1", **replayed) == [None] * 4
            await q.record_worker("w1")
            # Cap 1, none running, 30 s by default: the second in line waits for one
            # job, (2 - 1) ÷ 1 × 30 s; a job submitted now would be third (60 s).
            assert await _answers(client, "a2") == [30, 30, 60.0, 30]
            # A replay repeats the first answer: null, as it was given.
            again = await client.post(
                "/v1/score", json={**SCORE, "applicationId": "a1"}, headers=replayed
            )
            assert again.json()["estimatedWaitSeconds"] is None
            clock.advance(SEEN)  # still recent at exactly the threshold
            assert (await _answers(client, "a3"))[0] == 60
            clock.advance(0.5)  # the worker went silent (killed): over the threshold
            assert await _answers(client, "a4") == [None] * 4
            await q.record_worker("w1")
            assert (await _answers(client, "a5"))[0] == 120
            await q.forget_worker("w1")  # stopped gracefully
            assert await _answers(client, "a6") == [None] * 4

    run(go())


def test_a_dispatcher_records_itself_while_it_runs(db_url: str) -> None:
    async def never(job: Job) -> dict[str, Any]:
        raise AssertionError("no job is queued")

    async def go() -> None:
        async with database(db_url) as engine:
            queue = open_queue(engine, QueueSettings())
            d = Dispatcher(queue, never, slots=1, worker_id="host:1", poll_interval=0.02)
            assert d.presence_interval == SEEN / 6
            await d.start()
            assert await queue.workers_running()
            await d.stop()
            assert not await queue.workers_running()

    run(go())


@pytest.mark.integration
def test_serve_without_workers_says_null_until_a_worker_process_runs(tmp_path: Path) -> None:
    server = start_server(tmp_path, env={"TOLLHOUSE_EMBEDDED_WORKERS": "0"})
    worker: subprocess.Popen[str] | None = None
    try:
        key = server.key("acme", role="root")["key"]
        headers = {"Authorization": f"Bearer {key}", "X-Tenant-Id": "acme"}

        def submit(i: int) -> Any:
            body = {**SCORE, "applicationId": f"app_{i}"}
            r = httpx.post(server.url + "/v1/score", json=body, headers=headers, timeout=10)
            assert r.status_code == 202, r.text
            return r.json()["estimatedWaitSeconds"]

        assert submit(0) is None
        with (tmp_path / "worker.log").open("w") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "tollhouse", "worker"],
                cwd=tmp_path,
                env=cli_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        # The worker records itself before its first claim; wait for it to start.
        deadline = time.monotonic() + 30
        i = 1
        while (wait := submit(i)) is None:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, "the worker never recorded itself"
            time.sleep(0.1)
            i += 1
        assert isinstance(wait, int) and wait >= 0
        worker.terminate()  # a graceful stop removes its record at once
        assert worker.wait(30) == 0, (tmp_path / "worker.log").read_text()
        assert submit(i + 1) is None
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        stop_server(server)
