"""The example upstream over HTTP: the real app through httpx's ASGI transport, each
scenario on a fresh SQLite database (tests/example/test_example_storage.py runs the
storage itself on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from tests.conftest import free_port
from tollhouse.errors import ConfigError
from tollhouse.example import create_app, create_app_from_env
from tollhouse.example.app import processing_seconds
from tollhouse.example.store import criterion_id
from tollhouse.keys.model import Identity
from tollhouse.storage.engine import make_engine

Scenario = Callable[[httpx.AsyncClient], Awaitable[None]]
MakeApp = Callable[[AsyncEngine], Starlette]

_folder: list[Path] = []
_databases = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def _database_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Module-scoped: hypothesis refuses function-scoped fixtures on its tests.
    _folder.append(tmp_path_factory.mktemp("example"))
    yield
    _folder.clear()


JOB = {
    "jobId": "job-1",
    "title": "Senior Backend Engineer",
    "description": (
        "Requirements:\n"
        "- 5+ years of experience building backend services in Python\n"
        "- Strong experience with PostgreSQL, Redis and Kubernetes\n"
        "- Experience with distributed systems\n"
        "Nice to have:\n- Terraform\n"
    ),
}
GOOD_RESUME = (
    "Backend engineer, 2016 - present. Built Python services on PostgreSQL and Redis, "
    "deployed on Kubernetes; designed distributed systems. Python, Python."
)
BAD_RESUME = "Pastry chef. Croissants, sourdough and wedding cakes for ten years."
REQUEST_ID = re.compile(r"^req_[0-9a-f]{12}$")
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def fresh_database() -> str:
    """The URL of a new, empty SQLite database."""
    return f"sqlite:///{_folder[0]}/example-{next(_databases)}.db"


def run(scenario: Scenario, make: MakeApp = create_app) -> None:
    """Drive ``scenario`` against ``make(engine)`` on a fresh database, in its own loop."""

    async def main() -> None:
        engine = make_engine(fresh_database())
        try:
            transport = httpx.ASGITransport(app=make(engine))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                await scenario(client)
        finally:
            await engine.dispose()

    asyncio.run(main())


def org(name: str) -> dict[str, str]:
    return {"x-tollhouse-org": name}


def score_body(resume: str = GOOD_RESUME, application_id: str = "app-1") -> dict[str, Any]:
    return {
        "applicationId": application_id,
        "jobId": JOB["jobId"],
        "candidate": {"name": "Ada", "resume": resume},
    }


def assert_error(response: httpx.Response, status: int, code: str, slug: str) -> str:
    """Check the error envelope; return its message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == f"https://tollhouse.dev/errors/{slug}"
    assert error["code"] == code
    assert error["status"] == status
    assert REQUEST_ID.match(error["requestId"]) or error["requestId"] == "req_given"
    assert error["message"]
    return str(error["message"])


async def generate(client: httpx.AsyncClient, **headers: str) -> list[dict[str, Any]]:
    response = await client.post("/v1/criteria/generate", json=JOB, headers=headers)
    assert response.status_code == 200, response.text
    criteria: list[dict[str, Any]] = response.json()["criteria"]
    return criteria


# --- generate and questions ---------------------------------------------------------------


def test_generate_is_deterministic_with_weights_summing_to_one() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        first = await client.post("/v1/criteria/generate", json=JOB)
        second = await client.post("/v1/criteria/generate", json=JOB)
        assert first.status_code == second.status_code == 200
        assert first.json() == second.json()
        body = first.json()
        assert set(body) == {"jobId", "criteria"}
        assert body["jobId"] == "job-1"
        criteria = body["criteria"]
        assert 3 <= len(criteria) <= 8
        assert abs(sum(c["weight"] for c in criteria) - 1.0) < 0.005
        for c in criteria:
            assert set(c) == {"id", "name", "description", "weight"}
            assert c["id"] == criterion_id("anonymous", "job-1", c["name"])
            assert round(c["weight"], 2) == c["weight"]
        names = {c["name"] for c in criteria}
        assert {"Python", "Kubernetes"} <= names

    run(scenario)


