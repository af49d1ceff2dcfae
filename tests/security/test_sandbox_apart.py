"""Sandbox apart from production, against a real server on SQLite and PostgreSQL: one org,
a ``member`` key of each environment (``sk_test_`` → SANDBOX, ``sk_live_`` → PRODUCTION).
Each reproduces a way a sandbox key once reached production data (and checks the
reverse): reading a live scoring result, deleting live criteria, and a live
``POST /v1/score`` replaying a sandbox job through a shared ``Idempotency-Key``.

Besides the example upstream mounted in-process, the tests run with it as its own
process (`tollhouse example serve`, on PostgreSQL) behind ``[upstream] url``, as the
finding's deployment had it: there the environment reaches the upstream only as the
``X-Tollhouse-Environment`` header the proxy and the job handler send."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import httpx
import pytest

from tests import services
from tests.conftest import ALLOW_PRIVATE_TARGETS, Server, start_server, stop_server
from tests.example.support import start_example

pytestmark = pytest.mark.integration

SCORE = {
    "applicationId": "app-1",
    "jobId": "posting-1",
    "candidate": {"name": "Ada", "resume": "Python and PostgreSQL for six years."},
}
POSTING = {"jobId": "posting-1", "title": "Engineer", "description": "Python, PostgreSQL, APIs."}


@pytest.fixture(
    scope="module",
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("example over http", marks=pytest.mark.postgres),
    ],
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """`tollhouse serve` with the built-in policy on the embedded SQLite default, on
    PostgreSQL, or on PostgreSQL in front of `tollhouse example serve` (same database)."""
    if request.param == "sqlite":
        yield request.getfixturevalue("default_server")
        return
    pg: services.PostgresServer = request.getfixturevalue("postgres_service")
    url = pg.create_database(f"apart_{secrets.token_hex(4)}")
    cwd = tmp_path_factory.mktemp("apart")
    env = {**ALLOW_PRIVATE_TARGETS, "TOLLHOUSE_DATABASE_URL": url}
    if request.param == "postgres":
        started = start_server(cwd, env=env)
        yield started
        stop_server(started)
        return
    example = start_example(cwd, {"TOLLHOUSE_DATABASE_URL": url})
    policy = resources.files("tollhouse.policy").joinpath("default.toml").read_text("utf-8")
    config = cwd / "tollhouse.toml"
    config.write_text(policy.replace("[upstream]\n", f'[upstream]\nurl = "{example.url}"\n', 1))
    try:
        started = start_server(cwd, config, env=env)
        yield started
        stop_server(started)
    finally:
        example.stop()


@dataclass
class Org:
    live: httpx.Client
    test: httpx.Client


def _client(server: Server, secret: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {secret}", "X-Tenant-Id": "tenant-1"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=15)


@pytest.fixture
def org(server: Server) -> Iterator[Org]:
    name = f"apart-{secrets.token_hex(4)}"
    live = server.key(name, role="member", env="live")["key"]
    test = server.key(name, role="member", env="test")["key"]
    assert live.startswith("sk_live_") and test.startswith("sk_test_")
    with _client(server, live) as lc, _client(server, test) as tc:
        yield Org(lc, tc)


def _completed(client: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/score/{job_id}").json()
        if job["status"] in ("completed", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


@pytest.mark.parametrize("made_with", ["live", "test"])
def test_a_scoring_result_is_404_to_the_other_environment(org: Org, made_with: str) -> None:
    mine, theirs = (org.live, org.test) if made_with == "live" else (org.test, org.live)
    assert mine.post("/v1/criteria/generate", json=POSTING).status_code == 200
    accepted = mine.post("/v1/score", json=SCORE)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["scoringJobId"]
    done = _completed(mine, job_id)
    assert done["status"] == "completed" and "score" in done["result"], done
    for path in (f"/v1/score/{job_id}", f"/v1/score/application/{SCORE['applicationId']}"):
        assert mine.get(path).status_code == 200
        other = theirs.get(path)
        assert other.status_code == 404, (path, other.text)
        assert other.json()["error"]["code"] == "NOT_FOUND"
        assert "result" not in other.text and str(done["result"]["score"]) not in other.text


def test_a_sandbox_key_cannot_change_live_criteria(org: Org) -> None:
    made = org.live.post("/v1/criteria/generate", json=POSTING)
    assert made.status_code == 200
    criteria = made.json()["criteria"]
    first = criteria[0]["id"]
    posting = POSTING["jobId"]
    attempts = [
        org.test.delete(f"/v1/criteria/{posting}"),
        org.test.delete(f"/v1/criteria/{posting}/{first}"),
        org.test.patch(f"/v1/criteria/{posting}/{first}", json={"weight": 0.99}),
        org.test.patch(f"/v1/jobs/{posting}/criteria", json={"criteria": [{"id": first}]}),
        org.test.post(f"/v1/jobs/{posting}/criteria/archive"),
        org.test.get(f"/v1/criteria/{posting}"),
    ]
    for r in attempts:
        assert r.status_code == 404, (r.request.method, r.request.url.path, r.text)
    intact = org.live.get(f"/v1/criteria/{posting}")
    assert intact.status_code == 200
    assert intact.json() == {"jobId": posting, "criteria": criteria, "archived": False}
    # The sandbox's own criteria for the same posting are its own; production's stay.
    assert org.test.post("/v1/criteria/generate", json=POSTING).status_code == 200
    assert org.test.delete(f"/v1/criteria/{posting}").status_code == 204
    assert org.live.get(f"/v1/criteria/{posting}").json()["criteria"] == criteria


def test_a_shared_idempotency_key_is_a_new_job_in_the_other_environment(org: Org) -> None:
    key = {"Idempotency-Key": f"order-{secrets.token_hex(4)}"}
    for client in (org.test, org.live):
        assert client.post("/v1/criteria/generate", json=POSTING).status_code == 200
    sandbox = org.test.post("/v1/score", json=SCORE, headers=key)
    live = org.live.post("/v1/score", json=SCORE, headers=key)
    assert sandbox.status_code == live.status_code == 202, (sandbox.text, live.text)
    assert "idempotent-replayed" not in live.headers
    sandbox_id, live_id = sandbox.json()["scoringJobId"], live.json()["scoringJobId"]
    assert live_id != sandbox_id
    # Each is a job of its own environment only, and each key replays its own.
    assert org.live.get(f"/v1/score/{live_id}").status_code == 200
    assert org.test.get(f"/v1/score/{live_id}").status_code == 404
    assert org.live.get(f"/v1/score/{sandbox_id}").status_code == 404
    replay = org.live.post("/v1/score", json=SCORE, headers=key)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["scoringJobId"] == live_id


def test_the_queue_lists_one_environment(org: Org) -> None:
    for client in (org.test, org.live):
        assert client.post("/v1/criteria/generate", json=POSTING).status_code == 200
    live_ids = {org.live.post("/v1/score", json=SCORE).json()["scoringJobId"] for _ in range(2)}
    test_id = org.test.post("/v1/score", json=SCORE).json()["scoringJobId"]
    for client, expected in ((org.live, live_ids), (org.test, {test_id})):
        body = client.get("/v1/queue", params={"limit": "100"}).json()
        assert {j["scoringJobId"] for j in body["data"]} == expected, body
        queue = body["queue"]
        assert queue["queued"] + queue["running"] <= len(expected)
