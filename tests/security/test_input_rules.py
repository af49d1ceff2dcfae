"""Every identifier a caller sends is checked at the door, by one rule each
(:mod:`tollhouse.identifiers`), against a real ``tollhouse serve`` on SQLite and
PostgreSQL: a value the rule refuses is a 400 naming the field, before anything is
stored or queued, so no database column (PostgreSQL enforces their widths, SQLite does
not) and no job ever meets it. Also: JSON nested deeper than the one reader allows is a
400 on every route, and two different keys in one request are a 400."""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx
import pytest

from tests.conftest import Server

pytestmark = pytest.mark.integration

SCORE = {
    "applicationId": "app-1",
    "jobId": "posting-1",
    "candidate": {"name": "Ada", "resume": "Python and PostgreSQL for six years."},
}
POSTING = {"jobId": "posting-1", "title": "Engineer", "description": "Python, PostgreSQL, APIs."}


@pytest.fixture
def keys(server: Server) -> tuple[str, str]:
    """Two orgs' root keys (each test gets fresh orgs)."""
    a = server.key(f"door-a-{secrets.token_hex(4)}", role="member")["key"]
    b = server.key(f"door-b-{secrets.token_hex(4)}", role="root")["key"]
    return a, b


def _client(server: Server, secret: str, tenant: str | bytes = "tenant-1") -> httpx.Client:
    headers: dict[str, str | bytes] = {"Authorization": f"Bearer {secret}", "X-Tenant-Id": tenant}
    return httpx.Client(base_url=server.url, headers=headers, timeout=15)


