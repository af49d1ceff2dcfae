"""The provider API's webhook routes (``/v1/admin/orgs/{orgId}/webhooks/…``) against a real
server, on SQLite and PostgreSQL: an org's endpoints and deliveries per environment, made,
tested, rotated, replayed, disabled and removed with an admin token; every change audited
with the token's id and the caller's address; another org's or environment's ids are 404
and leave the endpoint as it was; bad input gets the envelope with the right status."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import standardwebhooks

from tests.conftest import serve_in_thread
from tests.security.test_self_serve import Receiver
from tests.storage.support import database_url
from tollhouse.http.app import Tollhouse
from tollhouse.settings import load_settings

__all__ = ["database_url"]

pytestmark = pytest.mark.integration

TOKEN = "adm_" + "w" * 40
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
SANDBOX = {"environment": "SANDBOX"}
PRODUCTION = {"environment": "PRODUCTION"}


@contextmanager
def _serve(database_url: str, *, private: bool) -> Iterator[str]:
    environ = {"TOLLHOUSE_DATABASE_URL": database_url, "TOLLHOUSE_ADMIN_TOKEN": TOKEN}
    if private:  # the receiver listens on loopback
        environ["TOLLHOUSE_ALLOW_PRIVATE_TARGETS"] = "1"
    with serve_in_thread(Tollhouse(settings=load_settings(environ=environ))) as url:
        yield url


@pytest.fixture
def server(database_url: str) -> Iterator[str]:
    with _serve(database_url, private=True) as url:
        yield url


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, str]]:
    r = Receiver()
    with serve_in_thread(r) as url:  # type: ignore[arg-type]
        yield r, url


def _verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    try:
        standardwebhooks.Webhook(secret).verify(body, headers)
    except standardwebhooks.WebhookVerificationError:
        return False
    return True


def _error(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == code, error
    return error


def _org(c: httpx.Client, org: str) -> None:
    assert c.post("/v1/admin/orgs", json={"id": org}).status_code == 201


def test_endpoint_lifecycle_over_the_provider_api(
    server: str, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    path = f"/hook-{secrets.token_hex(4)}"  # the receiver serves every engine's run
    hooks = "/v1/admin/orgs/acme/webhooks"
    with httpx.Client(base_url=server, headers=ADMIN, timeout=20) as c:
        _org(c, "acme")
        made = c.post(
            hooks + "/endpoints",
            params=SANDBOX,
            json={"url": url + path, "eventTypes": ["score.completed"]},
        )
        assert made.status_code == 201, made.text
        endpoint = made.json()
        first = endpoint["secret"]
        assert first.startswith("whsec_")
        assert (endpoint["org"], endpoint["environment"]) == ("acme", "SANDBOX")
        assert endpoint["enabled"] and endpoint["eventTypes"] == ["score.completed"]
        eid = endpoint["id"]
        one = f"{hooks}/endpoints/{eid}"

        listed = c.get(hooks + "/endpoints", params=SANDBOX)
        assert [e["id"] for e in listed.json()["data"]] == [eid]
        assert "whsec_" not in listed.text
        # The other environment's endpoints are apart.
        assert c.get(hooks + "/endpoints", params=PRODUCTION).json()["data"] == []

        # A test ping goes through the event-type filter, signed with the secret.
        ping = c.post(one + "/test", params=SANDBOX)
        assert ping.status_code == 200, ping.text
        delivery = ping.json()
        assert delivery["eventType"] == "ping" and delivery["status"] == "delivered"
        [attempt] = delivery["attempts"]
        assert attempt["statusCode"] == 200 and attempt["responseBody"] == f"got {path}"
        [(headers, body)] = rec.at(path)
        assert json.loads(body)["type"] == "ping" and _verify(first, headers, body)

        rotated = c.post(one + "/rotate-secret", params=SANDBOX, json={"overlapSeconds": 600})
        assert rotated.status_code == 200, rotated.text
        second = rotated.json()["secret"]
        assert second != first and rotated.json()["previousSecretExpiresAt"] is not None
        assert c.post(one + "/test", params=SANDBOX).status_code == 200
        headers, body = rec.at(path)[-1]
        assert _verify(first, headers, body) and _verify(second, headers, body)

        replayed = c.post(f"{hooks}/deliveries/{delivery['id']}/replay", params=SANDBOX)
        assert replayed.status_code == 200, replayed.text
        again = replayed.json()
        assert again["id"] != delivery["id"] and again["messageId"] == delivery["messageId"]
        headers, body = rec.at(path)[-1]
        assert headers["webhook-id"] == delivery["messageId"]
        listed_deliveries = c.get(hooks + "/deliveries", params=SANDBOX).json()["data"]
        assert {delivery["id"], again["id"]} <= {d["id"] for d in listed_deliveries}
        assert c.get(hooks + "/deliveries", params=PRODUCTION).json()["data"] == []

        off = c.patch(one, params=SANDBOX, json={"enabled": False, "eventTypes": None})
        assert off.status_code == 200, off.text
        assert off.json()["enabled"] is False and off.json()["eventTypes"] is None
        assert off.json()["disabledAt"] is not None
        refused = _error(c.post(one + "/test", params=SANDBOX), 400, "BAD_REQUEST")
        assert "disabled" in refused["message"]
        on = c.patch(one, params=SANDBOX, json={"enabled": True})
        assert on.json()["enabled"] is True and on.json()["disabledAt"] is None
        removed = c.delete(one, params=SANDBOX)
        assert removed.status_code == 200 and removed.json()["id"] == eid
        assert c.get(hooks + "/endpoints", params=SANDBOX).json()["data"] == []
        _error(c.delete(one, params=SANDBOX), 404, "NOT_FOUND")

        audit = c.get("/v1/admin/audit", params={"org": "acme", "limit": 100}).json()["data"]
    webhook_entries = [e for e in reversed(audit) if e["action"].startswith("webhook.")]
    assert [e["action"] for e in webhook_entries] == [
        "webhook.added",
        "webhook.tested",
        "webhook.secret_rotated",
        "webhook.tested",
        "webhook.replayed",
        "webhook.updated",
        "webhook.updated",
        "webhook.removed",
    ]
    assert {e["actor"] for e in webhook_entries} == {"adt_env"}
    assert {e["address"] for e in webhook_entries} == {"127.0.0.1"}
    assert not any(s in json.dumps(audit) for s in (first, second))


def test_another_orgs_or_environments_ids_are_404(
    server: str, receiver: tuple[Receiver, str]
) -> None:
    """A's endpoint and delivery (SANDBOX) through B's path, or through A's PRODUCTION:
    404 on every route, exactly like an unknown id, and A's endpoint is unchanged."""
    _, url = receiver
    with httpx.Client(base_url=server, headers=ADMIN, timeout=20) as c:
        _org(c, "org-a")
        _org(c, "org-b")
        a_hooks = "/v1/admin/orgs/org-a/webhooks"
        made = c.post(a_hooks + "/endpoints", params=SANDBOX, json={"url": url + "/hook-a"})
        eid = made.json()["id"]
        delivery = c.post(f"{a_hooks}/endpoints/{eid}/test", params=SANDBOX).json()
        for org, environment in (("org-b", SANDBOX), ("org-a", PRODUCTION)):
            hooks = f"/v1/admin/orgs/{org}/webhooks"
            one = f"{hooks}/endpoints/{eid}"
            for method, target, body in (
                ("PATCH", one, {"enabled": False}),
                ("DELETE", one, None),
                ("POST", one + "/rotate-secret", {"overlapSeconds": 0}),
                ("POST", one + "/test", None),
                ("POST", f"{hooks}/deliveries/{delivery['id']}/replay", None),
            ):
                answer = c.request(method, target, params=environment, json=body)
                _error(answer, 404, "NOT_FOUND")
            listed = c.get(hooks + "/endpoints", params=environment)
            assert listed.status_code == 200 and eid not in listed.text
            shown = c.get(hooks + "/deliveries", params=environment)
            assert shown.status_code == 200 and delivery["id"] not in shown.text
        [still] = c.get(a_hooks + "/endpoints", params=SANDBOX).json()["data"]
        assert still["enabled"] is True and still["previousSecretExpiresAt"] is None


