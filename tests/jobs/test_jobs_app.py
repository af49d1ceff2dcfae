"""The jobs app over HTTP (httpx → ASGI), with the identity the gateway would put in
``scope["state"]``; end to end with a worker running the bundled example upstream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from tests.jobs.conftest import FakeClock, database, run
from tollhouse.example import create_app as create_example
from tollhouse.http.jobs_app import create_jobs_app
from tollhouse.jobs import NewJob, QueueSettings, Worker, build_handler, open_queue
from tollhouse.jobs.queue import JobQueue
from tollhouse.jobs.webhook_store import WebhookStore
from tollhouse.keys.model import Identity
from tollhouse.policy.model import AsyncRoute, Policy

POLICY = Policy(
    source="<test>",
    async_routes=(AsyncRoute("POST /v1/score", concurrency=3, validator="score"),),
)
SCORE = {
    "applicationId": "app_1",
    "jobId": "job_1",
    "candidate": {"name": "Ada", "resume": "Built Python APIs on PostgreSQL for 6 years."},
}
POSTING = {
    "jobId": "job_1",
    "title": "Backend Engineer",
    "description": "Python, PostgreSQL and Redis; 5 years building APIs.",
}
WAIT = 20.0


class AsGateway:
    """Sets ``scope["state"]`` as the gateway does; the org comes from ``x-test-org``, the
    environment from ``x-test-env`` (PRODUCTION, a live key's, unless it says SANDBOX)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            org = headers.get(b"x-test-org", b"acme").decode()
            environment = headers.get(b"x-test-env", b"PRODUCTION").decode()
            assert environment in ("SANDBOX", "PRODUCTION")
            tenant = headers.get(b"x-tenant-id")
            scope["state"] = {
                "identity": Identity(
                    key_id="key_1",
                    org=org,
                    environment=environment,  # type: ignore[arg-type]
                    role="root",
                    tenant=tenant.decode() if tenant else None,
                ),
                "request_id": "req_test",
            }
        await self.app(scope, receive, send)


@asynccontextmanager
async def client_for(
    url: str,
    clock: FakeClock | None = None,
    fallback: Any = None,
    cap: int = 3,
    worker_seen: bool = True,
) -> AsyncIterator[tuple[httpx.AsyncClient, JobQueue, WebhookStore]]:
    """The jobs app over httpx; ``worker_seen``: a worker has recorded itself (as a
    running one does), so answers carry wait estimates."""
    async with database(url) as engine:
        kw: dict[str, Any] = {"clock": clock} if clock else {}
        queue = open_queue(engine, QueueSettings(default_cap=cap), **kw)
        if worker_seen:
            await queue.record_worker("test-worker")
        webhooks = WebhookStore(engine, allow_private_targets=True, **kw)  # loopback hooks
        app = create_jobs_app(
            queue=queue, policy=POLICY, webhooks=webhooks, fallback=fallback, **kw
        )
        transport = httpx.ASGITransport(app=AsGateway(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client, queue, webhooks


def test_accept_and_poll(db_url: str) -> None:
    async def body() -> None:
        async with client_for(db_url) as (client, _, _):
            accepted = []
            for i in range(5):
                r = await client.post("/v1/score", json={**SCORE, "applicationId": f"app_{i}"})
                assert r.status_code == 202, r.text
                accepted.append(r.json())
            first = accepted[0]
            assert set(first) == {"scoringJobId", "status", "queuePosition", "estimatedWaitSeconds"}
            assert first["status"] == "queued" and first["scoringJobId"].startswith("sj_")
            # Cap 3, 30 s before any measurement: the 5th waits (5 - 3) ÷ 3 × 30 = 20 s.
            assert [a["queuePosition"] for a in accepted] == [1, 2, 3, 4, 5]
            assert [a["estimatedWaitSeconds"] for a in accepted] == [0, 0, 0, 10, 20]
            poll = await client.get(f"/v1/score/{accepted[4]['scoringJobId']}")
            assert poll.status_code == 200
            job = poll.json()
            assert job["status"] == "queued" and job["queuePosition"] == 5
            assert job["estimatedWaitSeconds"] == 20 and job["applicationId"] == "app_4"
            assert job["createdAt"].endswith("Z")
            latest = await client.get("/v1/score/application/app_4")
            assert latest.json()["scoringJobId"] == accepted[4]["scoringJobId"]

    run(body())


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**SCORE, "applicationId": None}, "applicationId"),
        ({k: v for k, v in SCORE.items() if k != "jobId"}, "jobId"),
        ({**SCORE, "candidate": {"resume": "x"}}, "candidate.name"),
        ({**SCORE, "candidate": {"name": "Ada"}}, "candidate.resume"),
    ],
)
def test_validation_names_the_field(sqlite_url: str, body: dict[str, Any], field: str) -> None:
    async def go() -> None:
        async with client_for(sqlite_url) as (client, _, _):
            r = await client.post("/v1/score", json=body)
            assert r.status_code == 422
            error = r.json()["error"]
            assert error["code"] == "VALIDATION_FAILED" and f'"{field}"' in error["message"]
            assert error["requestId"] == "req_test"
            bad = await client.post("/v1/score", content=b"[1]")
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "BAD_REQUEST"

    run(go())