def _refused(r: httpx.Response, field: str, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, (r.request.method, r.request.url, r.text)
    error: dict[str, Any] = r.json()["error"]
    assert error["code"] == ("BAD_REQUEST" if status == 400 else "VALIDATION_FAILED"), error
    assert field in error["message"], error
    assert error["requestId"] == r.headers["x-request-id"]
    assert "Retry-After" not in r.headers  # the caller's mistake: nothing to retry
    return error


def test_a_tenant_longer_than_its_rule_is_a_400_and_metering_goes_on(
    server: Server, keys: tuple[str, str]
) -> None:
    """Finding 1: a 300-character X-Tenant-Id once stopped every org's metering on
    PostgreSQL (its column holds 200) and was a 503 on ``POST /v1/score``."""
    a, b = keys
    with _client(server, a, "t" * 300) as long, _client(server, b) as other:
        for r in (
            long.post("/v1/score", json=SCORE),
            long.post("/v1/criteria/generate", json=POSTING),
            long.get("/v1/queue"),
        ):
            _refused(r, "X-Tenant-Id")
        with _client(server, a, "t" * 200) as longest:
            assert longest.post("/v1/criteria/generate", json=POSTING).status_code == 200
            assert longest.post("/v1/score", json=SCORE).status_code == 202
        for _ in range(15):
            assert other.get("/v1/queue").status_code == 200
        counts = other.get("/call-counts/historical/").json()
        assert sum(counts["counts"]) >= 15, counts
        assert long.get("/v1/queue", headers={"X-Tenant-Id": "ok"}).json()["queue"]["queued"] <= 1


@pytest.mark.parametrize("tenant", ["ünï".encode(), b"tenant one", b"t\tx", b"t\xff"])
def test_a_tenant_outside_visible_ascii_is_refused_at_the_door(
    server: Server, keys: tuple[str, str], tenant: bytes
) -> None:
    """Finding 2: a non-ASCII X-Tenant-Id was accepted with a 202 and its job then
    failed with a Python exception's text. The rule admits visible ASCII only (what the
    OpenAPI document always said): refused before any job exists."""
    a, _ = keys
    with _client(server, a, tenant) as c:
        _refused(c.post("/v1/score", json=SCORE), "X-Tenant-Id")
        _refused(c.post("/v1/criteria/generate", json=POSTING), "X-Tenant-Id")
        queue = c.get("/v1/queue", headers={"X-Tenant-Id": "ok"}).json()
        assert queue["data"] == [], queue


def test_identifiers_in_bodies_headers_and_paths_follow_their_rules(
    server: Server, keys: tuple[str, str]
) -> None:
    """Finding 10: the server took what its document forbids (Idempotency-Key's pattern,
    path lengths). Each is now a 400 naming the field; the longest value a rule admits
    is stored on every engine."""
    a, _ = keys
    with _client(server, a) as c:
        for bad in ("has space", "k" * 256, "ключ"):
            r = c.post("/v1/score", json=SCORE, headers={"Idempotency-Key": bad.encode()})
            _refused(r, "Idempotency-Key")
        assert c.post("/v1/criteria/generate", json=POSTING).status_code == 200
        ok = c.post("/v1/score", json=SCORE, headers={"Idempotency-Key": "k" * 255})
        assert ok.status_code == 202, ok.text
        batch = c.post(
            "/v1/score/batch", json={"items": [SCORE] * 100}, headers={"Idempotency-Key": "b" * 255}
        )
        assert batch.status_code == 202, batch.text
        too_long = "a" * 257
        _refused(c.get(f"/v1/score/application/{too_long}"), "applicationId")
        _refused(c.get(f"/v1/score/{too_long}"), "scoringJobId")
        _refused(c.get(f"/v1/criteria/{too_long}"), "jobId")
        _refused(c.get("/v1/webhooks/deliveries", params={"jobId": too_long}), "jobId")
        # The longest ids the rules admit are stored (PostgreSQL enforces the widths).
        longest = {**SCORE, "applicationId": "a" * 256, "jobId": "j" * 256}
        r = c.post("/v1/criteria/generate", json={**POSTING, "jobId": "j" * 256})
        assert r.status_code == 200, r.text
        accepted = c.post("/v1/score", json=longest)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["scoringJobId"]
        done = _finished(c, job_id)
        assert done["status"] == "completed", done
        assert c.get(f"/v1/score/application/{'a' * 256}").json()["scoringJobId"] == job_id


def _finished(c: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job: dict[str, Any] = c.get(f"/v1/score/{job_id}").json()
        if job["status"] in ("completed", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def _deep(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


@pytest.mark.parametrize("levels", [65, 300, 1000, 5000])
def test_deep_json_is_a_400_on_every_route(
    server: Server, keys: tuple[str, str], levels: int
) -> None:
    """Finding 7: JSON nested 254–1 023 levels was a 500 on ``/v1/score`` and
    ``/v1/score/batch``, 1 000 levels on ``/v1/events``."""
    a, _ = keys
    deep = _deep(levels)
    json_type = {"Content-Type": "application/json"}
    with _client(server, a) as c:
        for path, body in (
            ("/v1/score", b'{"applicationId":"a","jobId":"j","candidate":' + deep + b"}"),
            ("/v1/score/batch", b'{"items":[' + deep + b"]}"),
            ("/v1/events", b'[{"id":"e","type":"x","time":0,"data":' + deep + b"}]"),
            ("/v1/criteria/generate", deep),
            ("/v1/criteria/posting-1", deep),
        ):
            r = c.post(path, content=body, headers=json_type)
            error = _refused(r, "nest")
            assert "64" in error["message"], error


def test_json_at_the_depth_limit_is_read(server: Server, keys: tuple[str, str]) -> None:
    a, _ = keys
    with _client(server, a) as c:
        body = b'{"applicationId":"a","jobId":"j","candidate":{"name":"n","resume":"r","x":'
        body += _deep(62) + b"}}"
        r = c.post("/v1/score", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 202, r.text


@pytest.mark.parametrize("order", ["authorization first", "x-api-key first"])
def test_two_different_keys_are_a_400_whatever_the_order(
    server: Server, keys: tuple[str, str], order: str
) -> None:
    """Finding 8: ``Authorization`` and ``X-API-Key`` naming different keys were
    accepted, the winner chosen by header order."""
    a, b = keys
    pairs = [("Authorization", f"Bearer {a}"), ("X-API-Key", b)]
    if order != "authorization first":
        pairs.reverse()
    headers = httpx.Headers([*pairs, ("X-Tenant-Id", "t")])
    r = httpx.get(server.url + "/v1/rate-limit/status", headers=headers)
    error = _refused(r, "X-API-Key")
    assert a not in r.text and b not in r.text
    assert "Authorization" in error["message"]
    # The same key in both is one credential.
    same = httpx.Headers([("Authorization", f"Bearer {a}"), ("X-API-Key", a)])
    assert httpx.get(server.url + "/v1/rate-limit/status", headers=same).status_code == 200