def test_generate_replaces_earlier_criteria() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        await generate(client)
        other = {**JOB, "title": "Designer", "description": "Experience with Figma and UX."}
        response = await client.post("/v1/criteria/generate", json=other)
        stored = await client.get("/v1/jobs/job-1/criteria")
        assert stored.json()["criteria"] == response.json()["criteria"]
        assert "Figma" in {c["name"] for c in stored.json()["criteria"]}
        assert "Python" not in {c["name"] for c in stored.json()["criteria"]}

    run(scenario)


def test_questions_mirror_the_criteria_and_store_nothing() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.post("/v1/criteria/questions", json=JOB)
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"jobId", "questions"}
        criteria = await generate(client)
        questions = body["questions"]
        assert [q["name"] for q in questions] == [c["name"] for c in criteria]
        assert [q["weight"] for q in questions] == [c["weight"] for c in criteria]
        for q, c in zip(questions, criteria, strict=True):
            assert set(q) == {"id", "name", "description", "weight"}
            assert q["id"] == "q_" + c["id"].removeprefix("crit_")
            assert q["description"].endswith("?")

    async def nothing_stored(client: httpx.AsyncClient) -> None:
        await client.post("/v1/criteria/questions", json=JOB)
        assert (await client.get("/v1/criteria/job-1")).status_code == 404

    run(scenario)
    run(nothing_stored)


# --- criteria CRUD, both path styles ------------------------------------------------------

STYLES = {"jobs": "/v1/jobs/{job}/criteria", "criteria": "/v1/criteria/{job}"}


@pytest.mark.parametrize("style", STYLES)
def test_get_criteria(style: str) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        path = STYLES[style].format(job="job-1")
        assert_error(await client.get(path), 404, "NOT_FOUND", "not-found")
        criteria = await generate(client)
        response = await client.get(path)
        assert response.status_code == 200
        assert response.json() == {"jobId": "job-1", "criteria": criteria, "archived": False}

    run(scenario)


@pytest.mark.parametrize("style", STYLES)
def test_add_criterion_is_seen_through_both_styles(style: str) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        path = STYLES[style].format(job="job-9")
        created = await client.post(path, json={"name": "On-call", "description": "Pager duty"})
        assert created.status_code == 201
        criterion = created.json()
        assert criterion == {
            "id": criterion_id("anonymous", "job-9", "On-call"),
            "name": "On-call",
            "description": "Pager duty",
            "weight": 0.1,
        }
        again = await client.post(path, json={"name": "On-call", "weight": 1})
        assert again.status_code == 201
        assert again.json()["id"] != criterion["id"]
        for other in STYLES.values():
            listed = (await client.get(other.format(job="job-9"))).json()["criteria"]
            assert [c["id"] for c in listed] == [criterion["id"], again.json()["id"]]

    run(scenario)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, '"name" is required'),
        ({"name": "  "}, '"name" must not be empty'),
        ({"name": 3}, '"name" must be a string'),
        ({"name": "x", "weight": 0}, '"weight" must be greater than 0'),
        ({"name": "x", "weight": 1.5}, '"weight" must be greater than 0'),
        ({"name": "x", "weight": "0.5"}, '"weight" must be a number'),
        ({"name": "x", "weight": True}, '"weight" must be a number'),
    ],
)
def test_add_criterion_validation(style: str, body: dict[str, Any], field: str) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.post(STYLES[style].format(job="job-1"), json=body)
        assert field in assert_error(response, 422, "VALIDATION_FAILED", "validation-failed")

    run(scenario)


def test_patch_criteria_list() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        criteria = await generate(client)
        first, second = criteria[0]["id"], criteria[1]["id"]
        response = await client.patch(
            "/v1/jobs/job-1/criteria",
            json={"criteria": [{"id": first, "weight": 0.5}, {"id": second, "name": "Renamed"}]},
        )
        assert response.status_code == 200
        body = response.json()
        assert body["jobId"] == "job-1"
        assert body["archived"] is False
        by_id = {c["id"]: c for c in body["criteria"]}
        assert by_id[first]["weight"] == 0.5
        assert by_id[second]["name"] == "Renamed"  # the id stays
        assert len(body["criteria"]) == len(criteria)
        assert (await client.get("/v1/criteria/job-1")).json()["criteria"] == body["criteria"]

    run(scenario)


