"""Redis killed (SIGKILL) and restarted under a running `tollhouse serve` carrying mixed
load: no 5xx, ``degraded: true`` in the status body while it is away, not degraded once
it is back; metering and jobs (on SQL) are not disturbed."""

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
    wait_jobs_terminal,
    wait_until,
)
from tests.services import redis_server

# A hang guard: servers start, stop and recover, on a machine that may be busy.
pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.timeout(150)]


def test_redis_killed_and_restarted_under_mixed_load(tmp_path: Path) -> None:
    since = time.time()
    with redis_server() as redis:
        deploy = Deployment(tmp_path, f"sqlite:///{tmp_path / 'th.db'}", redis.url)
        key = deploy.key("redis-restart")
        server = deploy.serve()
        load = Load(server.url, key, tmp_path / "tasks.log", task_sleep=0.05)
        seen: list[bool] = []

        def degraded() -> bool:
            r = httpx.get(server.url + "/v1/rate-limit/status", headers=auth(key))
            assert r.status_code == 200, r.text
            seen.append(bool(r.json()["degraded"]))
            return seen[-1]

        try:
            load.start(things=2, status=1, tasks=1)
            load.wait_more(40)
            assert not degraded()
            redis.kill()
            # The breaker opens on failures and closes by itself once Redis answers.
            wait_until(degraded, "degraded mode")
            load.wait_more(60)
            assert degraded()
            redis.start()  # same port, empty: counters start over
            wait_until(lambda: not degraded(), "recovery from degraded mode")
            load.wait_more(40)
        finally:
            load.stop()
        try:
            print("redis restart:", load.figures())
            assert load.server_errors() == 0, load.bad[:3]
            assert not load.bad, load.bad[:3]
            assert seen[0] is False and True in seen and seen[-1] is False
            counts = call_counts(server.url, key, since)
            assert counts.get("THINGS", 0) == load.total("things")
            assert counts.get("TASKS", 0) == load.total("tasks")
            jobs = wait_jobs_terminal(server.url, key, list(load.accepted))
            assert {j["status"] for j in jobs.values()} == {"completed"}
        finally:
            stop_server(server)
