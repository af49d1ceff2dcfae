"""Sandbox apart from production in the jobs app, the queue and the webhooks, on SQLite and
PostgreSQL: an org's SANDBOX key (``sk_test_``) and its PRODUCTION key (``sk_live_``) see
and change only their own environment's jobs, queue, volume and deliveries, as two orgs
would. The identity is the gateway's (``x-test-env`` picks the environment)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from tests.jobs.conftest import FakeClock, database, run
from tests.jobs.test_jobs_app import POLICY, POSTING, SCORE, client_for
from tollhouse.example import create_app as create_example
from tollhouse.jobs import NewJob, Worker, build_handler
from tollhouse.jobs.schema import webhook_deliveries
from tollhouse.jobs.webhook_store import WebhookStore

LIVE = {"x-test-env": "PRODUCTION"}
TEST = {"x-test-env": "SANDBOX"}
OTHER = {"SANDBOX": "PRODUCTION", "PRODUCTION": "SANDBOX"}


@pytest.mark.parametrize("made_in", ["PRODUCTION", "SANDBOX"])
def test_a_job_is_404_to_the_other_environment(db_url: str, made_in: str) -> None:
    async def go() -> None:
        mine, theirs = {"x-test-env": made_in}, {"x-test-env": OTHER[made_in]}
        async with client_for(db_url) as (client, _, _):
            r = await client.post("/v1/score", json=SCORE, headers=mine)
            job_id = r.json()["scoringJobId"]
            for path in (f"/v1/score/{job_id}", "/v1/score/application/app_1"):
                assert (await client.get(path, headers=mine)).status_code == 200
                other = await client.get(path, headers=theirs)
                assert other.status_code == 404, other.text
                assert other.json()["error"]["code"] == "NOT_FOUND"

    run(go())


def test_an_idempotency_key_is_per_environment(db_url: str) -> None:
    """A live POST with the Idempotency-Key of a sandbox job is a new job, not a replay
    of the sandbox one; each environment replays its own."""

    async def go() -> None:
        async with client_for(db_url) as (client, _, _):
            key = {"Idempotency-Key": "order-42"}
            sandbox = await client.post("/v1/score", json=SCORE, headers={**TEST, **key})
            live = await client.post("/v1/score", json=SCORE, headers={**LIVE, **key})
            assert sandbox.status_code == live.status_code == 202
            assert "idempotent-replayed" not in live.headers
            assert live.json()["scoringJobId"] != sandbox.json()["scoringJobId"]
            # Each queue has one job: the live one is first in production's queue.
            assert live.json()["queuePosition"] == sandbox.json()["queuePosition"] == 1
            for headers, first in ((TEST, sandbox), (LIVE, live)):
                again = await client.post("/v1/score", json=SCORE, headers={**headers, **key})
                assert again.headers["idempotent-replayed"] == "true"
                assert again.json() == first.json()
            # Another body under the key in production is refused as a reuse there only.
            other = {**SCORE, "applicationId": "app_2"}
            conflict = await client.post("/v1/score", json=other, headers={**LIVE, **key})
            assert conflict.status_code == 422, conflict.text
            assert conflict.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"

    run(go())


def test_the_queue_listing_and_counters_are_per_environment(db_url: str) -> None:
    clock = FakeClock()

    async def go() -> None:
        async with client_for(db_url, clock=clock, cap=2) as (client, queue, _):
            live = await queue.enqueue(
                [NewJob(org="acme", route="POST /v1/score", payload={}) for _ in range(3)]
            )
            sandbox = await queue.enqueue(
                [
                    NewJob(org="acme", route="POST /v1/score", payload={}, environment="SANDBOX")
                    for _ in range(2)
                ]
            )
            # Each environment's jobs are first in their own queue.
            assert [e.standing.position for e in live if e.standing] == [1, 2, 3]
            assert [e.standing.position for e in sandbox if e.standing] == [1, 2]
            # One claim: each environment runs under its own cap of 2.
            leases = await queue.claim("w", 10)
            assert (
                sorted(lease.job.environment for lease in leases)
                == ["PRODUCTION"] * 2 + ["SANDBOX"] * 2
            )
            seen = {}
            for name, headers in (("PRODUCTION", LIVE), ("SANDBOX", TEST)):
                body = (await client.get("/v1/queue", headers=headers)).json()
                seen[name] = {j["scoringJobId"] for j in body["data"]}
                counts = (body["queue"]["running"], body["queue"]["queued"])
                assert counts == ((2, 1) if name == "PRODUCTION" else (2, 0)), body["queue"]
            assert seen["PRODUCTION"] == {e.job.id for e in live}
            assert seen["SANDBOX"] == {e.job.id for e in sandbox}
            # Where the queued live job stands counts live jobs only.
            queued = (await client.get("/v1/queue?status=queued", headers=LIVE)).json()["data"]
            assert [j["queuePosition"] for j in queued] == [1]
            assert (await client.get("/v1/queue?status=queued", headers=TEST)).json()["data"] == []

    run(go())


def test_scoring_volume_is_per_environment(db_url: str) -> None:
    clock = FakeClock()

    async def go() -> None:
        async with client_for(db_url, clock=clock) as (client, queue, _):
            await queue.enqueue(
                [
                    NewJob(org="acme", route="POST /v1/score", payload={}, environment=env)
                    for env in ("PRODUCTION", "PRODUCTION", "SANDBOX")
                ]
            )
            for lease in await queue.claim("w", 3):
                await queue.complete(lease, {})
            clock.advance(60)
            totals = {}
            for name, headers in (("PRODUCTION", LIVE), ("SANDBOX", TEST)):
                r = await client.get(
                    "/v1/analytics/scoring-volume", params={"timeRange": "1h"}, headers=headers
                )
                totals[name] = sum(p["completed"] for p in r.json()["data"])
            assert totals == {"PRODUCTION": 2, "SANDBOX": 1}

    run(go())


def test_webhooks_go_to_their_environment_only(db_url: str) -> None:
    """A sandbox job's events are staged for the org's sandbox endpoints only, a live job's
    for its live endpoints only; each key lists its own environment's deliveries."""

    async def go() -> None:
        async with client_for(db_url) as (client, queue, webhooks):
            live_hook, _ = await webhooks.add_endpoint("acme", "http://127.0.0.1:9/live")
            test_hook, _ = await webhooks.add_endpoint(
                "acme", "http://127.0.0.1:9/test", environment="SANDBOX"
            )
            with pytest.raises(ValueError, match="environment"):
                await webhooks.add_endpoint("acme", "http://127.0.0.1:9/x", environment="live")
            ids = {}
            for env in ("PRODUCTION", "SANDBOX"):
                [e] = await queue.enqueue(
                    [NewJob(org="acme", route="POST /v1/score", payload={}, environment=env)]
                )
                ids[env] = e.job.id
            for lease in await queue.claim("w", 2):
                await queue.complete(lease, {"ok": True})
            async with queue.engine.connect() as conn:  # type: ignore[attr-defined]
                staged = {
                    (r.job_id, r.endpoint_id, r.environment)
                    for r in await conn.execute(select(webhook_deliveries))
                }
            assert staged == {
                (ids["PRODUCTION"], live_hook.id, "PRODUCTION"),
                (ids["SANDBOX"], test_hook.id, "SANDBOX"),
            }
            for env, headers in (("PRODUCTION", LIVE), ("SANDBOX", TEST)):
                listed = (await client.get("/v1/webhooks/deliveries", headers=headers)).json()
                assert [d["jobId"] for d in listed["data"]] == [ids[env]]
                other_job = {"jobId": ids[OTHER[env]]}
                theirs = await client.get(
                    "/v1/webhooks/deliveries", params=other_job, headers=headers
                )
                assert theirs.json() == {"data": []}
            assert [e.id for e in await webhooks.list_endpoints("acme", environment="SANDBOX")] == [
                test_hook.id
            ]

    run(go())