def test_other_orgs_get_404(sqlite_url: str) -> None:
    async def go() -> None:
        async with client_for(sqlite_url) as (client, _, _):
            r = await client.post("/v1/score", json=SCORE)
            job_id = r.json()["scoringJobId"]
            for path in (f"/v1/score/{job_id}", "/v1/score/application/app_1"):
                other = await client.get(path, headers={"x-test-org": "evil"})
                assert other.status_code == 404
                assert other.json()["error"]["code"] == "NOT_FOUND"
            # Another org's job reads exactly like one that does not exist.
            theirs = await client.get(f"/v1/score/{job_id}", headers={"x-test-org": "evil"})
            missing = await client.get("/v1/score/sj_doesnotexist")
            assert missing.status_code == 404
            assert theirs.json()["error"]["message"] == missing.json()["error"]["message"].replace(
                "sj_doesnotexist", job_id
            )

    run(go())


def test_idempotency_key(db_url: str) -> None:
    async def go() -> None:
        async with client_for(db_url) as (client, _, _):
            h = {"Idempotency-Key": "abc-1"}
            one = await client.post("/v1/score", json=SCORE, headers=h)
            await client.post("/v1/score", json={**SCORE, "applicationId": "x"})
            two = await client.post("/v1/score", json=SCORE, headers=h)
            assert one.status_code == two.status_code == 202
            assert one.json() == two.json()
            assert two.headers["idempotent-replayed"] == "true"
            other_org = await client.post("/v1/score", json=SCORE, headers={**h, "x-test-org": "b"})
            assert other_org.json()["scoringJobId"] != one.json()["scoringJobId"]
            changed = await client.post(
                "/v1/score", json={**SCORE, "applicationId": "app_2"}, headers=h
            )
            assert changed.status_code == 422
            assert changed.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"

    run(go())


def test_batch(sqlite_url: str) -> None:
    async def go() -> None:
        async with client_for(sqlite_url) as (client, _, _):
            items = [SCORE, {"applicationId": "a2"}, {**SCORE, "applicationId": "a3"}]
            h = {"Idempotency-Key": "batch-1"}
            r = await client.post("/v1/score/batch", json={"items": items}, headers=h)
            assert r.status_code == 202, r.text
            data = r.json()
            assert (data["accepted"], data["rejected"]) == (2, 1)
            ok, bad, ok2 = data["results"]
            assert ok["index"] == 0 and ok["status"] == "queued" and ok["queuePosition"] == 1
            assert ok2["queuePosition"] == 2
            assert bad["status"] == "error" and bad["error"]["code"] == "VALIDATION_FAILED"
            again = await client.post("/v1/score/batch", json={"items": items}, headers=h)
            assert again.json() == data
            none = await client.post("/v1/score/batch", json={"items": [{"jobId": "j"}]})
            assert none.status_code == 422 and "items[0]" in none.json()["error"]["message"]
            empty = await client.post("/v1/score/batch", json={"items": []})
            assert empty.status_code == 422
            many = await client.post("/v1/score/batch", json={"items": [SCORE] * 101})
            assert many.status_code == 422
            wrong = await client.get("/v1/score/batch")
            assert wrong.status_code == 405

    run(go())


def test_routing_and_fallback(sqlite_url: str) -> None:
    async def upstream(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"upstream"})

    async def go() -> None:
        async with client_for(sqlite_url) as (client, _, _):
            r = await client.get("/v1/criteria/x")
            assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
            r = await client.delete("/v1/score")
            assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, POST"
        async with client_for(sqlite_url, fallback=upstream) as (client, _, _):
            r = await client.get("/v1/criteria/x")
            assert (r.status_code, r.text) == (299, "upstream")

    run(go())


