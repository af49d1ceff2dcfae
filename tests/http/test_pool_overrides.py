"""Limit overrides of an in-flight pool, against a real server on SQLite and PostgreSQL:
an org's override changes how many of its requests may be in flight at once (lower and
higher than the policy's), the pool's 429 headers and the rate-limit status show the
overridden limit, a SANDBOX-only override leaves a PRODUCTION key of the same org alone,
and the provider API takes a pool's name where it takes a bucket's."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import serve_in_thread
from tests.faults.support import wait_until
from tests.storage.support import database_url
from tollhouse.http.app import Tollhouse
from tollhouse.settings import load_settings

__all__ = ["database_url"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOKEN = "adm_" + "f" * 40
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
POOL = "gate_inflight"
POLICY_LIMIT = 2
POLICY = f"""
[upstream]
app = "tests.http.gate_upstream:app"

[[buckets]]
name = "calls"
limit = 1000000
window = "3650d"
routes = ["GET /gate/{{gate}}/wait", "GET /gate/{{gate}}/entered", "POST /gate/{{gate}}/open"]

[[pools]]
name = "{POOL}"
limit = {POLICY_LIMIT}
lease = "60s"
routes = ["GET /gate/{{gate}}/wait"]
"""


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[str]:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    settings = load_settings(
        policy,
        environ={"TOLLHOUSE_DATABASE_URL": database_url, "TOLLHOUSE_ADMIN_TOKEN": TOKEN},
    )
    with serve_in_thread(Tollhouse(settings=settings)) as url:
        yield url


def _org(c: httpx.Client, org: str) -> tuple[dict[str, str], dict[str, str], str]:
    """An org with a root key in each environment: (sandbox, production) headers and the
    production key's id."""
    assert c.post("/v1/admin/orgs", headers=ADMIN, json={"id": org}).status_code == 201
    made = []
    for env in ("SANDBOX", "PRODUCTION"):
        answer = c.post(
            f"/v1/admin/orgs/{org}/keys", headers=ADMIN, json={"environment": env, "role": "root"}
        )
        assert answer.status_code == 201, answer.text
        made.append(answer.json())
    sandbox, production = ({"Authorization": f"Bearer {m['key']}"} for m in made)
    return sandbox, production, made[1]["id"]


def _pool_status(c: httpx.Client, key: dict[str, str]) -> dict[str, Any]:
    answer = c.get("/v1/rate-limit/status", headers=key)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()[POOL]
    return found