def test_patch_criteria_list_with_an_unknown_id_changes_nothing() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        criteria = await generate(client)
        response = await client.patch(
            "/v1/jobs/job-1/criteria",
            json={"criteria": [{"id": criteria[0]["id"], "weight": 0.9}, {"id": "crit_nope"}]},
        )
        assert "crit_nope" in assert_error(response, 404, "NOT_FOUND", "not-found")
        assert (await client.get("/v1/criteria/job-1")).json()["criteria"] == criteria
        missing_job = await client.patch("/v1/jobs/nope/criteria", json={"criteria": []})
        assert_error(missing_job, 404, "NOT_FOUND", "not-found")
        no_field = await client.patch("/v1/jobs/job-1/criteria", json={})
        message = assert_error(no_field, 422, "VALIDATION_FAILED", "validation-failed")
        assert '"criteria" is required' in message
        no_id = await client.patch("/v1/jobs/job-1/criteria", json={"criteria": [{"name": "x"}]})
        message = assert_error(no_id, 422, "VALIDATION_FAILED", "validation-failed")
        assert '"criteria[0].id" is required' in message

    run(scenario)


def test_patch_one_criterion() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        criteria = await generate(client)
        target = criteria[2]
        response = await client.patch(
            f"/v1/criteria/job-1/{target['id']}", json={"description": "New text", "extra": 1}
        )
        assert response.status_code == 200
        assert response.json() == {**target, "description": "New text"}
        unknown = await client.patch("/v1/criteria/job-1/crit_nope", json={"weight": 0.2})
        assert_error(unknown, 404, "NOT_FOUND", "not-found")
        no_job = await client.patch(f"/v1/criteria/nope/{target['id']}", json={"weight": 0.2})
        assert_error(no_job, 404, "NOT_FOUND", "not-found")
        bad = await client.patch(f"/v1/criteria/job-1/{target['id']}", json={"weight": -1})
        assert_error(bad, 422, "VALIDATION_FAILED", "validation-failed")

    run(scenario)


def test_delete_one_criterion_then_all() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        criteria = await generate(client)
        gone = criteria[0]["id"]
        response = await client.delete(f"/v1/criteria/job-1/{gone}")
        assert response.status_code == 204
        assert response.content == b""
        left = (await client.get("/v1/jobs/job-1/criteria")).json()["criteria"]
        assert gone not in {c["id"] for c in left}
        assert len(left) == len(criteria) - 1
        again = await client.delete(f"/v1/criteria/job-1/{gone}")
        assert_error(again, 404, "NOT_FOUND", "not-found")

        assert (await client.delete("/v1/criteria/job-1")).status_code == 204
        assert_error(await client.get("/v1/criteria/job-1"), 404, "NOT_FOUND", "not-found")
        assert_error(await client.delete("/v1/criteria/job-1"), 404, "NOT_FOUND", "not-found")
        assert_error(
            await client.delete(f"/v1/criteria/job-1/{criteria[1]['id']}"),
            404,
            "NOT_FOUND",
            "not-found",
        )

    run(scenario)


def test_archive() -> None:
    moment = datetime(2025, 1, 15, 10, 30, 0, 123000, tzinfo=UTC)

    async def scenario(client: httpx.AsyncClient) -> None:
        missing = await client.post("/v1/jobs/job-1/criteria/archive")
        assert_error(missing, 404, "NOT_FOUND", "not-found")
        await generate(client)
        response = await client.post("/v1/jobs/job-1/criteria/archive")
        assert response.status_code == 200
        assert response.json() == {
            "jobId": "job-1",
            "archived": True,
            "archivedAt": "2025-01-15T10:30:00.123Z",
        }
        assert (await client.get("/v1/criteria/job-1")).json()["archived"] is True
        again = await client.post("/v1/jobs/job-1/criteria/archive")
        assert again.json()["archivedAt"] == "2025-01-15T10:30:00.123Z"
        await generate(client)  # a new version of the posting is active again
        assert (await client.get("/v1/criteria/job-1")).json()["archived"] is False

    run(scenario, lambda engine: create_app(engine, clock=lambda: moment))


# --- scoring ------------------------------------------------------------------------------


