"""The provider API (``/v1/admin/*``) against a real server, on SQLite and PostgreSQL.

The first test is the issue's "done when": from an empty database to an org with a live
key and an override, over HTTP only. The others pin the admin token rules, the bad-input
answers, suspension and expiry as the gateway enforces them, paging and the audit log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import serve_in_thread
from tests.storage.support import database_url, run_with
from tollhouse.http.app import Tollhouse
from tollhouse.keys.admin_tokens import ENV_TOKEN_ID, AdminTokenStore
from tollhouse.policy.load import load_policy
from tollhouse.settings import load_settings

__all__ = ["database_url"]

pytestmark = pytest.mark.integration

TOKEN = "adm_" + "t" * 40
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
BUCKET = load_policy(None).buckets[0].name


@pytest.fixture
def server(database_url: str) -> Iterator[tuple[str, str]]:
    """A fresh database and the built-in app on it with an admin token; (url, db url)."""
    settings = load_settings(
        environ={"TOLLHOUSE_DATABASE_URL": database_url, "TOLLHOUSE_ADMIN_TOKEN": TOKEN}
    )
    with serve_in_thread(Tollhouse(settings=settings)) as url:
        yield url, database_url


def _until(fn: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if fn():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _status(c: httpx.Client, headers: dict[str, str]) -> httpx.Response:
    """``GET /v1/rate-limit/status`` (its own bucket is 2 a second: 429s are waited out)."""
    for _ in range(50):
        answer = c.get("/v1/rate-limit/status", headers=headers)
        if answer.status_code != 429:
            return answer
        time.sleep(0.3)
    raise AssertionError("the status bucket never admitted the call")


def _error(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == code, error
    assert error["requestId"] == answer.headers["x-request-id"]
    return error


def test_empty_database_to_a_live_key_and_an_override_over_http_only(
    server: tuple[str, str],
) -> None:
    url, _ = server
    with httpx.Client(base_url=url, timeout=15) as c:
        made = c.post(
            "/v1/admin/orgs",
            headers=ADMIN,
            json={
                "id": "acme",
                "name": "Acme Inc.",
                "firstKey": {"environment": "SANDBOX", "role": "root", "name": "backend"},
            },
        )
        assert made.status_code == 201, made.text
        org = made.json()
        assert (org["id"], org["name"], org["suspended"]) == ("acme", "Acme Inc.", False)
        first = org["firstKey"]
        secret = first["key"]
        assert secret.startswith("sk_test_") and first["environment"] == "SANDBOX"
        assert first["role"] == "root" and first["status"] == "active"
        assert first["prefix"] == secret[: len(first["prefix"])]

        key = {"Authorization": f"Bearer {secret}"}
        status = _status(c, key)
        assert status.status_code == 200, status.text
        policy_limit = status.json()["buckets"][BUCKET]["limit"]
        assert policy_limit != 4321

        put = c.put(f"/v1/admin/orgs/acme/limits/{BUCKET}", headers=ADMIN, json={"limit": 4321})
        assert put.status_code == 200, put.text
        assert put.json()["limit"] == 4321 and put.json()["keyId"] is None
        limits = c.get("/v1/admin/orgs/acme/limits", headers=ADMIN).json()
        [bucket] = [b for b in limits["buckets"] if b["name"] == BUCKET]
        assert bucket["overridden"] is True and bucket["limit"] == 4321
        assert bucket["policyLimit"] == policy_limit
        others = [b for b in limits["buckets"] if b["name"] != BUCKET]
        assert all(not b["overridden"] and b["limit"] == b["policyLimit"] for b in others)
        assert all(p["overridden"] is False for p in limits["pools"])

        # The running gateway applies the override (its poll: within a second).
        _until(
            lambda: _status(c, key).json()["buckets"][BUCKET]["limit"] == 4321,
            "the override on the gateway",
        )
        # The key's last use is written with the usage flush.
        _until(
            lambda: (
                c.get("/v1/admin/orgs/acme/keys", headers=ADMIN).json()["data"][0]["lastUsedAt"]
                is not None
            ),
            "lastUsedAt",
        )
        listed = c.get("/v1/admin/orgs/acme/keys", headers=ADMIN).json()
        assert [k["id"] for k in listed["data"]] == [first["id"]]
        assert "key" not in listed["data"][0] and secret not in str(listed)

        audit = c.get("/v1/admin/audit", headers=ADMIN, params={"org": "acme"}).json()["data"]
        # The org and its key share one transaction and one time.
        actions = [e["action"] for e in audit]
        assert actions[0] == "limit.set"
        assert sorted(actions[1:]) == ["key.created", "org.created"]
        assert {e["actor"] for e in audit} == {ENV_TOKEN_ID}
        assert {e["address"] for e in audit} == {"127.0.0.1"}
        assert secret not in str(audit)

        # A live key from the provider API, and with it the org's webhook endpoint
        # through the self-serve API: all over HTTP.
        live = c.post(
            "/v1/admin/orgs/acme/keys",
            headers=ADMIN,
            json={"environment": "PRODUCTION", "role": "root", "name": "live"},
        )
        assert live.status_code == 201, live.text
        live_secret = live.json()["key"]
        assert live_secret.startswith("sk_live_")
        hook = c.post(
            "/v1/webhooks/endpoints",
            headers={"Authorization": f"Bearer {live_secret}"},
            json={"url": "https://example.com/tollhouse-hooks"},
        )
        assert hook.status_code == 201, hook.text
        assert hook.json()["secret"].startswith("whsec_")
        listed_hooks = c.get(
            "/v1/webhooks/endpoints", headers={"Authorization": f"Bearer {live_secret}"}
        ).json()["data"]
        assert [h["environment"] for h in listed_hooks] == ["PRODUCTION"]


def test_admin_tokens_only(server: tuple[str, str]) -> None:
    url, db = server
    with httpx.Client(base_url=url, timeout=15) as c:
        _error(c.get("/v1/admin/orgs"), 401, "ADMIN_TOKEN_REQUIRED")
        wrong = {"Authorization": "Bearer adm_" + "x" * 40}
        _error(c.get("/v1/admin/orgs", headers=wrong), 401, "ADMIN_TOKEN_REQUIRED")
        made = c.post(
            "/v1/admin/orgs",
            headers=ADMIN,
            json={"id": "o1", "firstKey": {"environment": "PRODUCTION", "role": "root"}},
        ).json()
        org_key = made["firstKey"]["key"]
        # An org's key — even a root one — is never an admin token, in either header.
        for headers in ({"Authorization": f"Bearer {org_key}"}, {"X-API-Key": org_key}):
            error = _error(c.get("/v1/admin/orgs", headers=headers), 403, "ADMIN_ONLY")
            assert "admin token" in error["message"]
        # A stored token works, is the actor of what it changes, and stops when revoked.
        stored = run_with(db, lambda e: AdminTokenStore(e).create("support", actor="test"))
        token, secret = stored
        mine = {"Authorization": f"Bearer {secret}"}
        renamed = c.patch("/v1/admin/orgs/o1", headers=mine, json={"name": "Renamed"})
        assert renamed.status_code == 200 and renamed.json()["name"] == "Renamed"
        entries = c.get("/v1/admin/audit", headers=mine, params={"action": "org.updated"})
        assert [e["actor"] for e in entries.json()["data"]] == [token.id]
        run_with(db, lambda e: AdminTokenStore(e).revoke(token.id, actor="test"))
        _error(c.get("/v1/admin/orgs", headers=mine), 401, "ADMIN_TOKEN_REQUIRED")


def test_bad_input(server: tuple[str, str]) -> None:
    url, _ = server
    with httpx.Client(base_url=url, headers=ADMIN, timeout=15) as c:
        assert c.post("/v1/admin/orgs", json={"id": "dup"}).status_code == 201
        _error(c.post("/v1/admin/orgs", json={"id": "dup"}), 409, "CONFLICT")
        _error(c.post("/v1/admin/orgs", json={"id": "-bad"}), 422, "VALIDATION_FAILED")
        _error(c.post("/v1/admin/orgs", json={"id": "x", "plan": 1}), 422, "VALIDATION_FAILED")
        _error(c.post("/v1/admin/orgs", content=b"{"), 400, "BAD_REQUEST")
        # An invalid first key: neither the org nor the key is made.
        bad_key = {"id": "half", "firstKey": {"environment": "SANDBOX", "role": "owner"}}
        error = _error(c.post("/v1/admin/orgs", json=bad_key), 422, "VALIDATION_FAILED")
        assert "firstKey.role" in error["message"]
        _error(c.get("/v1/admin/orgs/half"), 404, "NOT_FOUND")
        past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        _error(
            c.post("/v1/admin/orgs/dup/keys", json={"environment": "SANDBOX", "expiresAt": past}),
            422,
            "VALIDATION_FAILED",
        )
        # Unknown org, key, bucket, override → 404.
        _error(c.get("/v1/admin/orgs/nope"), 404, "NOT_FOUND")
        _error(c.patch("/v1/admin/orgs/nope", json={"suspended": True}), 404, "NOT_FOUND")
        _error(
            c.post("/v1/admin/orgs/nope/keys", json={"environment": "SANDBOX"}), 404, "NOT_FOUND"
        )
        _error(c.get("/v1/admin/orgs/nope/keys"), 404, "NOT_FOUND")
        _error(c.get("/v1/admin/orgs/nope/limits"), 404, "NOT_FOUND")
        _error(c.delete("/v1/admin/keys/key_0000000000000000"), 404, "NOT_FOUND")
        _error(c.post("/v1/admin/keys/nonsense/rotate", json={}), 404, "NOT_FOUND")
        _error(c.put("/v1/admin/orgs/dup/limits/nope", json={"limit": 5}), 404, "NOT_FOUND")
        _error(c.delete(f"/v1/admin/orgs/dup/limits/{BUCKET}"), 404, "NOT_FOUND")
        # Another org's key is not this org's: 404 for its override.
        c.post("/v1/admin/orgs", json={"id": "other"})
        theirs = c.post("/v1/admin/orgs/other/keys", json={"environment": "SANDBOX"}).json()
        _error(
            c.put(f"/v1/admin/orgs/dup/limits/{BUCKET}", json={"limit": 5, "keyId": theirs["id"]}),
            404,
            "NOT_FOUND",
        )
        _error(
            c.put(f"/v1/admin/orgs/dup/limits/{BUCKET}", json={"limit": 0}),
            422,
            "VALIDATION_FAILED",
        )
        # A revoked key cannot be rotated.
        assert c.delete(f"/v1/admin/keys/{theirs['id']}").json()["status"] == "revoked"
        _error(c.post(f"/v1/admin/keys/{theirs['id']}/rotate", json={}), 409, "CONFLICT")
        _error(c.get("/v1/admin/orgs", params={"cursor": "zz"}), 400, "BAD_REQUEST")
        _error(c.get("/v1/admin/orgs", params={"limit": "0"}), 400, "BAD_REQUEST")
        _error(c.get("/v1/admin/audit", params={"action": "x"}), 400, "BAD_REQUEST")
        _error(c.put("/v1/admin/orgs/dup", json={}), 405, "METHOD_NOT_ALLOWED")


def test_suspended_orgs_keys_are_refused_until_reinstated(server: tuple[str, str]) -> None:
    url, _ = server
    with httpx.Client(base_url=url, timeout=15) as c:
        made = c.post(
            "/v1/admin/orgs",
            headers=ADMIN,
            json={"id": "sus", "firstKey": {"environment": "SANDBOX", "role": "root"}},
        ).json()
        key = {"Authorization": f"Bearer {made['firstKey']['key']}"}
        assert _status(c, key).status_code == 200  # now cached
        changed = c.patch("/v1/admin/orgs/sus", headers=ADMIN, json={"suspended": True})
        assert changed.json()["suspended"] is True and changed.json()["suspendedAt"]
        _until(
            lambda: _status(c, key).status_code == 403,
            "the suspension on the gateway",
        )
        error = _error(_status(c, key), 403, "ORG_SUSPENDED")
        assert "sus" in error["message"]
        # A key made while suspended is refused too.
        late = c.post("/v1/admin/orgs/sus/keys", headers=ADMIN, json={"environment": "SANDBOX"})
        late_key = {"Authorization": f"Bearer {late.json()['key']}"}
        _error(_status(c, late_key), 403, "ORG_SUSPENDED")
        c.patch("/v1/admin/orgs/sus", headers=ADMIN, json={"suspended": False})
        _until(
            lambda: _status(c, key).status_code == 200,
            "the reinstatement on the gateway",
        )
        audit = c.get("/v1/admin/audit", headers=ADMIN, params={"action": "org.updated"})
        details = [e["details"] for e in audit.json()["data"]]
        assert details == [{"suspended": False}, {"suspended": True}]


def test_expired_keys_say_so(server: tuple[str, str]) -> None:
    url, _ = server
    with httpx.Client(base_url=url, timeout=15) as c:
        c.post("/v1/admin/orgs", headers=ADMIN, json={"id": "exp"})
        soon = (datetime.now(UTC) + timedelta(seconds=6)).isoformat()
        made = c.post(
            "/v1/admin/orgs/exp/keys",
            headers=ADMIN,
            json={"environment": "SANDBOX", "role": "root", "expiresAt": soon, "meta": {"a": 1}},
        )
        assert made.status_code == 201 and made.json()["meta"] == {"a": 1}
        key = {"Authorization": f"Bearer {made.json()['key']}"}
        assert _status(c, key).status_code == 200
        # Rotated within its life, the key hands its expiry (and meta) to the new one: a
        # rotation never turns a time-limited key into a permanent one.
        turned = c.post(f"/v1/admin/keys/{made.json()['id']}/rotate", headers=ADMIN, json={})
        assert turned.status_code == 201, turned.text
        successor = turned.json()
        assert successor["expiresAt"] == made.json()["expiresAt"]
        assert successor["meta"] == {"a": 1}
        assert successor["replaces"]["expiresAt"] == made.json()["expiresAt"]
        after = {"Authorization": f"Bearer {successor['key']}"}
        _until(
            lambda: _status(c, key).status_code == 401,
            "the key's expiry",
        )
        error = _error(_status(c, key), 401, "KEY_EXPIRED")
        assert "expired" in error["message"]
        # The gateway refuses the new key from the same moment.
        _error(_status(c, after), 401, "KEY_EXPIRED")
        listed = c.get("/v1/admin/orgs/exp/keys", headers=ADMIN).json()["data"]
        assert {k["id"]: k["status"] for k in listed} == {
            made.json()["id"]: "expired",
            successor["id"]: "expired",
        }

        # Rotation: the new key works; with no overlap the old one is revoked (401).
        base = c.post(
            "/v1/admin/orgs/exp/keys", headers=ADMIN, json={"environment": "SANDBOX"}
        ).json()
        rotated = c.post(
            f"/v1/admin/keys/{base['id']}/rotate", headers=ADMIN, json={"overlapSeconds": 0}
        )
        assert rotated.status_code == 201, rotated.text
        body = rotated.json()
        assert body["replaces"]["id"] == base["id"] and body["replaces"]["status"] == "revoked"
        new = {"Authorization": f"Bearer {body['key']}"}
        assert _status(c, new).status_code == 200
        old = {"Authorization": f"Bearer {base['key']}"}
        _error(_status(c, old), 401, "UNAUTHORIZED")


def test_paging(server: tuple[str, str]) -> None:
    url, _ = server
    with httpx.Client(base_url=url, headers=ADMIN, timeout=15) as c:
        ids = [f"page-{i}" for i in range(5)]
        for org in ids:
            assert c.post("/v1/admin/orgs", json={"id": org}).status_code == 201
        seen: list[str] = []
        params: dict[str, Any] = {"limit": 2}
        pages = 0
        while True:
            page = c.get("/v1/admin/orgs", params=params).json()
            pages += 1
            seen += [o["id"] for o in page["data"]]
            if not page["hasMore"]:
                assert page["nextCursor"] is None
                break
            params["cursor"] = page["nextCursor"]
        assert pages == 3 and seen == list(reversed(ids))
        first = c.get("/v1/admin/audit", params={"limit": 3}).json()
        rest = c.get("/v1/admin/audit", params={"cursor": first["nextCursor"]}).json()
        together = [e["targetId"] for e in first["data"] + rest["data"]]
        assert together == list(reversed(ids)) and not rest["hasMore"]
