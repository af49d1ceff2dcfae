"""The gateway's behaviour (the partner rate-limit status and scoring API shapes,
docs/api-shapes.md) over real HTTP against running `tollhouse serve` processes."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from datetime import datetime

import httpx
import pytest

from tests.conftest import Server

GEN_BODY = {"jobId": "job_1", "title": "Backend Engineer", "description": "Python and Redis."}


def bearer(key: dict[str, str], tenant: str | None = "acme") -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key['key']}"}
    if tenant:
        headers["X-Tenant-Id"] = tenant
    return headers


def org() -> str:
    return "org-" + uuid.uuid4().hex[:10]


def assert_envelope(resp: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    err = body["error"]
    assert set(err) == {"type", "code", "status", "message", "requestId"}
    assert err["code"] == code and err["status"] == status
    assert err["type"].endswith("/errors/" + code.lower().replace("_", "-"))
    assert err["requestId"].startswith("req_")
    assert resp.headers["x-request-id"] == err["requestId"]
    assert err["message"]
    assert "Traceback" not in resp.text
    return dict(err)


# ---- health, auth ---------------------------------------------------------------------


def test_healthz_needs_no_key(default_server: Server) -> None:
    resp = httpx.get(default_server.url + "/healthz")
    assert resp.status_code == 200 and resp.json()["status"] == "ok"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer sk_test_unknown"},
        {"Authorization": "Bearer sk_test_" + "A" * 32},
        {"X-API-Key": "sk_live_" + "B" * 32},
        {"X-API-Key": "garbage"},
    ],
)
def test_missing_malformed_or_unknown_keys_get_401(
    default_server: Server, headers: dict[str, str]
) -> None:
    resp = httpx.get(default_server.url + "/v1/rate-limit/status", headers=headers)
    assert_envelope(resp, 401, "UNAUTHORIZED")
    assert "retry-after" not in resp.headers


def test_x_api_key_and_environments(default_server: Server) -> None:
    live = default_server.key(org(), env="live")
    assert live["key"].startswith("sk_live_")
    resp = httpx.get(
        default_server.url + "/v1/rate-limit/status", headers={"X-API-Key": live["key"]}
    )
    assert resp.status_code == 200
    assert resp.json()["environment"] == "PRODUCTION"
    test = default_server.key(org(), env="test")
    resp = httpx.get(default_server.url + "/v1/rate-limit/status", headers=bearer(test, None))
    assert resp.json()["environment"] == "SANDBOX"


def test_revoked_key_is_refused_by_the_running_server(default_server: Server) -> None:
    key = default_server.key(org())
    url = default_server.url + "/v1/jobs/j/criteria"
    assert httpx.get(url, headers=bearer(key)).status_code == 404  # authenticated; no criteria
    default_server.cli("keys", "revoke", key["id"])
    # The server polls revocations twice a second; wait for it without asserting on time.
    deadline = time.monotonic() + 10
    status = 0
    while time.monotonic() < deadline:
        status = httpx.get(url, headers=bearer(key)).status_code
        if status == 401:
            break
        time.sleep(0.1)
    assert status == 401


def test_tenant_header_required_by_policy_but_never_for_status(default_server: Server) -> None:
    key = default_server.key(org())
    resp = httpx.post(
        default_server.url + "/v1/criteria/generate", json=GEN_BODY, headers=bearer(key, None)
    )
    err = assert_envelope(resp, 400, "TENANT_REQUIRED")
    assert "X-Tenant-Id" in str(err["message"])
    status = httpx.get(default_server.url + "/v1/rate-limit/status", headers=bearer(key, None))
    assert status.status_code == 200


def test_role_enforced_per_route(tight_server: Server) -> None:
    member = tight_server.key(org(), role="member")
    resp = httpx.delete(tight_server.url + "/v1/criteria/job_1", headers=bearer(member))
    err = assert_envelope(resp, 403, "FORBIDDEN")
    assert "member" in str(err["message"])
    manager = tight_server.key(org(), role="manager")
    resp = httpx.delete(tight_server.url + "/v1/criteria/job_1", headers=bearer(manager))
    assert resp.status_code == 404  # allowed through; the job has no criteria


# ---- the example upstream through the gateway, with headers ----------------------------


def test_product_call_carries_rate_limit_headers(default_server: Server) -> None:
    key = default_server.key(org())
    resp = httpx.post(
        default_server.url + "/v1/criteria/generate", json=GEN_BODY, headers=bearer(key)
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["jobId"] == "job_1" and resp.json()["criteria"]
    h = resp.headers
    # Tightest bucket: criteria_ai (5/s) has 4 left; criteria_generation (60/min) has 59.
    assert h["x-ratelimit-limit"] == "5"
    assert h["x-ratelimit-remaining"] == "4"
    assert int(h["x-ratelimit-reset"]) >= int(time.time()) - 5  # a Unix timestamp, not a delta
    assert h["ratelimit-policy"] == '"criteria_ai";q=5;w=1, "criteria_generation";q=60;w=60'
    items = [i.strip() for i in h["ratelimit"].split(",")]
    assert items[0].startswith('"criteria_ai";r=4;t=')
    assert items[1].startswith('"criteria_generation";r=59;t=')
    assert "retry-after" not in h
    assert h["x-request-id"].startswith("req_")


def test_429_body_headers_and_retry_after(default_server: Server) -> None:
    key = default_server.key(org())
    url = default_server.url + "/v1/rate-limit/status"
    codes = []
    last = None
    # 2 req/s: a quick burst overruns it within a few requests, even on a loaded machine.
    for _ in range(30):
        last = httpx.get(url, headers=bearer(key, None))
        codes.append(last.status_code)
        if last.status_code == 429:
            break
    assert last is not None and last.status_code == 429, codes
    err = assert_envelope(last, 429, "RATE_LIMITED")
    assert err["message"] == "Rate limit exceeded. Please retry after the specified delay."
    assert err["type"] == "https://tollhouse.dev/errors/rate-limited"
    assert int(last.headers["retry-after"]) >= 1
    assert last.headers["x-ratelimit-remaining"] == "0"
    assert last.headers["x-ratelimit-limit"] == "2"


# ---- the status endpoint ----------------------------------------------------------------


def test_status_endpoint_shapes(default_server: Server) -> None:
    key = default_server.key(org())
    resp = httpx.get(default_server.url + "/v1/rate-limit/status", headers=bearer(key, None))
    assert resp.status_code == 200
    body = resp.json()
    # the partner rate-limit status shape
    assert body["partnerId"] == key["org"]
    assert body["environment"] == "SANDBOX"
    assert body["degraded"] is False
    assert body["generatedAt"].endswith("Z")
    datetime.fromisoformat(body["generatedAt"].replace("Z", "+00:00"))
    for name in (
        "criteria_ai",
        "criteria_current_reads",
        "scoring_intake_batch",
        "scoring_intake_single",
        "read_and_ops",
        "rate_limit_status",
        "analytics",
    ):
        b = body["buckets"][name]
        assert set(b) == {"limit", "remaining", "resetAt", "resetInSeconds"}
        assert all(isinstance(v, int) for v in b.values())
    assert body["buckets"]["rate_limit_status"]["limit"] == 2
    assert body["buckets"]["rate_limit_status"]["remaining"] == 1  # this call consumed one
    assert body["buckets"]["analytics"]["limit"] == 20
    assert body["criteria_ai_inflight"] == {"limit": 4, "active": 0, "retryAfterSeconds": 0}
    # the scoring API shape
    assert body["timestamp"].endswith("Z")
    cats = {c["category"]: c for c in body["categories"]}
    scoring = cats["scoring"]
    assert set(scoring) == {
        "category",
        "displayName",
        "endpoints",
        "limit",
        "used",
        "remaining",
        "resetAt",
        "windowSeconds",
    }
    assert (scoring["displayName"], scoring["limit"], scoring["windowSeconds"]) == (
        "Scoring",
        1000,
        60,
    )
    assert scoring["used"] == 0 and scoring["remaining"] == 1000 and scoring["resetAt"] == 0
    assert cats["criteria_generation"]["limit"] == 60
    assert cats["criteria_operations"]["endpoints"][0] == "GET /v1/criteria/{jobId}"
    assert resp.headers["x-ratelimit-limit"] == "2"


def test_status_consumes_only_its_own_bucket(tight_server: Server) -> None:
    key = tight_server.key(org())
    url = tight_server.url + "/v1/rate-limit/status"
    assert httpx.get(tight_server.url + "/v1/criteria/j", headers=bearer(key)).status_code == 404
    first = httpx.get(url, headers=bearer(key, None)).json()
    second = httpx.get(url, headers=bearer(key, None)).json()
    for name in ("narrow", "wide", "tiny", "costly"):
        # resetInSeconds counts down between the two reads; the rest must not move.
        for field in ("limit", "remaining", "resetAt"):
            assert first["buckets"][name][field] == second["buckets"][name][field]
    assert first["buckets"]["narrow"]["remaining"] == 1
    cats = {c["category"]: c for c in second["categories"]}
    assert cats["narrow"]["used"] == 1 and cats["narrow"]["resetAt"] > 0
    assert cats["rate_limit_status"]["used"] == 2


def test_rejected_call_consumes_no_other_bucket(tight_server: Server) -> None:
    key = tight_server.key(org())
    url = tight_server.url + "/v1/criteria/job"
    codes = [httpx.get(url, headers=bearer(key)).status_code for _ in range(4)]
    assert codes == [404, 404, 429, 429]
    status = httpx.get(tight_server.url + "/v1/rate-limit/status", headers=bearer(key)).json()
    assert status["buckets"]["narrow"]["remaining"] == 0
    assert status["buckets"]["wide"]["remaining"] == 8


def test_cost_per_request(tight_server: Server) -> None:
    key = tight_server.key(org())
    url = tight_server.url + "/v1/jobs/j/criteria/archive"
    codes = [httpx.post(url, headers=bearer(key)).status_code for _ in range(3)]
    assert codes[2] == 429 and 429 not in codes[:2]


def test_scopes_key_and_tenant(tight_server: Server) -> None:
    o = org()
    k1, k2 = tight_server.key(o), tight_server.key(o)
    url = tight_server.url + "/v1/jobs/j/criteria"
    assert [httpx.get(url, headers=bearer(k1)).status_code for _ in range(4)][-1] == 429
    assert httpx.get(url, headers=bearer(k2)).status_code != 429  # per-key bucket
    url = tight_server.url + "/v1/score/application/a1"
    assert [httpx.get(url, headers=bearer(k1, "t1")).status_code for _ in range(3)][-1] == 429
    assert httpx.get(url, headers=bearer(k1, "t2")).status_code != 429  # per-tenant bucket


def test_orgs_and_environments_have_separate_counters(tight_server: Server) -> None:
    o = org()
    a, b = tight_server.key(o), tight_server.key(org())
    live = tight_server.key(o, env="live")
    url = tight_server.url + "/v1/criteria/j"
    assert [httpx.get(url, headers=bearer(a)).status_code for _ in range(3)][-1] == 429
    assert httpx.get(url, headers=bearer(b)).status_code == 404
    assert httpx.get(url, headers=bearer(live)).status_code == 404


def test_exact_admission_under_concurrency(tight_server: Server) -> None:
    """Hundreds of concurrent requests against a limit of 5 admit exactly 5."""
    key = tight_server.key(org())
    url = tight_server.url + "/v1/score/sj_missing"

    async def fire() -> list[int]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            rs = await asyncio.gather(*(client.get(url, headers=bearer(key)) for _ in range(300)))
        return [r.status_code for r in rs]

    codes = asyncio.run(fire())
    assert codes.count(404) == 5  # admitted: the example upstream has no such job
    assert codes.count(429) == 295


# ---- pools -------------------------------------------------------------------------------


def _generate(server: Server, key: dict[str, str], delay_ms: int) -> httpx.Response:
    headers = {**bearer(key), "x-example-delay-ms": str(delay_ms)}
    return httpx.post(
        server.url + "/v1/criteria/generate", json=GEN_BODY, headers=headers, timeout=30
    )


def _pool_active(server: Server, key: dict[str, str]) -> int:
    status = httpx.get(server.url + "/v1/rate-limit/status", headers=bearer(key, None))
    return int(status.json()["slow_inflight"]["active"])


def test_pool_caps_in_flight_and_releases_on_completion(tight_server: Server) -> None:
    o = org()
    key = tight_server.key(o)
    watcher = tight_server.key(o)  # its own per-key status bucket
    results: list[httpx.Response] = []
    threads = [
        threading.Thread(target=lambda: results.append(_generate(tight_server, key, 1500)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while _pool_active(tight_server, watcher) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    third = _generate(tight_server, key, 0)
    err = assert_envelope(third, 429, "CONCURRENCY_LIMITED")
    assert "slow_inflight" in str(err["message"])
    assert int(third.headers["retry-after"]) >= 1
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200, 200]
    assert _pool_active(tight_server, watcher) == 0
    assert _generate(tight_server, key, 0).status_code == 200


def test_pool_slot_released_on_client_disconnect(tight_server: Server) -> None:
    o = org()
    key, watcher = tight_server.key(o), tight_server.key(o)
    headers = {**bearer(key), "x-example-delay-ms": "20000"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            tight_server.url + "/v1/criteria/generate", json=GEN_BODY, headers=headers, timeout=1
        )
    deadline = time.monotonic() + 10
    while _pool_active(tight_server, watcher) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pool_active(tight_server, watcher) == 0


def test_pool_slot_released_on_upstream_error(tight_server: Server) -> None:
    o = org()
    key, watcher = tight_server.key(o), tight_server.key(o)
    # Invalid JSON makes the upstream answer 400; the slot must still come back.
    headers = {**bearer(key), "content-type": "application/json"}
    resp = httpx.post(tight_server.url + "/v1/criteria/generate", content=b"{", headers=headers)
    assert resp.status_code == 400
    assert _pool_active(tight_server, watcher) == 0


# ---- bad input -----------------------------------------------------------------------------


def test_oversized_body_is_413(tight_server: Server) -> None:
    key = tight_server.key(org())
    big = json.dumps({**GEN_BODY, "description": "x" * 5000})
    resp = httpx.post(
        tight_server.url + "/v1/criteria/generate",
        content=big,
        headers={**bearer(key), "content-type": "application/json"},
    )
    assert_envelope(resp, 413, "PAYLOAD_TOO_LARGE")

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"x" * 500

    resp = httpx.post(
        tight_server.url + "/v1/criteria/generate", content=chunks(), headers=bearer(key)
    )
    assert_envelope(resp, 413, "PAYLOAD_TOO_LARGE")
    # Neither consumed a pool slot for good.
    assert _pool_active(tight_server, tight_server.key(key["org"])) == 0


def test_metrics_catalogue_routes_answer_errors_with_detail(default_server: Server) -> None:
    key = default_server.key(org())
    url = default_server.url + "/v1/analytics/flow_runs"

    async def burst() -> httpx.Response | None:
        # The analytics bucket allows 20/s: 60 requests at once overrun it even when a
        # window boundary splits them, however slow the machine.
        async with httpx.AsyncClient(headers=bearer(key, None), timeout=30) as client:
            for _ in range(5):
                answers = await asyncio.gather(*(client.get(url) for _ in range(60)))
                limited = [r for r in answers if r.status_code == 429]
                if limited:
                    return limited[0]
        return None

    resp = asyncio.run(burst())
    assert resp is not None
    assert resp.status_code == 429
    assert resp.json() == {"detail": "Rate limit exceeded"}
    assert int(resp.headers["retry-after"]) >= 1
    unauth = httpx.get(url)
    assert unauth.status_code == 401
    assert set(unauth.json()) == {"detail"}


def test_embedded_example_keeps_orgs_apart(default_server: Server) -> None:
    a, b = default_server.key(org()), default_server.key(org())
    url = default_server.url + "/v1/criteria/generate"
    assert httpx.post(url, json=GEN_BODY, headers=bearer(a)).status_code == 200
    read = default_server.url + "/v1/jobs/job_1/criteria"
    assert httpx.get(read, headers=bearer(a)).status_code == 200
    assert httpx.get(read, headers=bearer(b)).status_code == 404


def test_scoring_is_queued_and_polled(default_server: Server) -> None:
    key = default_server.key(org())
    assert (
        httpx.post(
            default_server.url + "/v1/criteria/generate", json=GEN_BODY, headers=bearer(key)
        ).status_code
        == 200
    )
    body = {
        "applicationId": "app_1",
        "jobId": "job_1",
        "candidate": {"name": "Ada", "resume": "Python and Redis for six years."},
    }
    resp = httpx.post(default_server.url + "/v1/score", json=body, headers=bearer(key))
    assert resp.status_code == 202, resp.text
    accepted = resp.json()
    assert accepted["status"] == "queued"
    assert set(accepted) >= {"scoringJobId", "status", "queuePosition", "estimatedWaitSeconds"}
    assert resp.headers["x-ratelimit-limit"] == "20"
    url = default_server.url + "/v1/score/" + accepted["scoringJobId"]
    deadline = time.monotonic() + 20
    job = {}
    while time.monotonic() < deadline:
        job = httpx.get(url, headers=bearer(key)).json()
        if job["status"] in ("completed", "failed"):
            break
        time.sleep(0.1)
    assert job["status"] == "completed", job
    by_app = httpx.get(default_server.url + "/v1/score/application/app_1", headers=bearer(key))
    assert by_app.json()["scoringJobId"] == accepted["scoringJobId"]
    other = default_server.key(org())
    assert httpx.get(url, headers=bearer(other)).status_code == 404
    volume = httpx.get(
        default_server.url + "/v1/analytics/scoring-volume?timeRange=1h", headers=bearer(key)
    )
    assert volume.status_code == 200
    assert volume.headers["cache-control"] == "private, max-age=60"
    assert sum(p["completed"] for p in volume.json()["data"]) == 1