def test_score_a_matching_resume_higher_than_an_unrelated_one() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        criteria = await generate(client)
        good = await client.post("/v1/score", json=score_body(GOOD_RESUME, "app-good"))
        bad = await client.post("/v1/score", json=score_body(BAD_RESUME, "app-bad"))
        assert good.status_code == bad.status_code == 200
        good_body, bad_body = good.json(), bad.json()
        assert good_body["score"] > bad_body["score"]
        for body in (good_body, bad_body):
            assert set(body) == {
                "scoringJobId",
                "applicationId",
                "jobId",
                "status",
                "score",
                "breakdown",
                "completedAt",
            }
            assert re.match(r"^sj_[0-9a-f]{16}$", body["scoringJobId"])
            assert body["status"] == "completed"
            assert body["jobId"] == "job-1"
            assert 0 <= body["score"] <= 100
            assert round(body["score"], 1) == body["score"]
            assert ISO_Z.match(body["completedAt"])
            assert [b["criterionId"] for b in body["breakdown"]] == [c["id"] for c in criteria]
            for entry in body["breakdown"]:
                assert set(entry) == {"criterionId", "name", "weight", "score", "evidence"}
        python = next(b for b in good_body["breakdown"] if b["name"] == "Python")
        assert "Python" in python["evidence"]

    run(scenario)


def test_score_reads_other_candidate_fields_and_ignores_unknown_ones() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        await generate(client)
        plain = score_body("Cook.", "a1")
        richer = score_body("Cook.", "a2")
        richer["candidate"]["skills"] = ["Python", "Kubernetes"]
        richer["unknownTopLevel"] = {"ignored": True}
        low = (await client.post("/v1/score", json=plain)).json()["score"]
        high = await client.post("/v1/score", json=richer)
        assert high.status_code == 200
        assert high.json()["score"] > low

    run(scenario)


def test_score_results_can_be_read_back() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        await generate(client)
        first = (await client.post("/v1/score", json=score_body(BAD_RESUME))).json()
        second = (await client.post("/v1/score", json=score_body(GOOD_RESUME))).json()
        by_id = await client.get(f"/v1/score/{first['scoringJobId']}")
        assert by_id.status_code == 200
        assert by_id.json() == first
        latest = await client.get("/v1/score/application/app-1")
        assert latest.status_code == 200
        assert latest.json() == second
        unknown = await client.get("/v1/score/sj_0000000000000000")
        assert "sj_0000000000000000" in assert_error(unknown, 404, "NOT_FOUND", "not-found")
        no_app = await client.get("/v1/score/application/nobody")
        assert "nobody" in assert_error(no_app, 404, "NOT_FOUND", "not-found")

    run(scenario)


def test_score_routes_do_not_capture_each_other() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        application = await client.get("/v1/score/application/x")
        assert "application" in assert_error(application, 404, "NOT_FOUND", "not-found")
        batch = await client.get("/v1/score/batch")
        assert_error(batch, 405, "METHOD_NOT_ALLOWED", "method-not-allowed")
        assert batch.headers["allow"] == "POST"
        post_id = await client.post("/v1/score/sj_0000000000000000", json={})
        assert_error(post_id, 405, "METHOD_NOT_ALLOWED", "method-not-allowed")

    run(scenario)


def test_score_without_criteria_says_to_generate_first() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.post("/v1/score", json=score_body())
        message = assert_error(response, 404, "NOT_FOUND", "not-found")
        assert "POST /v1/criteria/generate" in message

    run(scenario)


def test_score_after_all_criteria_were_deleted_is_404() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        for criterion in await generate(client):
            await client.delete(f"/v1/criteria/job-1/{criterion['id']}")
        response = await client.post("/v1/score", json=score_body())
        assert_error(response, 404, "NOT_FOUND", "not-found")

    run(scenario)