def test_scoring_volume(db_url: str) -> None:
    clock = FakeClock()

    async def go() -> None:
        async with client_for(db_url, clock=clock) as (client, queue, _):
            new = [NewJob(org="acme", route="POST /v1/score", payload={}) for _ in range(3)]
            await queue.enqueue(new)
            a, b, c = await queue.claim("w", 3)
            await queue.complete(a, {})
            clock.advance(86400)
            await queue.complete(b, {})
            await queue.fail(c, {"code": "X"}, retryable=False)
            await queue.enqueue([NewJob(org="other", route="POST /v1/score", payload={})])
            [d] = await queue.claim("w", 1)
            await queue.complete(d, {})
            clock.advance(60)
            r = await client.get("/v1/analytics/scoring-volume", params={"timeRange": "7d"})
            assert r.status_code == 200
            assert r.headers["cache-control"] == "private, max-age=60"
            body = r.json()
            assert body["granularity"] == "day"
            assert set(body) == {"period", "granularity", "data"}
            assert body["period"]["start"] == "2026-03-01T00:00:00.000Z"
            assert body["period"]["end"] == "2026-03-08T12:01:00.000Z"
            assert len(body["data"]) == 8
            by_day = {p["timestamp"]: p for p in body["data"]}
            assert by_day["2026-03-07T00:00:00.000Z"] == {
                "timestamp": "2026-03-07T00:00:00.000Z",
                "total": 1,
                "completed": 1,
                "failed": 0,
            }
            assert by_day["2026-03-08T00:00:00.000Z"]["total"] == 2
            assert by_day["2026-03-08T00:00:00.000Z"]["failed"] == 1
            assert sum(p["total"] for p in body["data"]) == 3  # "other" not counted
            hour = (await client.get("/v1/analytics/scoring-volume?timeRange=1h")).json()
            assert hour["granularity"] == "minute" and len(hour["data"]) == 61
            day = (await client.get("/v1/analytics/scoring-volume?timeRange=24h")).json()
            assert day["granularity"] == "hour" and day["data"][-1]["total"] == 2
            for bad in ("", "?timeRange=2d"):
                r = await client.get("/v1/analytics/scoring-volume" + bad)
                assert r.status_code == 422 and "timeRange" in r.json()["error"]["message"]

    run(go())


def test_end_to_end_with_the_example_upstream(db_url: str) -> None:
    async def go() -> None:
        # The example keeps its state in the same database, on an engine of its own.
        async with database(db_url) as example_engine:
            example = create_example(example_engine)
            async with client_for(db_url, fallback=example) as (client, queue, webhooks):
                await webhooks.add_endpoint("acme", "http://127.0.0.1:9/refused")
                gen = await client.post(
                    "/v1/criteria/generate", json=POSTING, headers={"x-tollhouse-org": "acme"}
                )
                assert gen.status_code == 200, gen.text
                ok = (
                    await client.post("/v1/score", json=SCORE, headers={"x-tenant-id": "t1"})
                ).json()
                no_criteria = (
                    await client.post("/v1/score", json={**SCORE, "jobId": "nope"})
                ).json()
                worker = Worker(
                    queue,
                    build_handler(POLICY, example),
                    webhooks=webhooks,
                    slots=3,
                    poll_interval=0.05,
                    webhook_timeout=2,
                )
                await worker.start()
                try:
                    done = await _poll(client, ok["scoringJobId"])
                    failed = await _poll(client, no_criteria["scoringJobId"])
                    deliveries = await _deliveries(client, ok["scoringJobId"])
                finally:
                    await worker.stop()
                assert done["status"] == "completed", done
                assert (
                    0 <= done["result"]["score"] <= 100
                    and done["result"]["applicationId"] == "app_1"
                )
                assert done["completedAt"].endswith("Z") and "queuePosition" not in done
                assert failed["status"] == "failed" and failed["error"]["code"] == "NOT_FOUND"
                assert failed["error"]["status"] == 404
                [d] = deliveries
                assert d["eventType"] == "score.completed" and d["jobId"] == ok["scoringJobId"]
                assert d["attempts"][0]["statusCode"] is None and d["attempts"][0]["error"]
                other = await client.get(
                    "/v1/webhooks/deliveries",
                    params={"jobId": ok["scoringJobId"]},
                    headers={"x-test-org": "evil"},
                )
                assert other.json() == {"data": []}

    run(go())


async def _poll(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while True:
        job: dict[str, Any] = (await client.get(f"/v1/score/{job_id}")).json()
        if job["status"] in ("completed", "failed") or time.monotonic() > deadline:
            return job
        await asyncio.sleep(0.02)


async def _deliveries(client: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT
    while True:
        r = await client.get("/v1/webhooks/deliveries", params={"jobId": job_id})
        data: list[dict[str, Any]] = r.json()["data"]
        if (data and data[0]["attempts"]) or time.monotonic() > deadline:
            return data
        await asyncio.sleep(0.02)


def test_estimated_wait_uses_measured_time(sqlite_url: str) -> None:
    clock = FakeClock()

    async def go() -> None:
        async with client_for(sqlite_url, clock=clock, cap=1) as (client, queue, _):
            await queue.enqueue([NewJob(org="acme", route="POST /v1/score", payload={})])
            [lease] = await queue.claim("w", 1)
            clock.advance(4)
            await queue.complete(lease, {})
            await queue.enqueue([NewJob(org="acme", route="POST /v1/score", payload={})])
            await queue.claim("w", 1)
            r = (await client.post("/v1/score", json=SCORE)).json()
            # One running at cap 1, measured mean 4 s: position 1 → (1 ÷ 1) × 4.
            assert (r["queuePosition"], r["estimatedWaitSeconds"]) == (1, 4)

    run(go())
