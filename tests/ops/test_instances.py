"""The documented scale-out layout, on one machine: two `tollhouse serve` instances (API
nodes, no embedded workers) and one `tollhouse worker`, on one Redis and one PostgreSQL.
They behave as one: limits, keys and jobs are shared (docs/operations.md)."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests import services
from tests.conftest import cli_env, free_port
from tests.ops.support import samples, spawn_serve, wait_for, wait_healthy
from tollhouse.keys.store import KeyStore
from tollhouse.storage.engine import make_engine
from tollhouse.storage.schema import create_schema

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.postgres]

POLICY = """
[[buckets]]
name = "shared"
limit = 5
window = "3650d"
routes = ["GET /v1/criteria/{jobId}"]

[[async_routes]]
route = "POST /v1/score"
concurrency = 10
handler = "upstream"
"""


def test_two_instances_share_limits_keys_and_jobs(
    tmp_path: Path,
    redis_service: services.RedisServer,
    postgres_service: services.PostgresServer,
) -> None:
    config = tmp_path / "tollhouse.toml"
    config.write_text(POLICY)
    env = {
        "TOLLHOUSE_CONFIG": str(config),
        "TOLLHOUSE_DATABASE_URL": postgres_service.create_database("lb_" + uuid.uuid4().hex[:8]),
        "TOLLHOUSE_REDIS_URL": redis_service.url,
        "TOLLHOUSE_INSTANCES": "2",
    }
    api_env = {**env, "TOLLHOUSE_EMBEDDED_WORKERS": "0"}
    org = "lb-" + uuid.uuid4().hex[:8]  # Redis is shared by the session: a fresh org

    async def create_key() -> tuple[str, str]:
        keys = KeyStore(make_engine(env["TOLLHOUSE_DATABASE_URL"]))
        await create_schema(keys.engine)
        record, secret = await keys.create(org, "test", "root")
        await keys.engine.dispose()
        return record.id, secret

    key_id, secret = asyncio.run(create_key())
    nodes = [
        spawn_serve(tmp_path, api_env, name="a"),
        spawn_serve(tmp_path, api_env, name="b"),
    ]
    worker: subprocess.Popen[bytes] | None = None
    try:
        a, b = (wait_healthy(node) for node in nodes)
        auth = {"Authorization": f"Bearer {secret}", "X-Tenant-Id": "t1"}

        # Limits: 12 requests alternating between the nodes, exactly 5 admitted.
        codes = [
            httpx.get(node.url + "/v1/criteria/job_1", headers=auth).status_code
            for node, _ in zip(itertools.cycle(nodes), range(12), strict=False)
        ]
        assert codes.count(429) == 7, codes
        assert sorted(set(codes) - {429}) == [404]  # admitted: the example has no job_1
        for node in nodes:
            status = httpx.get(node.url + "/v1/rate-limit/status", headers=auth).json()
            assert status["buckets"]["shared"]["remaining"] == 0
            assert status["degraded"] is False

        # Jobs: submitted on A, run by the worker, polled on B.
        body = {
            "applicationId": "app_1",
            "jobId": "job_1",
            "candidate": {"name": "A", "resume": "Python"},
        }
        submitted = httpx.post(a.url + "/v1/score", headers=auth, json=body)
        assert submitted.status_code == 202
        job_id = submitted.json()["scoringJobId"]
        queued = httpx.get(f"{b.url}/v1/score/{job_id}", headers=auth)
        assert queued.status_code == 200
        assert queued.json()["status"] == "queued"  # API nodes run no jobs
        worker_metrics_port = free_port()
        with (tmp_path / "worker.out").open("wb") as out:
            worker = subprocess.Popen(
                [
                    *(sys.executable, "-m", "tollhouse", "worker", "--poll-interval", "0.2"),
                    *("--metrics-port", str(worker_metrics_port)),
                ],
                cwd=tmp_path,
                env=cli_env(env),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        def finished() -> dict[str, object] | None:
            job: dict[str, object] = httpx.get(f"{b.url}/v1/score/{job_id}", headers=auth).json()
            return job if job["status"] in ("completed", "failed") else None

        done = wait_for(finished, "the job to finish", timeout=40)
        assert httpx.get(f"{a.url}/v1/score/{job_id}", headers=auth).json() == done
        # The worker reports the attempt it ran on its own metrics port.
        found = samples(httpx.get(f"http://127.0.0.1:{worker_metrics_port}/metrics").text)
        attempts = sum(
            v for (name, _), v in found.items() if name == "tollhouse_job_duration_seconds_count"
        )
        assert attempts == 1

        # Keys: revoked once, refused by both nodes within the revocation poll.
        async def revoke() -> None:
            keys = KeyStore(make_engine(env["TOLLHOUSE_DATABASE_URL"]))
            assert await keys.revoke(key_id) is not None
            await keys.engine.dispose()

        asyncio.run(revoke())

        def refused() -> bool | None:
            codes = [
                httpx.get(n.url + "/v1/rate-limit/status", headers=auth).status_code for n in nodes
            ]
            return True if codes == [401, 401] else None

        wait_for(refused, "both nodes to refuse the revoked key")
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        for node in nodes:
            node.stop()