def test_batch_mixes_results_and_errors() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        await generate(client)
        no_resume = score_body(application_id="a2")
        del no_resume["candidate"]["resume"]
        items = [
            score_body(GOOD_RESUME, "a1"),
            no_resume,
            "not an object",
            {**score_body(application_id="a4"), "jobId": "unknown-job"},
            score_body(BAD_RESUME, "a5"),
        ]
        response = await client.post(
            "/v1/score/batch", json={"items": items}, headers={"x-request-id": "req_given"}
        )
        assert response.status_code == 200
        results = response.json()["results"]
        assert [r["index"] for r in results] == [0, 1, 2, 3, 4]
        assert [r["status"] for r in results] == [
            "completed",
            "error",
            "error",
            "error",
            "completed",
        ]
        assert results[0]["score"] > results[4]["score"]
        assert results[1]["error"] == {
            "type": "https://tollhouse.dev/errors/validation-failed",
            "code": "VALIDATION_FAILED",
            "status": 422,
            "message": 'field "candidate.resume" is required',
            "requestId": "req_given",
        }
        assert results[2]["error"]["code"] == "VALIDATION_FAILED"
        assert results[3]["error"]["code"] == "NOT_FOUND"
        stored = await client.get(f"/v1/score/{results[0]['scoringJobId']}")
        assert stored.json() == {k: v for k, v in results[0].items() if k != "index"}

    run(scenario)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, 'field "items" is required'),
        ({"items": {}}, 'field "items" must be an array'),
        ({"items": []}, 'field "items" must hold 1 to 100'),
        ({"items": [{}] * 101}, 'field "items" must hold 1 to 100'),
    ],
)
def test_batch_size_is_checked(body: dict[str, Any], message: str) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.post("/v1/score/batch", json=body)
        assert message in assert_error(response, 422, "VALIDATION_FAILED", "validation-failed")

    run(scenario)


@pytest.mark.parametrize(
    "make",
    [
        lambda engine: create_app(engine, max_results_per_org=2),
        lambda engine: create_app_from_env({"TOLLHOUSE_EXAMPLE_MAX_RESULTS": "2"}, database=engine),
    ],
    ids=["argument", "environment"],
)
def test_scoring_results_are_bounded_per_org(make: MakeApp) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        await generate(client)
        ids = []
        for i in range(3):
            body = (await client.post("/v1/score", json=score_body(application_id=f"a{i}"))).json()
            ids.append(body["scoringJobId"])
        assert (await client.get(f"/v1/score/{ids[0]}")).status_code == 404
        assert (await client.get(f"/v1/score/{ids[1]}")).status_code == 200
        assert (await client.get(f"/v1/score/{ids[2]}")).status_code == 200

    run(scenario, make)


@pytest.mark.parametrize(
    "make",
    [
        lambda engine: create_app(engine, max_jobs_per_org=2),
        lambda engine: create_app_from_env({"TOLLHOUSE_EXAMPLE_MAX_JOBS": "2"}, database=engine),
    ],
    ids=["argument", "environment"],
)
def test_jobs_are_bounded_per_org_least_recently_changed_first(make: MakeApp) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        for job_id in ("j1", "j2"):
            await client.post("/v1/criteria/generate", json={**JOB, "jobId": job_id})
        # j1 changes again, so j2 is now the least recently changed.
        assert (await client.post("/v1/criteria/j1", json={"name": "On-call"})).status_code == 201
        await client.post("/v1/criteria/generate", json={**JOB, "jobId": "j3"})
        assert (await client.get("/v1/criteria/j2")).status_code == 404
        assert (await client.get("/v1/criteria/j1")).status_code == 200
        assert (await client.get("/v1/criteria/j3")).status_code == 200
        # The bound is per org (and environment).
        await client.post("/v1/criteria/generate", json={**JOB, "jobId": "j9"}, headers=org("b"))
        assert (await client.get("/v1/criteria/j1")).status_code == 200

    run(scenario, make)


