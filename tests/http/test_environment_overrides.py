"""Limit overrides for one environment, against a real server on SQLite and PostgreSQL:
a SANDBOX-only override changes what a sandbox key gets (headers, 429, status, its own
``GET /v1/limits``) while a PRODUCTION key of the same org keeps the policy's limit; the
provider API's validation and its ``GET …/limits`` shape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import TESTS, serve_in_thread
from tests.faults.support import wait_until
from tests.storage.support import database_url
from tollhouse.http.app import Tollhouse
from tollhouse.settings import load_settings

__all__ = ["database_url"]

pytestmark = pytest.mark.integration

TOKEN = "adm_" + "e" * 40
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
#: tests/data/tight.toml: 5 per ten years on GET /v1/score/{scoringJobId}.
TINY = "tiny"
POLICY_LIMIT = 5


@pytest.fixture
def server(database_url: str) -> Iterator[str]:
    settings = load_settings(
        TESTS / "data" / "tight.toml",
        environ={"TOLLHOUSE_DATABASE_URL": database_url, "TOLLHOUSE_ADMIN_TOKEN": TOKEN},
    )
    with serve_in_thread(Tollhouse(settings=settings)) as url:
        yield url


def _error(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == code, error
    return error


def _org(c: httpx.Client, org: str) -> tuple[dict[str, str], dict[str, str]]:
    """An org with a root key in each environment: (sandbox, production) headers."""
    assert c.post("/v1/admin/orgs", headers=ADMIN, json={"id": org}).status_code == 201
    keys = []
    for env in ("SANDBOX", "PRODUCTION"):
        made = c.post(
            f"/v1/admin/orgs/{org}/keys", headers=ADMIN, json={"environment": env, "role": "root"}
        )
        assert made.status_code == 201, made.text
        keys.append({"Authorization": f"Bearer {made.json()['key']}"})
    return keys[0], keys[1]


def _status_limit(c: httpx.Client, key: dict[str, str]) -> int:
    answer = c.get("/v1/rate-limit/status", headers=key)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["buckets"][TINY]["limit"])


def test_a_sandbox_override_leaves_production_alone(server: str) -> None:
    with httpx.Client(base_url=server, timeout=15) as c:
        sandbox, production = _org(c, "acme")
        put = c.put(
            f"/v1/admin/orgs/acme/limits/{TINY}",
            headers=ADMIN,
            json={"limit": 2, "environment": "SANDBOX"},
        )
        assert put.status_code == 200, put.text
        assert put.json()["environment"] == "SANDBOX" and put.json()["keyId"] is None
        wait_until(lambda: _status_limit(c, sandbox) == 2, "the sandbox override on the gateway")
        assert _status_limit(c, production) == POLICY_LIMIT

        # The sandbox key: limit 2, the third call refused.
        calls = [c.get("/v1/score/job_x", headers=sandbox) for _ in range(3)]
        assert [r.headers["x-ratelimit-limit"] for r in calls[:2]] == ["2", "2"]
        assert [r.status_code == 429 for r in calls] == [False, False, True]
        _error(calls[2], 429, "RATE_LIMITED")
        # The production key of the same org: the policy's 5, nothing refused.
        calls = [c.get("/v1/score/job_x", headers=production) for _ in range(3)]
        assert [r.headers["x-ratelimit-limit"] for r in calls] == ["5", "5", "5"]
        assert all(r.status_code != 429 for r in calls)

        # Each key's own view shows its environment's limit, never the other's override.
        mine = c.get("/v1/limits", headers=sandbox).json()
        [bucket] = [b for b in mine["buckets"] if b["name"] == TINY]
        assert (bucket["limit"], bucket["overridden"]) == (2, True)
        assert "byEnvironment" not in bucket and "environmentOverrides" not in bucket
        theirs = c.get("/v1/limits", headers=production).json()
        [bucket] = [b for b in theirs["buckets"] if b["name"] == TINY]
        assert (bucket["limit"], bucket["overridden"], bucket["override"]) == (5, False, None)

        # An override for every environment reaches production; sandbox keeps its own.
        c.put(f"/v1/admin/orgs/acme/limits/{TINY}", headers=ADMIN, json={"limit": 4})
        wait_until(lambda: _status_limit(c, production) == 4, "the org's override on the gateway")
        assert _status_limit(c, sandbox) == 2
        theirs = c.get("/v1/limits", headers=production).json()
        [bucket] = [b for b in theirs["buckets"] if b["name"] == TINY]
        assert (bucket["limit"], bucket["overridden"]) == (4, True)

        # Clearing the sandbox override: the one for every environment applies there.
        gone = c.delete(
            f"/v1/admin/orgs/acme/limits/{TINY}", headers=ADMIN, params={"environment": "SANDBOX"}
        )
        assert gone.status_code == 204
        wait_until(lambda: _status_limit(c, sandbox) == 4, "the sandbox override to clear")
        assert _status_limit(c, production) == 4


def test_provider_api_validation_and_limits_shape(server: str) -> None:
    with httpx.Client(base_url=server, timeout=15, headers=ADMIN) as c:
        _org(c, "acme")
        key = c.post("/v1/admin/orgs/acme/keys", json={"environment": "SANDBOX"}).json()
        path = f"/v1/admin/orgs/acme/limits/{TINY}"
        both = {"limit": 3, "environment": "SANDBOX", "keyId": key["id"]}
        error = _error(c.put(path, json=both), 422, "VALIDATION_FAILED")
        assert "keyId" in error["message"] and "environment" in error["message"]
        for bad in ("staging", "sandbox", 5, ""):
            error = _error(
                c.put(path, json={"limit": 3, "environment": bad}), 422, "VALIDATION_FAILED"
            )
            assert "SANDBOX or PRODUCTION" in error["message"]
        _error(c.delete(path, params={"environment": "staging"}), 400, "BAD_REQUEST")
        _error(
            c.delete(path, params={"environment": "SANDBOX", "keyId": key["id"]}),
            400,
            "BAD_REQUEST",
        )
        error = _error(c.delete(path, params={"environment": "PRODUCTION"}), 404, "NOT_FOUND")
        assert "PRODUCTION" in error["message"]
        # environment null is the same as leaving it out: every environment.
        every = c.put(path, json={"limit": 4, "environment": None})
        assert every.status_code == 200 and every.json()["environment"] is None

        assert c.put(path, json={"limit": 9, "environment": "PRODUCTION"}).status_code == 200
        assert c.put(path, json={"limit": 1, "keyId": key["id"]}).status_code == 200
        limits = c.get("/v1/admin/orgs/acme/limits").json()
        [bucket] = [b for b in limits["buckets"] if b["name"] == TINY]
        # The existing fields keep describing the org's override for every environment.
        assert (bucket["policyLimit"], bucket["limit"], bucket["overridden"]) == (5, 4, True)
        assert bucket["override"]["limit"] == 4
        assert [(k["keyId"], k["limit"]) for k in bucket["keyOverrides"]] == [(key["id"], 1)]
        assert [(e["environment"], e["limit"]) for e in bucket["environmentOverrides"]] == [
            ("PRODUCTION", 9)
        ]
        assert bucket["environmentOverrides"][0]["updatedAt"].endswith("Z")
        assert bucket["byEnvironment"] == {
            "SANDBOX": {"limit": 4, "overridden": True},
            "PRODUCTION": {"limit": 9, "overridden": True},
        }
        others = [b for b in limits["buckets"] if b["name"] != TINY]
        assert all(
            b["environmentOverrides"] == []
            and b["byEnvironment"]
            == {
                env: {"limit": b["policyLimit"], "overridden": False}
                for env in ("SANDBOX", "PRODUCTION")
            }
            for b in others
        )

        audit = c.get("/v1/admin/audit", params={"action": "limit.set", "org": "acme"}).json()
        envs = [e["details"]["environment"] for e in audit["data"]]
        assert envs == [None, "PRODUCTION", None]  # newest first: key, PRODUCTION, every
