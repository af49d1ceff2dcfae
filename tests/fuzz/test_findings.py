"""Regression tests for what the fuzzer found (docs/openapi.md, "Findings")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.fuzz.conftest import ADMIN_TOKEN, Caller

pytestmark = pytest.mark.integration


def test_barchart_over_centuries_is_refused_not_built(fuzz_caller: Caller) -> None:
    """The metrics catalogue answers one bar per day: time_start=0763-… time_end=9316-…
    asked for 3.1 million bars and held the server for minutes. Now a 400 in the
    catalogue's ``{"detail"}`` shape."""
    answer = fuzz_caller.get(
        "/v1/analytics/api_calls_per_date",
        params={"time_start": "0763-07-28T16:02:28Z", "time_end": "9316-01-26T13:42:40Z"},
    )
    assert answer.status_code == 400
    detail = answer.json()["detail"]
    assert "time range too long" in detail
    assert "at most 3660" in detail


def test_barchart_over_ten_years_is_answered(fuzz_caller: Caller) -> None:
    # Up to now: the fixture's calls fall inside, so the answer has bars, not "empty".
    end = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=3650)
    answer = fuzz_caller.get(
        "/v1/analytics/api_calls_per_date",
        params={"time_start": start.isoformat(), "time_end": end.isoformat()},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["type"] == "barchart"
    assert len(body["value"]["values"]) == 3651  # every day, both ends included


def test_simple_metric_over_centuries_is_answered(fuzz_caller: Caller) -> None:
    """Only per-bucket metrics are bounded; a single value over any range is cheap."""
    answer = fuzz_caller.get(
        "/v1/analytics/flow_runs",
        params={"time_start": "0763-07-28T16:02:28Z", "time_end": "9316-01-26T13:42:40Z"},
    )
    assert answer.status_code == 200, answer.text


def test_page_past_a_64_bit_offset_is_a_422(fuzz_caller: Caller) -> None:
    """page=10**29 overflowed the SQL OFFSET: a 500 in plain text. Now the catalogue's 422."""
    answer = fuzz_caller.get(
        "/v1/analytics/api_calls_log",
        params={
            "time_start": "2026-01-01T00:00:00Z",
            "time_end": "2026-01-02T00:00:00Z",
            "page": str(10**29),
        },
    )
    assert answer.status_code == 422
    [error] = answer.json()["detail"]
    assert error["loc"] == ["query", "page"]
    assert error["type"] == "value_error.number.not_le"


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"type": "llm_call", "data": {"model": "m", "tokens_in": 10**29}}, "data.tokens_in"),
        ({"type": "llm_call", "data": {"model": "m", "cost": 1e300}}, "data.cost"),
        (
            {
                "type": "flow_run",
                "data": {
                    "run_id": "r",
                    "status": "failed",
                    "source": "manual",
                    "duration_ms": 1e300,
                },
            },
            "data.duration_ms",
        ),
        ({"type": "x", "time": "0001-01-01T00:00:00+14:00"}, "time"),
    ],
)
def test_events_out_of_range_are_a_422(
    fuzz_caller: Caller, event: dict[str, object], field: str
) -> None:
    """Numbers past a 64-bit column and times before year 1 in UTC were 500s."""
    body = [{"id": f"big-{field}", "time": "2026-01-01T00:00:00Z", **event}]
    answer = fuzz_caller.post("/v1/events", body)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "VALIDATION_FAILED"
    assert f"events[0].{field}" in error["message"]