@pytest.mark.parametrize("value", ["0", "-3", "many", "2.5"])
def test_bad_bounds_in_the_environment_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=r"TOLLHOUSE_EXAMPLE_MAX_JOBS=.*at least 1"):
        create_app_from_env({"TOLLHOUSE_EXAMPLE_MAX_JOBS": value}, database=fresh_database())


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/criteria/generate", {"title": "t", "description": "d"}, "jobId"),
        ("/v1/criteria/generate", {"jobId": "j", "description": "d"}, "title"),
        ("/v1/criteria/generate", {"jobId": "j", "title": "t"}, "description"),
        ("/v1/criteria/questions", {"jobId": "j", "title": "t"}, "description"),
        ("/v1/criteria/generate", {"jobId": 7, "title": "t", "description": "d"}, "jobId"),
        ("/v1/criteria/generate", {"jobId": "j", "title": "", "description": "d"}, "title"),
        ("/v1/score", {"jobId": "j", "candidate": {}}, "applicationId"),
        ("/v1/score", {"applicationId": "a", "candidate": {}}, "jobId"),
        ("/v1/score", {"applicationId": "a", "jobId": "j"}, "candidate"),
        ("/v1/score", {"applicationId": "a", "jobId": "j", "candidate": []}, "candidate"),
        (
            "/v1/score",
            {"applicationId": "a", "jobId": "j", "candidate": {"name": "n"}},
            "candidate.resume",
        ),
        (
            "/v1/score",
            {"applicationId": "a", "jobId": "j", "candidate": {"resume": "r"}},
            "candidate.name",
        ),
        (
            "/v1/score",
            {"applicationId": "a", "jobId": "j", "candidate": {"name": "n", "resume": None}},
            "candidate.resume",
        ),
    ],
)
def test_422_names_the_field(path: str, body: dict[str, Any], field: str) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.post(path, json=body)
        message = assert_error(response, 422, "VALIDATION_FAILED", "validation-failed")
        assert message.startswith(f'field "{field}" ')

    run(scenario)


def test_too_long_fields_are_422_not_500() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        body = {**JOB, "jobId": "j" * 1000}
        response = await client.post("/v1/criteria/generate", json=body)
        message = assert_error(response, 422, "VALIDATION_FAILED", "validation-failed")
        assert "at most 256 characters" in message

    run(scenario)


@pytest.mark.parametrize("path", ["/v1/criteria/generate", "/v1/score", "/v1/score/batch"])
@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_400_for_a_body_that_is_not_a_json_object(path: str, content: bytes) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.post(
            path, content=content, headers={"content-type": "application/json"}
        )
        assert_error(response, 400, "BAD_REQUEST", "bad-request")

    run(scenario)


def test_request_id_is_echoed_or_generated() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        given = await client.get("/v1/criteria/x", headers={"x-request-id": "req_given"})
        assert given.json()["error"]["requestId"] == "req_given"
        generated = await client.get("/v1/criteria/x")
        assert REQUEST_ID.match(generated.json()["error"]["requestId"])

    run(scenario)


def test_unknown_routes_use_the_envelope() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        assert_error(await client.get("/v2/nothing"), 404, "NOT_FOUND", "not-found")
        wrong_method = await client.put("/v1/criteria/generate", json=JOB)
        assert_error(wrong_method, 405, "METHOD_NOT_ALLOWED", "method-not-allowed")

    run(scenario)


# --- org isolation ------------------------------------------------------------------------


def test_one_org_never_sees_or_changes_anothers_data() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        criteria = await generate(client, **org("org-a"))
        crit = criteria[0]["id"]
        scored = await client.post("/v1/score", json=score_body(), headers=org("org-a"))
        sj = scored.json()["scoringJobId"]
        b = org("org-b")

        for request in (
            client.get("/v1/jobs/job-1/criteria", headers=b),
            client.get("/v1/criteria/job-1", headers=b),
            client.get("/v1/criteria/job-1"),  # no org header: "anonymous", not org-a
            client.patch("/v1/jobs/job-1/criteria", json={"criteria": []}, headers=b),
            client.patch(f"/v1/criteria/job-1/{crit}", json={"weight": 0.9}, headers=b),
            client.delete(f"/v1/criteria/job-1/{crit}", headers=b),
            client.delete("/v1/criteria/job-1", headers=b),
            client.post("/v1/jobs/job-1/criteria/archive", headers=b),
            client.post("/v1/score", json=score_body(), headers=b),
            client.get(f"/v1/score/{sj}", headers=b),
            client.get("/v1/score/application/app-1", headers=b),
        ):
            assert_error(await request, 404, "NOT_FOUND", "not-found")

        batch = await client.post("/v1/score/batch", json={"items": [score_body()]}, headers=b)
        assert batch.json()["results"][0]["error"]["code"] == "NOT_FOUND"

        # org-a's data is untouched.
        after = await client.get("/v1/criteria/job-1", headers=org("org-a"))
        assert after.json() == {"jobId": "job-1", "criteria": criteria, "archived": False}
        assert (await client.get(f"/v1/score/{sj}", headers=org("org-a"))).status_code == 200

        # The same job id in org-b is its own job, with its own ids.
        own = await generate(client, **b)
        assert {c["id"] for c in own}.isdisjoint({c["id"] for c in criteria})
        added = await client.post("/v1/criteria/job-1", json={"name": "B only"}, headers=b)
        assert added.status_code == 201
        a_names = [
            c["name"]
            for c in (await client.get("/v1/criteria/job-1", headers=org("org-a"))).json()[
                "criteria"
            ]
        ]
        assert "B only" not in a_names

    run(scenario)