def test_the_worker_scores_each_job_with_its_environments_criteria(db_url: str) -> None:
    """The job handler forwards the job's environment to the example upstream, whose
    criteria and results are per environment: a sandbox job cannot score against live
    criteria, and deleting criteria in the sandbox leaves production's."""

    async def go() -> None:
        async with database(db_url) as example_engine:
            example = create_example(example_engine)
            async with client_for(db_url, fallback=example) as (client, queue, webhooks):
                live_posting = await client.post(
                    "/v1/criteria/generate", json=POSTING, headers=LIVE
                )
                assert live_posting.status_code == 200
                # The sandbox has no criteria for the posting: not found, and not deletable.
                assert (await client.get("/v1/criteria/job_1", headers=TEST)).status_code == 404
                assert (await client.delete("/v1/criteria/job_1", headers=TEST)).status_code == 404
                crit = live_posting.json()["criteria"][0]["id"]
                gone = await client.delete(f"/v1/criteria/job_1/{crit}", headers=TEST)
                assert gone.status_code == 404
                intact = await client.get("/v1/criteria/job_1", headers=LIVE)
                assert intact.json()["criteria"] == live_posting.json()["criteria"]
                live = (await client.post("/v1/score", json=SCORE, headers=LIVE)).json()
                sandbox = (await client.post("/v1/score", json=SCORE, headers=TEST)).json()
                worker = Worker(queue, build_handler(POLICY, example), webhooks=webhooks, slots=2)
                await worker.start()
                try:
                    done = await _settled(client, live["scoringJobId"], LIVE)
                    failed = await _settled(client, sandbox["scoringJobId"], TEST)
                finally:
                    await worker.stop()
                assert done["status"] == "completed", done
                assert failed["status"] == "failed" and failed["error"]["status"] == 404

    run(go())


async def _settled(client: Any, job_id: str, headers: dict[str, str]) -> dict[str, Any]:
    for _ in range(1000):
        job: dict[str, Any] = (await client.get(f"/v1/score/{job_id}", headers=headers)).json()
        if job["status"] in ("completed", "failed"):
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish")


def test_endpoints_default_to_production(sqlite_url: str) -> None:
    async def go() -> None:
        async with database(sqlite_url) as engine:
            store = WebhookStore(engine, allow_private_targets=True)
            endpoint, _ = await store.add_endpoint("acme", "http://127.0.0.1:9/hook")
            assert endpoint.environment == "PRODUCTION"
            assert await store.list_endpoints("acme", environment="SANDBOX") == []
            [listed] = await store.list_endpoints("acme")
            assert listed.environment == "PRODUCTION"

    run(go())