def test_large_but_storable_numbers_are_kept(fuzz_caller: Caller) -> None:
    body = [
        {
            "id": "big-but-fine",
            "type": "llm_call",
            "time": "2026-01-01T00:00:00Z",
            "data": {"model": "m", "tokens_in": 10**14, "tokens_out": 1, "cost": 10**8},
        }
    ]
    answer = fuzz_caller.post("/v1/events", body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["inserted"] == 1


@pytest.mark.parametrize(
    "path",
    [
        "/call-counts/historical/SCENARIOS/a/b/c/",  # one segment too many reaches no route
        "/call-counts/historical/ENDPOINTS/x/y/z/",
        "/v1/platform/nothing-here",
    ],
)
def test_platform_paths_without_a_route_answer_the_envelope(fuzz_caller: Caller, path: str) -> None:
    """They answered FastAPI's {"detail": "Not Found"}, not the error envelope."""
    answer = fuzz_caller.get(path)
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error["code"] == "NOT_FOUND"
    assert error["requestId"].startswith("req_")


def test_an_id_holding_an_encoded_slash_is_refused_with_the_envelope(
    fuzz_caller: Caller,
) -> None:
    """An encoded "/" splits the path differently for different servers: the gateway
    refuses it (400) rather than match a path the upstream may not see."""
    answer = fuzz_caller.get("/call-counts/historical/SCENARIOS/a%2Fb/c/")
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "BAD_REQUEST"
    assert error["requestId"].startswith("req_")


def test_analytics_paths_without_a_route_go_to_the_upstream(fuzz_caller: Caller) -> None:
    """Only the catalogue's own paths are tollhouse's: anything else under
    /v1/analytics/ is the upstream's to answer (here the example's 404 envelope), with
    the request id of the header in the body."""
    answer = fuzz_caller.get("/v1/analytics/flow_runs/extra")
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error["code"] == "NOT_FOUND"
    assert error["requestId"] == answer.headers["x-request-id"]


# PostgreSQL text and JSONB cannot hold NUL (U+0000): each of these was a 503 there.
NUL_WRITES = [
    ("/v1/events", [{"id": "a\u0000", "type": "x", "time": "2026-01-01T00:00:00Z"}], "id"),
    (
        "/v1/events",
        [{"id": "b", "type": "x", "time": "2026-01-01T00:00:00Z", "data": {"k": "v\u0000"}}],
        "data",
    ),
    (
        "/v1/events",
        [
            {
                "id": "c",
                "type": "llm_call",
                "time": "2026-01-01T00:00:00Z",
                "data": {"model": "\u0000"},
            }
        ],
        "data.model",
    ),
    (
        "/v1/score",
        {"applicationId": "a\u0000", "jobId": "j", "candidate": {"name": "n", "resume": "r"}},
        "applicationId",
    ),
    (
        "/v1/score/batch",
        {
            "items": [
                {
                    "applicationId": "a",
                    "jobId": "j\u0000",
                    "candidate": {"name": "n", "resume": "r"},
                }
            ]
        },
        "jobId",
    ),
]
#: An id holding NUL breaks its rule (tollhouse.identifiers): 400 naming it, on every engine.
NUL_READS = [
    ("/v1/score/application/a%00b", 400),
    ("/v1/score/sj_%00", 400),
    ("/v1/webhooks/deliveries?jobId=%00", 400),
    ("/call-counts/historical/SCENARIOS/a%00/b/", 400),
]


@pytest.mark.postgres
@pytest.mark.parametrize(("path", "body", "field"), NUL_WRITES)
def test_nul_in_text_is_a_422_on_postgresql(
    pg_fuzz_caller: Caller, path: str, body: object, field: str
) -> None:
    answer = pg_fuzz_caller.post(path, body)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "VALIDATION_FAILED"
    assert field in error["message"]
    assert "NUL" in error["message"]


@pytest.mark.postgres
@pytest.mark.parametrize(("path", "status"), NUL_READS)
def test_nul_in_ids_reads_nothing_on_postgresql(
    pg_fuzz_caller: Caller, path: str, status: int
) -> None:
    answer = pg_fuzz_caller.get(path)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == "BAD_REQUEST"


# --- schemathesis with every phase and check (docs/openapi.md, "How it is checked") ------


@pytest.mark.parametrize(
    ("path", "params", "shape"),
    [
        ("/v1/queue", {"limit": "5", "colour": "red"}, "envelope"),
        ("/v1/rate-limit/status", {"colour": "red"}, "envelope"),
        (
            "/v1/analytics/flow_runs",
            {
                "time_start": "2026-01-01T00:00:00Z",
                "time_end": "2026-01-02T00:00:00Z",
                "colour": "red",
            },
            "detail",
        ),
    ],
)
def test_an_unknown_query_parameter_is_refused_naming_it(
    fuzz_caller: Caller, path: str, params: dict[str, str], shape: str
) -> None:
    """tollhouse's own routes take exactly the query parameters the document lists; the
    analytics route answers in its own ``{"detail"}`` shape."""
    answer = fuzz_caller.get(path, params=params)
    assert answer.status_code == 400, answer.text
    message = answer.json()["detail"] if shape == "detail" else answer.json()["error"]["message"]
    assert 'unknown query parameter "colour"' in message


def test_the_documented_query_parameters_are_taken(fuzz_caller: Caller) -> None:
    assert fuzz_caller.get("/v1/queue", params={"limit": "5", "status": "queued"}).is_success


def test_an_empty_tenant_header_is_refused(fuzz_caller: Caller) -> None:
    """``X-Tenant-Id:`` with nothing after it was read as no tenant at all."""
    answer = httpx.get(
        fuzz_caller.url + "/v1/rate-limit/status",
        headers={"Authorization": fuzz_caller.headers["Authorization"], "X-Tenant-Id": ""},
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == 'header "X-Tenant-Id" must not be empty'


@pytest.mark.parametrize("cursor", ["0_", "1767225600000000_c2pfMQ", "99999999999999999999_AAA"])
def test_any_cursor_of_the_rule_is_a_place_in_the_queue(fuzz_caller: Caller, cursor: str) -> None:
    """The document's cursor pattern is exactly what is accepted: a cursor the server did
    not make reads as a place in the listing (here: before or after every job)."""
    answer = fuzz_caller.get("/v1/queue", params={"cursor": cursor})
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("cursor", ["", "0", "0_a", "eyJhIjoxfQ"])
def test_a_cursor_outside_the_rule_is_refused(fuzz_caller: Caller, cursor: str) -> None:
    answer = fuzz_caller.get("/v1/queue", params={"cursor": cursor})
    assert answer.status_code == 400
    assert 'query parameter "cursor"' in answer.json()["error"]["message"]


def test_the_queue_pages_with_its_own_cursors(fuzz_caller: Caller) -> None:
    score = {
        "applicationId": "app_paged",
        "jobId": "job_1",
        "candidate": {"name": "Ada", "resume": "Python"},
    }
    assert fuzz_caller.post("/v1/score", score).status_code == 202
    first = fuzz_caller.get("/v1/queue", params={"limit": "1"}).json()
    assert first["data"] and first["hasMore"] and first["nextCursor"]
    after = fuzz_caller.get("/v1/queue", params={"limit": "1", "cursor": first["nextCursor"]})
    assert after.status_code == 200
    assert after.json()["data"][0]["scoringJobId"] != first["data"][0]["scoringJobId"]


def test_a_call_counts_range_ending_before_it_starts_is_empty(fuzz_caller: Caller) -> None:
    answer = fuzz_caller.get(
        "/call-counts/historical/ENDPOINTS/",
        params={"start_timestamp": "1767225600", "end_timestamp": "1767139200"},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["series"] == [] and body["timestamps"] == []
    assert any("is after end_timestamp" in w for w in body["warnings"])


def test_a_literal_path_allows_only_its_own_methods(fuzz_caller: Caller) -> None:
    """/v1/score/batch is not the job "batch" of GET /v1/score/{scoringJobId}."""
    answer = httpx.request(
        "OPTIONS", fuzz_caller.url + "/v1/score/batch", headers=fuzz_caller.headers
    )
    assert answer.status_code == 405
    assert answer.headers["Allow"] == "POST"


def test_a_whole_number_float_is_an_integer(fuzz_caller: Caller) -> None:
    """JSON Schema's integer admits 5.0; the provider API refused it."""
    answer = httpx.put(
        fuzz_caller.url + "/v1/admin/orgs/fuzz/limits/scoring",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        json={"limit": 5000000.0},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["limit"] == 5000000
    refused = httpx.put(
        fuzz_caller.url + "/v1/admin/orgs/fuzz/limits/scoring",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        json={"limit": 5000000.5},
    )
    assert refused.status_code == 422


def test_a_whole_number_float_is_a_webhook_secret_overlap(fuzz_caller: Caller) -> None:
    """The provider API's webhook secret rotation refused ``2591999.0`` seconds of overlap
    (an integer as JSON Schema counts them) that its key rotation took."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    endpoints = fuzz_caller.url + "/v1/admin/orgs/fuzz/webhooks/endpoints"
    made = httpx.post(
        endpoints,
        params={"environment": "SANDBOX"},
        headers=admin,
        json={"url": "https://hooks.example.com/overlap"},
    )
    assert made.status_code == 201, made.text
    rotate = f"{endpoints}/{made.json()['id']}/rotate-secret"
    taken = httpx.post(
        rotate, params={"environment": "SANDBOX"}, headers=admin, json={"overlapSeconds": 3600.0}
    )
    assert taken.status_code == 200, taken.text
    refused = httpx.post(
        rotate, params={"environment": "SANDBOX"}, headers=admin, json={"overlapSeconds": 3600.5}
    )
    assert refused.status_code == 422
    assert "overlapSeconds" in refused.json()["error"]["message"]
