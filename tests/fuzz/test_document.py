"""The OpenAPI document itself: valid OpenAPI 3.1, every public route, the API shapes of
docs/api-shapes.md, and exactly what the running server serves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import httpx
import jsonschema_rs
import pytest
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from tests.conftest import DEFAULT_POLICY, Server
from tests.fuzz.conftest import FUZZ_POLICY, Caller
from tests.fuzz.document import document_for

OPENAPI_PATH = "/v1/platform/openapi.json"

#: Every public route the document must hold (issue 8; the API shapes of docs/api-shapes.md
#: and the example upstream's routes).
ROUTES = [
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/v1/rate-limit/status"),
    ("post", "/v1/score"),
    ("post", "/v1/score/batch"),
    ("get", "/v1/score/{scoringJobId}"),
    ("get", "/v1/score/application/{applicationId}"),
    ("get", "/v1/queue"),
    ("get", "/v1/webhooks/deliveries"),
    ("get", "/v1/analytics/scoring-volume"),
    ("post", "/v1/events"),
    ("get", "/call-counts/historical/"),
    ("get", "/call-counts/historical/{label}/"),
    ("get", "/call-counts/historical/SCENARIOS/{reco_type}/{name}/"),
    ("get", "/v1/analytics/{metric}"),
    ("get", OPENAPI_PATH),
    ("post", "/v1/criteria/generate"),
    ("post", "/v1/criteria/questions"),
    ("get", "/v1/jobs/{jobId}/criteria"),
    ("post", "/v1/jobs/{jobId}/criteria"),
    ("patch", "/v1/jobs/{jobId}/criteria"),
    ("post", "/v1/jobs/{jobId}/criteria/archive"),
    ("get", "/v1/criteria/{jobId}"),
    ("post", "/v1/criteria/{jobId}"),
    ("delete", "/v1/criteria/{jobId}"),
    ("patch", "/v1/criteria/{jobId}/{criterionId}"),
    ("delete", "/v1/criteria/{jobId}/{criterionId}"),
]


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return document_for(DEFAULT_POLICY)


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _resolve(document: dict[str, Any], pointer: str) -> Any:
    assert pointer.startswith("#/"), pointer
    node: Any = document
    for part in pointer[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _validator(document: dict[str, Any], name: str) -> jsonschema_rs.Validator:
    """A JSON Schema 2020-12 validator of ``components.schemas[name]`` (refs resolved)."""
    return jsonschema_rs.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    )


def test_document_is_valid_openapi_31(document: dict[str, Any]) -> None:
    errors = [str(e) for e in OPENAPI_31_VALIDATOR.iter_errors(document)]
    assert errors == []
    assert document["openapi"] == "3.1.0"


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    refs = {n["$ref"] for n in _walk(document) if isinstance(n, dict) and "$ref" in n}
    assert refs
    for pointer in sorted(refs):
        assert isinstance(_resolve(document, pointer), dict), pointer


def test_every_schema_is_valid_json_schema_2020_12(document: dict[str, Any]) -> None:
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name
        _validator(document, name)  # compiles: every $ref inside resolves


def test_every_public_route_is_documented(document: dict[str, Any]) -> None:
    documented = {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "patch", "delete", "put")
    }
    missing = [route for route in ROUTES if route not in documented]
    assert missing == []


def test_security_and_error_responses(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"]["in"] == "header"
    assert schemes["apiKey"]["name"] == "X-API-Key"
    assert document["security"] == [{"bearerAuth": []}, {"apiKey": []}]
    for method, path in ROUTES:
        op = document["paths"][path][method]
        if path in ("/healthz", "/readyz", "/metrics", OPENAPI_PATH):
            assert op["security"] == []
            continue
        for code in ("401", "403", "429"):
            assert code in op["responses"], (method, path, code)
        limited = _resolve(document, op["responses"]["429"]["$ref"])
        assert {"Retry-After", "X-RateLimit-Limit", "X-Request-Id"} <= set(limited["headers"])
        if method in ("post", "patch") and "requestBody" in op:
            assert "413" in op["responses"], (method, path)
    # The metrics catalogue shape's own error bodies on its route; the envelope elsewhere.
    metric = document["paths"]["/v1/analytics/{metric}"]["get"]["responses"]
    assert metric["429"]["$ref"].endswith("/DetailRateLimited")
    assert metric["422"]["$ref"].endswith("/DetailValidation")
    volume = document["paths"]["/v1/analytics/scoring-volume"]["get"]["responses"]
    assert volume["429"]["$ref"].endswith("/RateLimited")


def test_tenant_header_required_where_the_policy_says(document: dict[str, Any]) -> None:
    def tenant(method: str, path: str) -> dict[str, Any]:
        params = document["paths"][path][method]["parameters"]
        [found] = [p for p in params if p["name"] == "X-Tenant-Id"]
        return found

    assert tenant("post", "/v1/score")["required"] is True
    assert tenant("get", "/v1/criteria/{jobId}")["required"] is True
    assert tenant("get", "/v1/rate-limit/status")["required"] is False
    assert tenant("get", "/v1/analytics/scoring-volume")["required"] is False


# Example bodies of each API shape (docs/api-shapes.md) validate against the document's
# schemas.
SHAPE_EXAMPLES: list[tuple[str, Any]] = [
    (
        "ScoringVolume",  # the scoring-volume shape
        {
            "period": {"start": "2026-03-01T00:00:00.000Z", "end": "2026-03-08T00:00:00.000Z"},
            "granularity": "day",
            "data": [
                {"timestamp": "2026-03-07T00:00:00.000Z", "total": 45, "completed": 40, "failed": 5}
            ],
        },
    ),
    (
        "CallCounts",  # the call-counts shape
        {"timestamps": [1616962929.0, 1635452529.0], "counts": [78, 40]},
    ),
    (
        "CallCountsByLabel",  # the call-counts shape
        {
            "timestamps": [1616962929.0, 1616963929.0, 1635452529.0],
            "series": [
                {
                    "key": "USERINTERACTION",
                    "description": "create user interactions",
                    "extra_data": {},
                    "counts": [78, 0, 40],
                }
            ],
            "has_next": True,
            "next_cursor": "Q21vU1pHb1FjSEp...",
        },
    ),
    (
        "AnalyticsResponse",
        {"type": "simple", "value": {"value": 1842, "prefix": None, "suffix": " runs"}},
    ),
    (
        "AnalyticsResponse",  # the metrics catalogue shape: barchart
        {
            "type": "barchart",
            "value": {
                "values": [{"name": "2026-01-15", "values": {"runs": 42}, "value_mapping": None}]
            },
        },
    ),
    (
        "AnalyticsResponse",  # the metrics catalogue shape: table
        {
            "type": "table",
            "value": {
                "headings": ["Model", "Tokens", "Cost"],
                "rows": [{"Model": "gpt-4o", "Tokens": 250000, "Cost": 1.25}],
                "prefixes": {"Cost": "$"},
                "suffixes": None,
            },
        },
    ),
    (
        "AnalyticsResponse",  # the metrics catalogue shape: paginated api_calls_log
        {
            "type": "table",
            "value": {
                "headings": ["Endpoint", "Method", "Status", "Duration"],
                "items": [
                    {
                        "Endpoint": "/v1/workflows/{id}/runs",
                        "Method": "POST",
                        "Status": 200,
                        "Duration": "142ms",
                    }
                ],
                "total": 1560,
                "pages": 78,
                "size": 20,
                "page": 1,
            },
        },
    ),
    ("DetailError", {"detail": "time_start must be before time_end"}),
    (
        "ValidationDetail",
        {
            "detail": [
                {
                    "loc": ["query", "page_size"],
                    "msg": "ensure this value is less than or equal to 200",
                    "type": "value_error.number.not_le",
                }
            ]
        },
    ),
    (
        "RateLimitCategory",  # the scoring API shape
        {
            "category": "scoring",
            "displayName": "Scoring",
            "endpoints": ["POST /v1/score", "GET /v1/score/{scoringJobId}"],
            "limit": 1000,
            "used": 153,
            "remaining": 847,
            "resetAt": 1705312800,
            "windowSeconds": 60,
        },
    ),
    (
        "ErrorEnvelope",  # the scoring API shape
        {
            "error": {
                "type": "https://embed.nova.dweet.com/errors/rate-limited",
                "code": "RATE_LIMITED",
                "status": 429,
                "message": "Rate limit exceeded. Please retry after the specified delay.",
                "requestId": "req_abc123def456",
            }
        },
    ),
]


@pytest.mark.parametrize(("name", "example"), SHAPE_EXAMPLES)
def test_shape_examples_fit(document: dict[str, Any], name: str, example: Any) -> None:
    errors = [str(e) for e in _validator(document, name).iter_errors(example)]
    assert errors == []


def test_wrong_shapes_do_not_fit(document: dict[str, Any]) -> None:
    """The schemas are not vacuous: bodies that break the shapes are refused."""
    assert not _validator(document, "AnalyticsResponse").is_valid({"type": "simple", "value": {}})
    assert not _validator(document, "ErrorEnvelope").is_valid({"detail": "x"})
    assert not _validator(document, "ScoringVolume").is_valid(
        {"period": {}, "granularity": "week", "data": []}
    )


@pytest.mark.integration
def test_served_document_is_the_built_one(fuzz_caller: Caller) -> None:
    answer = fuzz_caller.get(OPENAPI_PATH)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == document_for(FUZZ_POLICY)


@pytest.mark.integration
def test_served_document_needs_no_key(fuzz_server: Server) -> None:
    """Generators fetch the document by URL: it describes the API, it reveals nothing."""
    answer = httpx.get(fuzz_server.url + OPENAPI_PATH, timeout=10)
    assert answer.status_code == 200
    assert answer.json() == document_for(FUZZ_POLICY)
    assert answer.headers["x-request-id"].startswith("req_")


def _served_routes() -> set[tuple[str, str]]:
    """Every (method, path template) the built-in server answers: its route table and
    the example upstream's routes."""
    from starlette.routing import Route

    from tollhouse import Tollhouse
    from tollhouse.settings import load_settings

    app = Tollhouse(settings=load_settings(environ={}))
    found: set[tuple[str, str]] = set()
    for endpoint in app.routes.endpoints:
        if endpoint.documented and endpoint.group != "dashboard":
            for method in endpoint.methods:
                found.add((method.lower(), endpoint.path.rstrip("/")))
    for route in cast(Any, app.upstream).routes:
        if isinstance(route, Route) and getattr(route, "include_in_schema", True):
            for method in route.methods or ():
                if method != "HEAD":
                    found.add((method.lower(), route.path.rstrip("/")))
    return found


def test_every_route_the_server_answers_is_documented(document: dict[str, Any]) -> None:
    documented = {
        (method, path.rstrip("/")) for path, item in document["paths"].items() for method in item
    }
    assert _served_routes() - documented == set()


def test_operation_ids_are_unique(document: dict[str, Any]) -> None:
    ids = [
        op["operationId"]
        for item in document["paths"].values()
        for method, op in item.items()
        if method in ("get", "post", "patch", "delete", "put")
    ]
    assert len(ids) >= len(ROUTES)
    assert len(ids) == len(set(ids))
