"""Limit overrides from the database and shadow buckets, on a running server."""

from __future__ import annotations

import json
import time
import uuid

import httpx

from tests.conftest import Server

GEN = {"jobId": "job_s", "title": "Analyst", "description": "SQL and Excel."}


def bearer(key: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {key['key']}", "X-Tenant-Id": "acme"}


def status(server: Server, key: dict[str, str]) -> dict[str, object]:
    resp = httpx.get(server.url + "/v1/rate-limit/status", headers=bearer(key))
    assert resp.status_code == 200
    body: dict[str, object] = resp.json()
    return body


def wait_for(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    # Overrides are polled twice a second; wait with a deadline, never assert on time.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_shadow_bucket_counts_but_denies_nothing(tight_server: Server) -> None:
    key = tight_server.key("shadow-" + uuid.uuid4().hex[:8])
    url = tight_server.url + "/v1/criteria/questions"
    codes = [httpx.post(url, json=GEN, headers=bearer(key)).status_code for _ in range(3)]
    assert codes == [200, 200, 200]
    body = status(tight_server, key)
    trial = body["buckets"]["trial"]  # type: ignore[index]
    assert trial["shadow"] is True
    assert trial["shadowDenied"] == 2
    cats = {c["category"]: c for c in body["categories"]}  # type: ignore[attr-defined]
    assert cats["trial"]["shadowDenied"] == 2
    resp = httpx.post(url, json=GEN, headers=bearer(key))
    assert "trial" not in resp.headers.get("ratelimit-policy", "")


def test_org_and_key_overrides_apply_within_a_second(tight_server: Server) -> None:
    org = "ovr-" + uuid.uuid4().hex[:8]
    a, b = tight_server.key(org), tight_server.key(org)
    url = tight_server.url + "/v1/criteria/job_1/crit_1"

    def limit_for(key: dict[str, str]) -> str:
        return httpx.get(url, headers=bearer(key)).headers["x-ratelimit-limit"]

    assert limit_for(a) == "100"
    tight_server.cli("limits", "set", "--org", org, "--bucket", "overridable", "--limit", "7")
    wait_for(lambda: limit_for(a) == "7", "the org override")
    assert limit_for(b) == "7"
    tight_server.cli(
        "limits", "set", "--org", org, "--key", a["id"], "--bucket", "overridable", "--limit", "3"
    )
    wait_for(lambda: limit_for(a) == "3", "the key override")
    assert limit_for(b) == "7"  # exact key > org > policy
    body = status(tight_server, a)
    assert body["buckets"]["overridable"]["limit"] == 3  # type: ignore[index]
    listed = json.loads(tight_server.cli("limits", "list", "--org", org, "--json").stdout)
    assert {(o["key"], o["limit"]) for o in listed} == {(None, 7), (a["id"], 3)}
    tight_server.cli("limits", "clear", "--org", org, "--bucket", "overridable")
    tight_server.cli("limits", "clear", "--org", org, "--key", a["id"], "--bucket", "overridable")
    wait_for(lambda: limit_for(a) == "100", "the overrides to clear")


def test_override_of_an_unknown_bucket_is_refused(tight_server: Server) -> None:
    proc = tight_server.cli(
        "limits", "set", "--org", "x", "--bucket", "nope", "--limit", "3", check=False
    )
    assert proc.returncode == 2
    assert "not in the policy" in proc.stderr
