"""The self-serve API against a real ``tollhouse serve`` on SQLite and PostgreSQL: an org's
root and manager keys manage its own keys and webhook endpoints, within its org and
environment, never granting more than they hold; every change is audited with the key
id and the client address; webhook signatures are checked with the ``standardwebhooks``
package (a receiver's view), through a secret rotation's overlap."""

from __future__ import annotations

import json
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import standardwebhooks
from typer.testing import CliRunner

from tests.conftest import Server, serve_in_thread
from tollhouse.cli.main import app as cli_app
from tollhouse.http.app import Tollhouse
from tollhouse.security.net import TargetRefused
from tollhouse.settings import load_settings

pytestmark = pytest.mark.integration

KEY_ENV = {"SANDBOX": "test", "PRODUCTION": "live"}


@dataclass
class Receiver:
    """A webhook receiver (ASGI): records every request, answers ``status`` with a body
    naming the path."""

    status: int = 200
    got: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        with self.lock:
            self.got.append((scope["path"], headers, body))
        answer = f"got {scope['path']}".encode()
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": answer})

    def at(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(h, b) for p, h, b in self.got if p == path]


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, str]]:
    r = Receiver()
    with serve_in_thread(r) as url:  # type: ignore[arg-type]
        yield r, url


def _cli(server: Server, *args: str) -> str:
    db = (server.env or {}).get("TOLLHOUSE_DATABASE_URL") or (
        f"sqlite:///{server.cwd}/.tollhouse/tollhouse.db"
    )
    result = CliRunner().invoke(cli_app, [*args, "--database-url", db], env=server.env)
    assert result.exit_code == 0, result.output
    return result.stdout


def _key(server: Server, org: str, role: str = "root", environment: str = "SANDBOX") -> str:
    args = ("--org", org, "--env", KEY_ENV[environment], "--role", role, "--json")
    made: dict[str, str] = json.loads(_cli(server, "keys", "create", *args))
    return made["key"]


def _as(server: Server, secret: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {secret}"}, timeout=20
    )


def _until_refused(client: httpx.Client) -> httpx.Response:
    # The server evicts a revoked key at once in its own process; ask until it answers
    # (a 200 would mean the key still works: the loop ends on the first refusal only).
    for _ in range(50):
        answer = client.get("/v1/rate-limit/status")
        if answer.status_code == 401:
            return answer
        threading.Event().wait(0.1)
    raise AssertionError(f"the key was still accepted: {answer.status_code}")


