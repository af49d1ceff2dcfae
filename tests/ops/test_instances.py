"""The documented scale-out layout, on one machine: two `tollhouse serve` instances (API
nodes, no embedded workers) and one `tollhouse worker`, on one Redis and one PostgreSQL,
in front of one `tollhouse example serve` as their shared upstream. They behave as one:
limits, keys, jobs and the upstream's criteria are shared (docs/operations.md)."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from standardwebhooks import Webhook

from tests import services
from tests.conftest import ALLOW_PRIVATE_TARGETS, cli_env, free_port, serve_in_thread
from tests.example.support import ExampleProcess, start_example
from tests.ops.support import cli, samples, spawn_serve, wait_for, wait_healthy
from tollhouse.keys.store import KeyStore
from tollhouse.schema import create_schema
from tollhouse.storage.engine import make_engine

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.postgres]

POLICY = """
[upstream]
url = "{upstream}"

[[buckets]]
name = "shared"
limit = 5
window = "3650d"
routes = ["GET /v1/criteria/{{jobId}}"]

[[async_routes]]
route = "POST /v1/score"
concurrency = 10
handler = "upstream"
"""

POSTING = {
    "jobId": "job_1",
    "title": "Backend Engineer",
    "description": "Python, PostgreSQL and Redis; 5+ years building APIs.",
}


class Receiver:
    """A webhook receiver (raw ASGI) recording every request's headers and body."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[dict[str, str], bytes]] = []

    def received(self) -> list[tuple[dict[str, str], bytes]] | None:
        with self.lock:
            return list(self.calls) or None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        with self.lock:
            self.calls.append((headers, b"".join(chunks)))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    r = Receiver()
    with serve_in_thread(r) as url:  # type: ignore[arg-type]
        yield r, url


@pytest.fixture
def shared(
    tmp_path: Path, postgres_service: services.PostgresServer
) -> Iterator[tuple[str, ExampleProcess]]:
    """A fresh PostgreSQL database, and the shared upstream on it: the bundled example,
    run on its own by `tollhouse example serve`."""
    database = postgres_service.create_database("lb_" + uuid.uuid4().hex[:8])
    upstream = start_example(tmp_path, {"TOLLHOUSE_DATABASE_URL": database})
    yield database, upstream
    upstream.stop()


def test_two_instances_share_limits_keys_jobs_and_the_upstream(
    tmp_path: Path,
    redis_service: services.RedisServer,
    shared: tuple[str, ExampleProcess],
    receiver: tuple[Receiver, str],
) -> None:
    database, upstream = shared
    recorder, receiver_url = receiver
    config = tmp_path / "tollhouse.toml"
    config.write_text(POLICY.format(upstream=upstream.url))
    env = {
        "TOLLHOUSE_CONFIG": str(config),
        "TOLLHOUSE_DATABASE_URL": database,
        "TOLLHOUSE_REDIS_URL": redis_service.url,
        "TOLLHOUSE_INSTANCES": "2",
        # The webhook receiver listens on loopback, which is refused by default (SSRF).
        **ALLOW_PRIVATE_TARGETS,
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
        assert sorted(set(codes) - {429}) == [404]  # admitted: the example has no job_1 yet
        for node in nodes:
            status = httpx.get(node.url + "/v1/rate-limit/status", headers=auth).json()
            assert status["buckets"]["shared"]["remaining"] == 0
            assert status["degraded"] is False

        # The upstream: criteria generated through A are read through B (both proxy to the
        # one example upstream, which keeps them in the shared database).
        generated = httpx.post(a.url + "/v1/criteria/generate", headers=auth, json=POSTING)
        assert generated.status_code == 200, generated.text
        read = httpx.get(b.url + "/v1/jobs/job_1/criteria", headers=auth)
        assert read.status_code == 200, read.text
        assert read.json()["criteria"] == generated.json()["criteria"]

        # Webhooks for the org's sandbox (the key's environment), signed with the secret
        # given once.
        added = cli(
            tmp_path,
            env,
            "webhooks",
            "add",
            "--org",
            org,
            "--url",
            receiver_url + "/hook",
            "--environment",
            "SANDBOX",
            "--json",
        )
        hook_secret = orjson.loads(added)["secret"]

        # Jobs: submitted on A, run by the worker (through the upstream), polled on B.
        body = {
            "applicationId": "app_1",
            "jobId": "job_1",
            "candidate": {"name": "A", "resume": "Python services on PostgreSQL since 2016."},
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
        # Completed, not merely finished: the worker's call to the upstream scored it
        # against the criteria generated through A.
        assert done["status"] == "completed", done
        result = done["result"]
        assert isinstance(result, dict)
        assert result["status"] == "completed" and 0 <= result["score"] <= 100
        assert result["applicationId"] == "app_1" and result["jobId"] == "job_1"
        assert httpx.get(f"{a.url}/v1/score/{job_id}", headers=auth).json() == done
        # The upstream kept its own record of the scoring, under the org's sandbox.
        kept = httpx.get(f"{upstream.url}/v1/score/application/app_1", headers=upstream_as(org))
        assert kept.json() == result

        # The webhook arrived and verifies with the reference Standard Webhooks library.
        [(headers, payload)] = wait_for(recorder.received, "the webhook")
        event = Webhook(hook_secret).verify(payload, headers)
        assert event["type"] == "score.completed"
        assert event["data"]["scoringJobId"] == job_id
        assert event["data"]["status"] == "completed"
        assert event["data"]["result"] == result
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


def upstream_as(org: str) -> dict[str, str]:
    """The identity headers the instances forward for the org's test keys."""
    return {"x-tollhouse-org": org, "x-tollhouse-environment": "SANDBOX"}