def test_bad_input(server: str, receiver: tuple[Receiver, str]) -> None:
    _, url = receiver
    hooks = "/v1/admin/orgs/acme/webhooks"
    with httpx.Client(base_url=server, timeout=20) as c:
        _error(c.get(hooks + "/endpoints", params=SANDBOX), 401, "ADMIN_TOKEN_REQUIRED")
        _error(
            c.get(
                hooks + "/endpoints",
                params=SANDBOX,
                headers={"Authorization": "Bearer sk_test_" + "x" * 32},
            ),
            403,
            "ADMIN_ONLY",
        )
        c.headers.update(ADMIN)
        _error(c.get(hooks + "/endpoints", params=SANDBOX), 404, "NOT_FOUND")  # no org yet
        _org(c, "acme")
        message = _error(c.get(hooks + "/endpoints"), 400, "BAD_REQUEST")["message"]
        assert "environment" in message
        _error(c.get(hooks + "/endpoints", params={"environment": "live"}), 400, "BAD_REQUEST")
        add = hooks + "/endpoints"
        _error(c.post(add, params=SANDBOX, json={}), 422, "VALIDATION_FAILED")
        _error(c.post(add, params=SANDBOX, json={"url": url, "x": 1}), 422, "VALIDATION_FAILED")
        _error(
            c.post(add, params=SANDBOX, json={"url": url, "eventTypes": "all"}),
            422,
            "VALIDATION_FAILED",
        )
        _error(c.post(add, params=SANDBOX, json={"url": "ftp://example.com/"}), 400, "BAD_REQUEST")
        _error(c.post(add, params=SANDBOX, content=b"{"), 400, "BAD_REQUEST")
        eid = c.post(add, params=SANDBOX, json={"url": url + "/hook"}).json()["id"]
        one = f"{hooks}/endpoints/{eid}"
        _error(c.patch(one, params=SANDBOX, json={"enabled": "no"}), 422, "VALIDATION_FAILED")
        _error(
            c.post(one + "/rotate-secret", params=SANDBOX, json={"overlapSeconds": -1}),
            422,
            "VALIDATION_FAILED",
        )
        _error(c.post(f"{hooks}/endpoints/{'x' * 300}/test", params=SANDBOX), 404, "NOT_FOUND")
        _error(
            c.get(hooks + "/deliveries", params={**SANDBOX, "jobId": "x" * 300}),
            400,
            "BAD_REQUEST",
        )
        _error(c.put(one, params=SANDBOX, json={}), 405, "METHOD_NOT_ALLOWED")
        # Nothing half-made: the one good endpoint is all there is.
        assert [e["id"] for e in c.get(add, params=SANDBOX).json()["data"]] == [eid]


def test_a_private_target_is_refused_with_the_guards_message(database_url: str) -> None:
    with (
        _serve(database_url, private=False) as url,
        httpx.Client(base_url=url, headers=ADMIN, timeout=20) as c,
    ):
        _org(c, "acme")
        answer = c.post(
            "/v1/admin/orgs/acme/webhooks/endpoints",
            params=SANDBOX,
            json={"url": "http://127.0.0.1:9/hook"},
        )
        message = _error(answer, 400, "BAD_REQUEST")["message"]
        assert "private" in message or "loopback" in message, message
        listed = c.get("/v1/admin/orgs/acme/webhooks/endpoints", params=SANDBOX)
        assert listed.json()["data"] == []