# --- the delay hook -----------------------------------------------------------------------


def test_delay_header_holds_the_response() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        started = time.monotonic()
        response = await client.get("/v1/criteria/x", headers={"x-example-delay-ms": "200"})
        elapsed = time.monotonic() - started
        assert response.status_code == 404
        assert elapsed >= 0.2

    run(scenario)


@pytest.mark.parametrize("value", ["-1", "abc", "30001", "1.5", "", "9" * 5000])
def test_delay_header_must_be_0_to_30000(value: str) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.get("/v1/criteria/x", headers={"x-example-delay-ms": value})
        message = assert_error(response, 422, "VALIDATION_FAILED", "validation-failed")
        assert "x-example-delay-ms" in message

    run(scenario)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "jobId",
                    "title",
                    "description",
                    "applicationId",
                    "candidate",
                    "name",
                    "resume",
                    "weight",
                    "items",
                    "criteria",
                    "id",
                    "x",
                ]
            ),
            children,
            max_size=6,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=40, deadline=None)
@given(body=_JSON)
def test_any_json_body_gets_an_answer_below_500(body: Any) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        await generate(client)
        for method, path in (
            ("POST", "/v1/criteria/generate"),
            ("POST", "/v1/criteria/questions"),
            ("POST", "/v1/criteria/job-1"),
            ("PATCH", "/v1/jobs/job-1/criteria"),
            ("PATCH", "/v1/criteria/job-1/crit_x"),
            ("POST", "/v1/score"),
            ("POST", "/v1/score/batch"),
        ):
            response = await client.request(method, path, json=body)
            assert response.status_code < 500, (method, path, response.text)
            if response.status_code >= 400:
                assert response.json()["error"]["status"] == response.status_code

    run(scenario)


# --- environments -------------------------------------------------------------------------


def env(name: str, environment: str) -> dict[str, str]:
    return {"x-tollhouse-org": name, "x-tollhouse-environment": environment}


def test_sandbox_and_production_data_are_apart() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        sandbox = await generate(client, **env("acme", "SANDBOX"))
        # Any case names the same environment.
        same = await client.get("/v1/criteria/job-1", headers=env("acme", "sandbox"))
        assert same.json()["criteria"] == sandbox
        for other in (env("acme", "PRODUCTION"), org("acme")):
            assert_error(
                await client.get("/v1/criteria/job-1", headers=other), 404, "NOT_FOUND", "not-found"
            )
        scored = await client.post("/v1/score", json=score_body(), headers=env("acme", "SANDBOX"))
        sj = scored.json()["scoringJobId"]
        live = await client.get(f"/v1/score/{sj}", headers=env("acme", "PRODUCTION"))
        assert_error(live, 404, "NOT_FOUND", "not-found")
        bad = await client.get("/v1/criteria/job-1", headers=env("acme", "STAGING"))
        message = assert_error(bad, 422, "VALIDATION_FAILED", "validation-failed")
        assert "x-tollhouse-environment" in message

    run(scenario)


