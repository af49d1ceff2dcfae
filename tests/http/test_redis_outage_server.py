"""Redis dies under a running `tollhouse serve`: no 5xx, `degraded: true`, then recovery."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import TESTS, start_server, stop_server
from tests.services import redis_server

pytestmark = pytest.mark.redis


def test_redis_killed_and_restarted_under_load(tmp_path: Path) -> None:
    with redis_server() as redis:
        server = start_server(tmp_path, TESTS / "data" / "tight.toml", "--redis-url", redis.url)
        try:
            key = server.key("outage-" + uuid.uuid4().hex[:8])
            headers = {"Authorization": f"Bearer {key['key']}", "X-Tenant-Id": "t"}
            statuses: list[int] = []
            stop = threading.Event()

            def load() -> None:
                with httpx.Client(timeout=10) as client:
                    while not stop.is_set():
                        r = client.get(server.url + "/v1/criteria/job_x", headers=headers)
                        statuses.append(r.status_code)

            def degraded() -> bool:
                r = httpx.get(server.url + "/v1/rate-limit/status", headers=headers)
                assert r.status_code == 200, r.text
                return bool(r.json()["degraded"])

            def wait_until(want: bool) -> None:
                # The breaker opens on failures and closes by itself once Redis answers.
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    if degraded() == want:
                        return
                    time.sleep(0.05)
                raise AssertionError(f"degraded never became {want}")

            threads = [threading.Thread(target=load) for _ in range(4)]
            for t in threads:
                t.start()
            try:
                assert not degraded()
                redis.kill()
                wait_until(True)
                redis.start()  # same port, empty: counters start over
                wait_until(False)
            finally:
                stop.set()
                for t in threads:
                    t.join()
            assert statuses, "the load generator made no request"
            assert all(s in (404, 429) for s in statuses), sorted(set(statuses))
        finally:
            stop_server(server)