def _override(c: httpx.Client, org: str, body: dict[str, Any]) -> None:
    answer = c.put(f"/v1/admin/orgs/{org}/limits/{POOL}", headers=ADMIN, json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["bucket"] == POOL


def _in_flight(c: httpx.Client, key: dict[str, str], admitted: int) -> httpx.Response:
    """Hold ``admitted`` requests of ``key`` in flight, then send one more: all held must
    get through (the pool admits that many at once), the one more must not. Returns the
    refused answer, once the held ones were let go and their slots given back."""
    gate = secrets.token_hex(6)

    def entered() -> int:
        answer: int = c.get(f"/gate/{gate}/entered", headers=key).json()["entered"]
        return answer

    with ThreadPoolExecutor(admitted) as pool:
        held: list[Future[httpx.Response]] = []
        try:
            for n in range(1, admitted + 1):
                held.append(
                    pool.submit(
                        httpx.get, c.base_url.join(f"/gate/{gate}/wait"), headers=key, timeout=60
                    )
                )
                wait_until(lambda n=n: entered() == n, f"held request {n} to reach the upstream")
            refused = c.get(f"/gate/{gate}/wait", headers=key)
            assert _pool_status(c, key)["active"] == admitted
        finally:
            assert c.post(f"/gate/{gate}/open", headers=key).status_code == 200
        assert [f.result().status_code for f in held] == [200] * admitted
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "CONCURRENCY_LIMITED"
    assert entered() == admitted  # the refused one never reached the upstream
    wait_until(lambda: _pool_status(c, key)["active"] == 0, "the held slots to be given back")
    return refused


def _denied_limit(refused: httpx.Response) -> int:
    """The limit the pool's 429 headers state (they agree with each other)."""
    limit = int(refused.headers["x-ratelimit-limit"])
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert refused.headers["ratelimit-policy"] == f'"{POOL}";q={limit}'
    return limit


def test_a_pool_override_changes_how_many_requests_are_in_flight(server: str) -> None:
    with httpx.Client(base_url=server, timeout=15) as c:
        sandbox, production, production_key = _org(c, "acme")
        assert _pool_status(c, sandbox)["limit"] == POLICY_LIMIT

        # Lower, in SANDBOX alone: one sandbox request in flight at once.
        _override(c, "acme", {"limit": 1, "environment": "SANDBOX"})
        wait_until(lambda: _pool_status(c, sandbox)["limit"] == 1, "the sandbox override")
        refused = _in_flight(c, sandbox, 1)
        assert _denied_limit(refused) == 1
        # The production key of the same org keeps the policy's 2.
        assert _pool_status(c, production)["limit"] == POLICY_LIMIT
        refused = _in_flight(c, production, POLICY_LIMIT)
        assert _denied_limit(refused) == POLICY_LIMIT

        # Higher, for every environment: production gets 3; sandbox keeps its own 1.
        _override(c, "acme", {"limit": 3})
        wait_until(lambda: _pool_status(c, production)["limit"] == 3, "the org's override")
        refused = _in_flight(c, production, 3)
        assert _denied_limit(refused) == 3
        assert _pool_status(c, sandbox)["limit"] == 1

        # A key's override comes first.
        _override(c, "acme", {"limit": 5, "keyId": production_key})
        wait_until(lambda: _pool_status(c, production)["limit"] == 5, "the key's override")

        # The org's own views: its environment's limit, overrides marked.
        pool = _own_pool(c, sandbox)
        assert (pool["limit"], pool["policyLimit"], pool["overridden"]) == (1, POLICY_LIMIT, True)
        assert pool["override"]["limit"] == 1 and pool["keyOverrides"] == []
        assert "byEnvironment" not in pool and "environmentOverrides" not in pool
        pool = _own_pool(c, production)
        assert (pool["limit"], pool["overridden"]) == (3, True)
        assert [(k["keyId"], k["limit"]) for k in pool["keyOverrides"]] == [(production_key, 5)]

        # The provider's view: every override of the pool.
        limits = c.get("/v1/admin/orgs/acme/limits", headers=ADMIN).json()
        [pool] = limits["pools"]
        assert pool["name"] == POOL
        assert (pool["policyLimit"], pool["limit"], pool["overridden"]) == (POLICY_LIMIT, 3, True)
        assert pool["override"]["limit"] == 3
        assert [(e["environment"], e["limit"]) for e in pool["environmentOverrides"]] == [
            ("SANDBOX", 1)
        ]
        assert pool["byEnvironment"] == {
            "SANDBOX": {"limit": 1, "overridden": True},
            "PRODUCTION": {"limit": 3, "overridden": True},
        }
        assert [(k["keyId"], k["limit"]) for k in pool["keyOverrides"]] == [(production_key, 5)]

        # Clearing them all: the policy's limit again, in both environments.
        for params in ({"keyId": production_key}, {"environment": "SANDBOX"}, {}):
            gone = c.delete(f"/v1/admin/orgs/acme/limits/{POOL}", headers=ADMIN, params=params)
            assert gone.status_code == 204, gone.text
        wait_until(
            lambda: (
                _pool_status(c, sandbox)["limit"] == POLICY_LIMIT
                and _pool_status(c, production)["limit"] == POLICY_LIMIT
            ),
            "the overrides to clear",
        )
        refused = _in_flight(c, sandbox, POLICY_LIMIT)
        assert _denied_limit(refused) == POLICY_LIMIT


def _own_pool(c: httpx.Client, key: dict[str, str]) -> dict[str, Any]:
    answer = c.get("/v1/limits", headers=key)
    assert answer.status_code == 200, answer.text
    [pool] = answer.json()["pools"]
    assert pool["name"] == POOL
    found: dict[str, Any] = pool
    return found


def test_the_provider_api_takes_a_pool_name(server: str) -> None:
    with httpx.Client(base_url=server, timeout=15, headers=ADMIN) as c:
        _org(c, "acme")
        for answer in (
            c.put("/v1/admin/orgs/acme/limits/nothing", json={"limit": 3}),
            c.delete("/v1/admin/orgs/acme/limits/nothing"),
        ):
            assert answer.status_code == 404, answer.text
            error = answer.json()["error"]
            assert error["code"] == "NOT_FOUND"
            assert error["message"] == (
                f"The policy has no bucket or pool 'nothing'; its buckets: calls; its pools: "
                f"{POOL}."
            )
        path = f"/v1/admin/orgs/acme/limits/{POOL}"
        for bad in (0, -1, "3", 2**31, None):
            answer = c.put(path, json={"limit": bad})
            assert answer.status_code == 422, answer.text
            assert answer.json()["error"]["code"] == "VALIDATION_FAILED"
        answer = c.delete(path)
        assert answer.status_code == 404
        assert answer.json()["error"]["message"] == f"No override of {POOL!r} for org acme."
        # A pool override is audited as a bucket's is.
        assert c.put(path, json={"limit": 6, "environment": "PRODUCTION"}).status_code == 200
        entries = c.get("/v1/admin/audit", params={"org": "acme", "action": "limit.set"}).json()
        [entry] = entries["data"]
        assert entry["targetId"] == POOL
        assert entry["details"] == {
            "bucket": POOL,
            "key": None,
            "environment": "PRODUCTION",
            "limit": 6,
        }