def test_the_gateways_identity_names_the_same_data_as_the_headers() -> None:
    """Mounted in-process, the org and environment come from the caller's key; proxied,
    from the headers the proxy sets from that key: both reach the same rows."""

    def behind_a_gateway(engine: AsyncEngine) -> Starlette:
        example = create_app(engine)

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and b"x-as-identity" in dict(scope["headers"]):
                identity = Identity("key_1", "acm\u00e9", "PRODUCTION", "root")
                scope["state"] = {"identity": identity}
            await example(scope, receive, send)

        return app  # type: ignore[return-value]

    async def scenario(client: httpx.AsyncClient) -> None:
        made = await client.post("/v1/criteria/generate", json=JOB, headers={"x-as-identity": "1"})
        assert made.status_code == 200
        proxied = {
            "x-tollhouse-org": "acm\u00e9".encode(),
            "x-tollhouse-environment": b"PRODUCTION",
        }
        read = await client.get("/v1/criteria/job-1", headers=proxied)
        assert read.json()["criteria"] == made.json()["criteria"]
        assert made.json()["criteria"][0]["id"] == criterion_id(
            "acm\u00e9", "job-1", made.json()["criteria"][0]["name"]
        )

    run(scenario, behind_a_gateway)


def test_an_org_header_too_long_for_the_store_is_422() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.get("/v1/criteria/job-1", headers=org("o" * 65))
        message = assert_error(response, 422, "VALIDATION_FAILED", "validation-failed")
        assert '"x-tollhouse-org"' in message and "64" in message

    run(scenario)


# --- processing time and the database -----------------------------------------------------


def test_processing_time_holds_a_scoring_without_blocking_other_requests() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        await generate(client)
        scoring = asyncio.create_task(client.post("/v1/score", json=score_body()))
        # Other requests are answered meanwhile (the wait is asyncio.sleep) ...
        for _ in range(3):
            assert (await client.get("/v1/criteria/job-1")).status_code == 200
        latest = await client.get("/v1/score/application/app-1")
        assert_error(latest, 404, "NOT_FOUND", "not-found")
        # ... while the scoring, an hour long, is still under way and has stored nothing.
        assert not scoring.done()
        scoring.cancel()
        with pytest.raises(asyncio.CancelledError):
            await scoring

    run(scenario, lambda engine: create_app(engine, processing_seconds=3600))


def test_processing_time_is_reported_and_a_batch_waits_once() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        await generate(client)
        single = await client.post("/v1/score", json=score_body())
        assert single.status_code == 200
        assert single.headers["x-example-processing-seconds"] == "0.001"
        batch = await client.post("/v1/score/batch", json={"items": [score_body()] * 3})
        assert batch.headers["x-example-processing-seconds"] == "0.001"
        assert [r["status"] for r in batch.json()["results"]] == ["completed"] * 3
        read = await client.get(f"/v1/score/{single.json()['scoringJobId']}")
        assert "x-example-processing-seconds" not in read.headers

    run(
        scenario,
        lambda engine: create_app_from_env(
            {"TOLLHOUSE_EXAMPLE_PROCESSING_SECONDS": "0.001"}, database=engine
        ),
    )


def test_without_processing_time_there_is_no_processing_header() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        await generate(client)
        response = await client.post("/v1/score", json=score_body())
        assert "x-example-processing-seconds" not in response.headers

    run(scenario)


@pytest.mark.parametrize("value", ["-1", "abc", "nan", "inf", "3601", "1e9"])
def test_bad_processing_times_are_refused_at_startup(value: str) -> None:
    with pytest.raises(ConfigError, match=r"TOLLHOUSE_EXAMPLE_PROCESSING_SECONDS=.*0 to 3600"):
        create_app_from_env(
            {"TOLLHOUSE_EXAMPLE_PROCESSING_SECONDS": value}, database=fresh_database()
        )
    with pytest.raises(ConfigError, match="processing_seconds"):
        create_app(fresh_database(), processing_seconds=float(value) if value != "abc" else -1)


@pytest.mark.parametrize("value", ["", "0", "0.5", "30", "3600"])
def test_good_processing_times_are_accepted(value: str) -> None:
    assert processing_seconds(value) == (float(value) if value else 0.0)


def test_a_database_that_cannot_be_reached_is_503() -> None:
    async def main() -> None:
        engine = make_engine(f"postgresql://nobody@127.0.0.1:{free_port()}/none")
        try:
            transport = httpx.ASGITransport(app=create_app(engine))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                response = await client.post("/v1/criteria/generate", json=JOB)
                assert_error(response, 503, "SERVICE_UNAVAILABLE", "service-unavailable")
                assert response.headers["retry-after"] == "1"
        finally:
            await engine.dispose()

    asyncio.run(main())
