"""Usage through the running product: calls made are the calls counted (call counts and
catalogue metrics)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx

from tests.conftest import Server


def headers(key: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {key['key']}", "X-Tenant-Id": "acme"}


def test_calls_are_metered_and_reported(default_server: Server) -> None:
    org = "usage-" + uuid.uuid4().hex[:8]
    key = default_server.key(org, role="manager")
    other = default_server.key("usage-other-" + uuid.uuid4().hex[:8], role="root")
    start = time.time() - 60
    for _ in range(3):
        httpx.get(default_server.url + "/v1/jobs/j1/criteria", headers=headers(key))
    httpx.get(default_server.url + "/v1/rate-limit/status", headers=headers(key))

    params = {"start_timestamp": start, "end_timestamp": time.time() + 60}
    resp = httpx.get(
        default_server.url + "/call-counts/historical/ENDPOINTS/",
        params=params,
        headers=headers(key),
    )
    assert resp.status_code == 200, resp.text
    series = {s["key"]: sum(s["counts"]) for s in resp.json()["series"]}
    assert series["CRITERIA"] == 3
    assert series["RATE_LIMIT_STATUS"] == 1

    now = datetime.now(UTC)
    log = httpx.get(
        default_server.url + "/v1/analytics/api_calls_log",
        params={
            "time_start": (now - timedelta(hours=1)).isoformat(),
            "time_end": (now + timedelta(minutes=5)).isoformat(),
        },
        headers={"X-API-Key": key["key"]},
    )
    assert log.status_code == 200, log.text
    value = log.json()["value"]
    routes = [item["Endpoint"] for item in value["items"]]
    assert routes.count("/v1/jobs/{jobId}/criteria") == 3
    assert value["total"] >= 4  # this call itself may be counted too

    # Another org sees none of it.
    theirs = httpx.get(
        default_server.url + "/call-counts/historical/ENDPOINTS/",
        params=params,
        headers=headers(other),
    )
    assert theirs.status_code == 200
    assert (
        all(sum(s["counts"]) == 0 for s in theirs.json()["series"]) or not theirs.json()["series"]
    )


def test_metrics_catalogue_errors_and_roles(default_server: Server) -> None:
    member = default_server.key("usage-m-" + uuid.uuid4().hex[:8], role="member")
    resp = httpx.get(default_server.url + "/call-counts/historical/", headers=headers(member))
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "FORBIDDEN"
    bad = httpx.get(
        default_server.url + "/v1/analytics/flow_runs",
        params={"time_start": "2026-01-02T00:00:00Z", "time_end": "2026-01-01T00:00:00Z"},
        headers=headers(member),
    )
    assert bad.status_code == 400
    assert bad.json() == {"detail": "time_start must be before time_end"}
    unknown = httpx.get(
        default_server.url + "/v1/analytics/no_such_metric",
        params={"time_start": "2026-01-01T00:00:00Z", "time_end": "2026-01-02T00:00:00Z"},
        headers=headers(member),
    )
    assert unknown.status_code == 404


def test_events_ingested_and_counted(default_server: Server) -> None:
    key = default_server.key("usage-e-" + uuid.uuid4().hex[:8], role="root")
    now = datetime.now(UTC).replace(microsecond=0)
    events = [
        {
            "id": f"ev_{i}",
            "type": "flow_run",
            "time": now.isoformat().replace("+00:00", "Z"),
            "data": {
                "run_id": f"r{i}",
                "status": "succeeded",
                "source": "manual",
                "user": "ada",
                "workflow": "w",
                "duration_ms": 100,
            },
        }
        for i in range(3)
    ]
    url = default_server.url + "/v1/events"
    assert httpx.post(url, json=events, headers=headers(key)).status_code in (200, 201, 202)
    assert httpx.post(url, json={"events": events}, headers=headers(key)).status_code in (
        200,
        201,
        202,
    )  # the same ids again: idempotent
    runs = httpx.get(
        default_server.url + "/v1/analytics/flow_runs",
        params={
            "time_start": (now - timedelta(hours=1)).isoformat(),
            "time_end": (now + timedelta(hours=1)).isoformat(),
        },
        headers=headers(key),
    )
    assert runs.status_code == 200, runs.text
    assert runs.json()["type"] == "simple"
    assert runs.json()["value"]["value"] == 3
