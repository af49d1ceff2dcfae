"""The example upstream on SQLite and PostgreSQL through its HTTP API: apps on one
database share their state (several `tollhouse example serve`, or tollhouse instances),
many concurrent scorings are all kept, and values too long for a column are a 422
naming the field, never a database error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from tollhouse.example import create_app
from tollhouse.example.schema import MAX_ORG_CHARS
from tollhouse.storage.engine import make_engine

JOB = {
    "jobId": "job-1",
    "title": "Backend Engineer",
    "description": "Python, PostgreSQL and Redis; 5+ years building APIs.",
}
RESUME = "Backend engineer since 2016: Python services on PostgreSQL and Redis."


def score_body(application_id: str = "app-1", job_id: str = "job-1") -> dict[str, Any]:
    return {
        "applicationId": application_id,
        "jobId": job_id,
        "candidate": {"name": "Ada", "resume": RESUME},
    }


@asynccontextmanager
async def clients(url: str, n: int = 1) -> AsyncIterator[list[httpx.AsyncClient]]:
    """``n`` example apps, each on its own engine on ``url`` (as separate processes)."""
    engines = [make_engine(url) for _ in range(n)]
    opened: list[httpx.AsyncClient] = []
    try:
        for engine in engines:
            transport = httpx.ASGITransport(app=create_app(engine))
            opened.append(httpx.AsyncClient(transport=transport, base_url="http://t"))
        yield opened
    finally:
        for client in opened:
            await client.aclose()
        for engine in engines:
            await engine.dispose()


def run(url: str, scenario: Any) -> None:
    asyncio.run(scenario(url))


def assert_422(response: httpx.Response, named: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_FAILED"
    assert f'"{named}"' in error["message"], error["message"]


def assert_path_400(response: httpx.Response, named: str) -> None:
    """An id in the path against its rule: 400 naming the path parameter."""
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "BAD_REQUEST"
    assert f'path parameter "{named}"' in error["message"], error["message"]


def test_values_too_long_for_a_column_are_refused_and_the_longest_allowed_fit(
    database_url: str,
) -> None:
    async def scenario(url: str) -> None:
        async with clients(url) as (client,):
            longest_id = "j" * 256
            too_long = longest_id + "j"
            assert_422(
                await client.post("/v1/criteria/generate", json={**JOB, "jobId": too_long}), "jobId"
            )
            generated = await client.post(
                "/v1/criteria/generate", json={**JOB, "jobId": longest_id}
            )
            assert generated.status_code == 200, generated.text
            assert (await client.get(f"/v1/criteria/{longest_id}")).status_code == 200
            assert_path_400(await client.get(f"/v1/criteria/{too_long}"), "jobId")
            assert_path_400(
                await client.post(f"/v1/jobs/{too_long}/criteria", json={"name": "x"}), "jobId"
            )

            assert_422(
                await client.post("/v1/score", json=score_body("a" * 257, longest_id)),
                "applicationId",
            )
            scored = await client.post("/v1/score", json=score_body("a" * 256, longest_id))
            assert scored.status_code == 200, scored.text
            latest = await client.get(f"/v1/score/application/{'a' * 256}")
            assert latest.json() == scored.json()
            assert_path_400(await client.get(f"/v1/score/application/{'a' * 257}"), "applicationId")
            # Longer than the example's own ids (32) but within the rule (40): unknown.
            unknown = await client.get(f"/v1/score/sj_{'0' * 37}")
            assert unknown.status_code == 404
            assert_path_400(await client.get(f"/v1/score/sj_{'0' * 250}"), "scoringJobId")
            batch = await client.post(
                "/v1/score/batch", json={"items": [score_body("b", "j" * 300)]}
            )
            assert batch.json()["results"][0]["error"]["code"] == "VALIDATION_FAILED"

            # Characters, not bytes: a 64-character org of two-byte letters fits.
            org = "\u00e9" * MAX_ORG_CHARS
            wide = {"x-tollhouse-org": org.encode()}
            assert (
                await client.post("/v1/criteria/generate", json=JOB, headers=wide)
            ).status_code == 200
            assert (await client.get("/v1/criteria/job-1", headers=wide)).status_code == 200
            longer = {"x-tollhouse-org": (org + "\u00e9").encode()}
            assert_422(await client.get("/v1/criteria/job-1", headers=longer), "x-tollhouse-org")
            assert_422(
                await client.get(
                    "/v1/criteria/job-1", headers={"x-tollhouse-environment": "STAGING"}
                ),
                "x-tollhouse-environment",
            )
            assert_path_400(await client.get("/v1/criteria/job%00"), "jobId")

    run(database_url, scenario)


def test_apps_on_one_database_share_criteria_and_results(database_url: str) -> None:
    async def scenario(url: str) -> None:
        async with clients(url, 2) as (a, b):
            who = {"x-tollhouse-org": "acme", "x-tollhouse-environment": "SANDBOX"}
            criteria = (await a.post("/v1/criteria/generate", json=JOB, headers=who)).json()
            read = await b.get("/v1/jobs/job-1/criteria", headers=who)
            assert read.json() == {**criteria, "archived": False}
            added = await b.post("/v1/criteria/job-1", json={"name": "On-call"}, headers=who)
            assert added.status_code == 201
            listed = (await a.get("/v1/criteria/job-1", headers=who)).json()["criteria"]
            assert listed[-1] == added.json()

            scored = (await a.post("/v1/score", json=score_body(), headers=who)).json()
            assert scored["status"] == "completed"
            by_id = await b.get(f"/v1/score/{scored['scoringJobId']}", headers=who)
            assert by_id.json() == scored
            latest = await b.get("/v1/score/application/app-1", headers=who)
            assert latest.json() == scored

            archived = await b.post("/v1/jobs/job-1/criteria/archive", headers=who)
            assert archived.status_code == 200
            assert (await a.get("/v1/criteria/job-1", headers=who)).json()["archived"] is True
            again = await a.post("/v1/jobs/job-1/criteria/archive", headers=who)
            assert again.json() == archived.json()

            # Production data of the same org is apart.
            live = {**who, "x-tollhouse-environment": "PRODUCTION"}
            assert (await b.get("/v1/criteria/job-1", headers=live)).status_code == 404
            assert (await b.post("/v1/score", json=score_body(), headers=live)).status_code == 404

            assert (await a.delete("/v1/criteria/job-1", headers=who)).status_code == 204
            assert (await b.get("/v1/criteria/job-1", headers=who)).status_code == 404
            # Results stay readable once their job's criteria are gone.
            assert (
                await b.get(f"/v1/score/{scored['scoringJobId']}", headers=who)
            ).json() == scored

    run(database_url, scenario)


def test_concurrent_scorings_are_all_kept(database_url: str) -> None:
    async def scenario(url: str) -> None:
        async with clients(url, 2) as (a, b):
            await a.post("/v1/criteria/generate", json=JOB)
            responses = await asyncio.gather(
                *((a, b)[i % 2].post("/v1/score", json=score_body(f"app-{i}")) for i in range(200))
            )
            assert {r.status_code for r in responses} == {200}
            ids = {r.json()["scoringJobId"] for r in responses}
            assert len(ids) == 200
            for i in (0, 99, 199):
                latest = await b.get(f"/v1/score/application/app-{i}")
                assert latest.json() == responses[i].json()

    run(database_url, scenario)