def _audit(server: Server, org: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(_cli(server, "audit", "--org", org, "--json"))
    return found


@pytest.fixture
def org() -> str:
    return f"self-{secrets.token_hex(4)}"


def test_keys_lifecycle_and_audit(server: Server, org: str) -> None:
    root = _key(server, org)
    with _as(server, root) as c:
        made = c.post(
            "/v1/keys",
            json={"name": "ci deploy", "role": "manager", "expiresAt": "2099-06-01T00:00:00Z"},
        )
        assert made.status_code == 201, made.text
        key = made.json()
        assert key["expiresAt"] == "2099-06-01T00:00:00.000Z"
        assert key["secret"].startswith("sk_test_") and key["environment"] == "SANDBOX"
        assert key["role"] == "manager" and key["name"] == "ci deploy"
        assert key["status"] == "active" and key["lastUsedAt"] is None
        with _as(server, key["secret"]) as new:
            assert new.get("/v1/rate-limit/status").status_code == 200
            listed = c.get("/v1/keys")
            assert listed.status_code == 200
            assert key["secret"] not in listed.text and "secret" not in listed.text
            rows = {k["id"]: k for k in listed.json()["data"]}
            assert rows[key["id"]]["name"] == "ci deploy"
            # The call above is flushed before the list: the key shows when it was used.
            assert rows[key["id"]]["lastUsedAt"] is not None

            rotated = c.post(f"/v1/keys/{key['id']}/rotate", json={"overlapSeconds": 0})
            assert rotated.status_code == 201, rotated.text
            fresh = rotated.json()
            assert fresh["replaces"]["id"] == key["id"] and fresh["replaces"]["status"] == "revoked"
            assert fresh["role"] == "manager" and fresh["name"] == "ci deploy"
            # A time-limited key stays time-limited: the new one ends when the old would have.
            assert fresh["expiresAt"] == key["expiresAt"]
            rows = {k["id"]: k for k in c.get("/v1/keys").json()["data"]}
            assert rows[fresh["id"]]["expiresAt"] == key["expiresAt"]
            assert _until_refused(new).json()["error"]["code"] == "UNAUTHORIZED"
        with _as(server, fresh["secret"]) as newest:
            assert newest.get("/v1/rate-limit/status").status_code == 200
            revoked = c.delete(f"/v1/keys/{fresh['id']}")
            assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
            _until_refused(newest)
        assert c.delete(f"/v1/keys/{fresh['id']}").status_code == 200  # already revoked
        # A revoked key cannot be rotated: 409 CONFLICT, as in the provider API.
        again = c.post(f"/v1/keys/{fresh['id']}/rotate")
        assert again.status_code == 409, again.text
        assert again.json()["error"]["code"] == "CONFLICT"
        assert "revoked or expired" in again.json()["error"]["message"]

    entries = [e for e in _audit(server, org) if e["actor"].startswith("key_")]
    assert [e["action"] for e in entries] == [
        "key.created",
        "key.rotated",
        "key.revoked",
    ]
    assert all(e["address"] == "127.0.0.1" for e in entries)
    assert not any(k in json.dumps(entries) for k in (key["secret"], fresh["secret"]))


@pytest.mark.parametrize("role", ["member", "backend"])
def test_member_and_backend_keys_are_refused(server: Server, org: str, role: str) -> None:
    root = _key(server, org)
    with _as(server, root) as c:
        endpoint_id = "we_0"
        key_id = c.get("/v1/keys").json()["data"][0]["id"]
    with _as(server, _key(server, org, role)) as c:
        calls = [
            c.get("/v1/keys"),
            c.post("/v1/keys", json={"role": "member"}),
            c.delete(f"/v1/keys/{key_id}"),
            c.post(f"/v1/keys/{key_id}/rotate"),
            c.get("/v1/webhooks/endpoints"),
            c.post("/v1/webhooks/endpoints", json={"url": "https://example.com/h"}),
            c.patch(f"/v1/webhooks/endpoints/{endpoint_id}", json={"enabled": False}),
            c.delete(f"/v1/webhooks/endpoints/{endpoint_id}"),
            c.post(f"/v1/webhooks/endpoints/{endpoint_id}/rotate-secret"),
            c.post(f"/v1/webhooks/endpoints/{endpoint_id}/test"),
            c.post("/v1/webhooks/deliveries/dlv_0/replay"),
        ]
    for answer in calls:
        assert answer.status_code == 403, (answer.request.url, answer.text)
        assert f"role {role!r} may not manage" in answer.json()["error"]["message"]


def test_no_key_grants_more_than_it_holds(server: Server, org: str) -> None:
    root = _key(server, org)
    with _as(server, _key(server, org, "manager")) as c:
        above = c.post("/v1/keys", json={"role": "root"})
        assert above.status_code == 403
        assert "A manager key cannot create a root key" in above.json()["error"]["message"]
        live = c.post("/v1/keys", json={"role": "member", "environment": "PRODUCTION"})
        assert live.status_code == 403
        assert "A SANDBOX key cannot create a PRODUCTION key" in live.json()["error"]["message"]
        assert c.post("/v1/keys", json={"role": "manager"}).status_code == 201
        # Nor take over a root key by rotating it (the new secret would be root's).
        with _as(server, root) as r:
            root_id = next(k["id"] for k in r.get("/v1/keys").json()["data"] if k["role"] == "root")
        for answer in (c.post(f"/v1/keys/{root_id}/rotate"), c.delete(f"/v1/keys/{root_id}")):
            assert answer.status_code == 403
            assert "above its own" in answer.json()["error"]["message"]
    with _as(server, _key(server, org, "root", "PRODUCTION")) as c:
        # A production key may make a sandbox key (listed with the sandbox keys).
        sandbox = c.post("/v1/keys", json={"role": "member", "environment": "SANDBOX"})
        assert sandbox.status_code == 201 and sandbox.json()["secret"].startswith("sk_test_")
        assert sandbox.json()["id"] not in c.get("/v1/keys").text
    with _as(server, root) as c:
        assert sandbox.json()["id"] in c.get("/v1/keys").text


def test_bad_input(server: Server, org: str) -> None:
    with _as(server, _key(server, org)) as c:
        for body in (
            {"role": "admin"},
            {"environment": "STAGING"},
            {"name": 7},
            {"expiresAt": "2001-01-01T00:00:00Z"},
            {"expiresAt": "2099-01-01T00:00:00"},
            {"colour": "red"},
        ):
            answer = c.post("/v1/keys", json=body)
            assert answer.status_code == 422, (body, answer.text)
            assert answer.json()["error"]["code"] == "VALIDATION_FAILED"
        assert c.post("/v1/keys", content=b"[1]").status_code == 422
        assert c.post("/v1/keys", content=b"{").status_code == 400
        assert c.post(f"/v1/keys/key_{'0' * 16}/rotate").status_code == 404
        assert c.delete("/v1/keys/" + "x" * 300).status_code == 404
        assert c.post("/v1/keys/k/rotate", json={"overlapSeconds": -1}).status_code == 422
        expiring = c.post("/v1/keys", json={"expiresAt": "2099-01-01T00:00:00Z"})
        assert expiring.status_code == 201
        assert expiring.json()["expiresAt"] == "2099-01-01T00:00:00.000Z"
        # No URL is a missing field (422); a URL that is not one the guard takes is a 400
        # with the guard's message.
        missing = c.post("/v1/webhooks/endpoints", json={})
        assert missing.status_code == 422, missing.text
        assert missing.json()["error"]["code"] == "VALIDATION_FAILED"
        assert '"url" is required' in missing.json()["error"]["message"]
        for url, says in (
            (
                "ftp://example.com",
                "'ftp://example.com' must be an absolute http:// or https:// URL",
            ),
            ("https://u:p@example.com/", "the URL must not carry credentials"),
        ):
            answer = c.post("/v1/webhooks/endpoints", json={"url": url})
            assert answer.status_code == 400, (url, answer.text)
            error = answer.json()["error"]
            assert (error["code"], error["message"]) == ("BAD_REQUEST", says)
        assert c.get("/v1/webhooks/endpoints").json()["data"] == []
        typed = c.post(
            "/v1/webhooks/endpoints", json={"url": "https://example.com/h", "eventTypes": []}
        )
        assert typed.status_code == 422 and "eventTypes" in typed.json()["error"]["message"]
        assert c.patch("/v1/webhooks/endpoints/we_0", json={"enabled": "no"}).status_code == 422
        assert c.patch("/v1/webhooks/endpoints/we_0", json={"enabled": True}).status_code == 404


def test_a_private_target_is_refused_with_the_guards_message(server: Server, org: str) -> None:
    """A server that keeps the SSRF guard (no ``allow_private_targets``), on the same
    database: a loopback or a cloud metadata address is a 400 with the guard's message,
    and nothing is added."""
    database = (server.env or {}).get("TOLLHOUSE_DATABASE_URL") or (
        f"sqlite:///{server.cwd}/.tollhouse/tollhouse.db"
    )
    # No embedded workers: this second server must not attempt other tests' deliveries.
    settings = load_settings(
        environ={"TOLLHOUSE_DATABASE_URL": database, "TOLLHOUSE_EMBEDDED_WORKERS": "0"}
    )
    assert settings.allow_private_targets is False
    root = _key(server, org)
    with (
        serve_in_thread(Tollhouse(settings=settings)) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {root}"}, timeout=20) as c,
    ):
        for target, host, reason in (
            ("http://127.0.0.1:9/hook", "127.0.0.1", "loopback"),
            ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", "link-local"),
        ):
            answer = c.post("/v1/webhooks/endpoints", json={"url": target})
            assert answer.status_code == 400, (target, answer.text)
            error = answer.json()["error"]
            assert error["code"] == "BAD_REQUEST"
            assert error["message"] == str(TargetRefused(host, host, reason))
        assert c.get("/v1/webhooks/endpoints").json()["data"] == []
    assert not [e for e in _audit(server, org) if e["action"] == "webhook.added"]


def _verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    try:
        standardwebhooks.Webhook(secret).verify(body, headers)
    except standardwebhooks.WebhookVerificationError:
        return False
    return True


def test_webhook_endpoints_test_rotate_and_replay(
    server: Server, org: str, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    path = f"/hook-{org}"
    with _as(server, _key(server, org)) as c:
        made = c.post("/v1/webhooks/endpoints", json={"url": url + path})
        assert made.status_code == 201, made.text
        endpoint = made.json()
        first = endpoint["secret"]
        assert first.startswith("whsec_") and endpoint["enabled"] and endpoint["eventTypes"] is None
        listed = c.get("/v1/webhooks/endpoints")
        assert [e["id"] for e in listed.json()["data"]] == [endpoint["id"]]
        assert "whsec_" not in listed.text
        eid = endpoint["id"]

        ping = c.post(f"/v1/webhooks/endpoints/{eid}/test")
        assert ping.status_code == 200, ping.text
        delivery = ping.json()
        assert delivery["eventType"] == "ping" and delivery["status"] == "delivered"
        [attempt] = delivery["attempts"]
        assert attempt["statusCode"] == 200 and attempt["responseBody"] == f"got {path}"
        [(headers, body)] = rec.at(path)
        assert json.loads(body)["type"] == "ping"
        assert _verify(first, headers, body)

        rotated = c.post(f"/v1/webhooks/endpoints/{eid}/rotate-secret")
        assert rotated.status_code == 200
        second = rotated.json()["secret"]
        assert second != first and rotated.json()["previousSecretExpiresAt"] is not None
        assert c.post(f"/v1/webhooks/endpoints/{eid}/test").status_code == 200
        headers, body = rec.at(path)[-1]
        # During the overlap both secrets verify (two signatures in webhook-signature).
        assert len(headers["webhook-signature"].split()) == 2
        assert _verify(first, headers, body) and _verify(second, headers, body)

        third = c.post(
            f"/v1/webhooks/endpoints/{eid}/rotate-secret", json={"overlapSeconds": 0}
        ).json()["secret"]
        assert c.post(f"/v1/webhooks/endpoints/{eid}/test").status_code == 200
        headers, body = rec.at(path)[-1]
        assert _verify(third, headers, body)
        assert not _verify(second, headers, body) and not _verify(first, headers, body)

        replayed = c.post(f"/v1/webhooks/deliveries/{delivery['id']}/replay")
        assert replayed.status_code == 200, replayed.text
        again = replayed.json()
        assert again["id"] != delivery["id"] and again["messageId"] == delivery["messageId"]
        headers, body = rec.at(path)[-1]
        assert headers["webhook-id"] == delivery["messageId"] and _verify(third, headers, body)
        ids = [d["id"] for d in c.get("/v1/webhooks/deliveries").json()["data"]]
        assert delivery["id"] in ids and again["id"] in ids

        off = c.patch(
            f"/v1/webhooks/endpoints/{eid}",
            json={"enabled": False, "eventTypes": ["score.failed"]},
        )
        assert off.status_code == 200
        assert off.json()["enabled"] is False and off.json()["eventTypes"] == ["score.failed"]
        refused = c.post(f"/v1/webhooks/endpoints/{eid}/test")
        assert refused.status_code == 409 and "disabled" in refused.json()["error"]["message"]
        on = c.patch(f"/v1/webhooks/endpoints/{eid}", json={"enabled": True, "eventTypes": None})
        assert on.json()["enabled"] is True and on.json()["eventTypes"] is None
        assert c.delete(f"/v1/webhooks/endpoints/{eid}").status_code == 200
        assert c.get("/v1/webhooks/endpoints").json()["data"] == []
        assert c.delete(f"/v1/webhooks/endpoints/{eid}").status_code == 404

    actions = [e["action"] for e in _audit(server, org) if e["actor"].startswith("key_")]
    assert actions == [
        "webhook.added",
        "webhook.tested",
        "webhook.secret_rotated",
        "webhook.tested",
        "webhook.secret_rotated",
        "webhook.tested",
        "webhook.replayed",
        "webhook.updated",
        "webhook.updated",
        "webhook.removed",
    ]
    dump = json.dumps(_audit(server, org))
    assert not any(s in dump for s in (first, second, third))


# Routes answered by a key whose path parameter is not one of an org's ids.
NOT_AN_ID = {"forward-auth"}  # {original:path}: the upstream path being authorized
# The body each change is sent with (None: none), by "METHOD template".
CHANGE_BODIES: dict[str, dict[str, Any]] = {
    "PATCH /v1/webhooks/endpoints/{endpointId}": {"enabled": False},
}


def _changes_by_id(ids: dict[str, str]) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every change (not a read) of every route an org's key may call whose path names
    an id, filled with ``ids`` — taken from the app's own route table, so a new one fails
    here until its id has a case."""
    app = Tollhouse(settings=load_settings(environ={}))
    found = []
    for endpoint in app.routes.endpoints:
        if endpoint.keyless or endpoint.group in ("admin", *NOT_AN_ID):
            continue
        names = re.findall(r"{(\w+)(?::\w+)?}", endpoint.path)
        writes = [m for m in endpoint.methods if m not in ("GET", "HEAD", "OPTIONS")]
        if not names or not writes:
            continue
        missing = [n for n in names if n not in ids]
        assert not missing, f"{endpoint.path}: no case for {missing} (add one of A's ids)"
        path = endpoint.path
        for name in names:
            path = path.replace("{" + name + "}", ids[name])
        found += [(m, path, CHANGE_BODIES.get(f"{m} {endpoint.path}")) for m in writes]
    # The seven known today (a table that lost them would make this test vacuous).
    assert len(found) >= 7, found
    return found


@pytest.mark.parametrize("viewer", ["other org", "other environment"])
def test_another_orgs_ids_are_404_to_every_change(
    server: Server, org: str, receiver: tuple[Receiver, str], viewer: str
) -> None:
    _, url = receiver
    with _as(server, _key(server, org)) as a:
        key_id = a.post("/v1/keys", json={"name": "victim"}).json()["id"]
        eid = a.post("/v1/webhooks/endpoints", json={"url": url + f"/iso-{org}"}).json()["id"]
        delivery_id = a.post(f"/v1/webhooks/endpoints/{eid}/test").json()["id"]
        other = (
            _key(server, org + "-b")
            if viewer == "other org"
            else _key(server, org, "root", "PRODUCTION")
        )
        changes = _changes_by_id({"keyId": key_id, "endpointId": eid, "deliveryId": delivery_id})
        with _as(server, other) as b:
            for method, path, body in changes:
                answer = b.request(method, path, json=body)
                assert answer.status_code == 404, (method, path, answer.text)
                assert answer.json()["error"]["code"] == "NOT_FOUND"
            for path in ("/v1/keys", "/v1/webhooks/endpoints"):
                seen = b.get(path).text
                assert key_id not in seen and eid not in seen
        # Nothing of A's changed.
        keys = {k["id"]: k for k in a.get("/v1/keys").json()["data"]}
        assert keys[key_id]["status"] == "active"
        [endpoint] = a.get("/v1/webhooks/endpoints").json()["data"]
        assert endpoint["enabled"] and endpoint["previousSecretExpiresAt"] is None


def test_limits_are_read_only_and_scoped(server: Server, org: str) -> None:
    """``GET /v1/limits``: the org's override marked, the key overrides of the caller's
    environment only; another org sees none of them; member keys are refused; nothing
    changes an override through it."""
    from tollhouse.policy.load import load_policy

    bucket = load_policy(None).buckets[0].name
    root = _key(server, org)
    live_root = _key(server, org, environment="PRODUCTION")
    member = _key(server, org, role="member")
    other = _key(server, f"{org}-other")
    with _as(server, root) as c:
        [mine] = [k for k in c.get("/v1/keys").json()["data"] if k["role"] == "root"]
    with _as(server, live_root) as c:
        [live] = [k for k in c.get("/v1/keys").json()["data"] if k["role"] == "root"]
    _cli(server, "limits", "set", "--org", org, "--bucket", bucket, "--limit", "6151")
    for key_id, limit in ((mine["id"], "6143"), (live["id"], "6133")):
        args = ("--bucket", bucket, "--limit", limit, "--key", key_id)
        _cli(server, "limits", "set", "--org", org, *args)

    with _as(server, root) as c:
        answer = c.get("/v1/limits")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["org"], body["environment"]) == (org, "SANDBOX")
        [row] = [b for b in body["buckets"] if b["name"] == bucket]
        assert row["overridden"] is True and row["limit"] == 6151
        assert row["policyLimit"] != 6151
        # Only this environment's key override: the PRODUCTION key's is not shown.
        assert [(k["keyId"], k["limit"]) for k in row["keyOverrides"]] == [(mine["id"], 6143)]
        others = [b for b in body["buckets"] if b["name"] != bucket]
        assert all(not b["overridden"] for b in others)
        assert c.put("/v1/limits", json={}).status_code == 405  # read-only
    with _as(server, live_root) as c:
        [row] = [b for b in c.get("/v1/limits").json()["buckets"] if b["name"] == bucket]
        assert [k["keyId"] for k in row["keyOverrides"]] == [live["id"]]
    with _as(server, other) as c:
        seen = c.get("/v1/limits")
        assert seen.status_code == 200 and seen.json()["org"] == f"{org}-other"
        assert not any(n in seen.text for n in ("6151", "6143", "6133", mine["id"], org + '"'))
    with _as(server, member) as c:
        refused = c.get("/v1/limits")
        assert refused.status_code == 403 and "limits" in refused.json()["error"]["message"]
