"""tollhouse's OpenAPI 3.1 document: every public route, in the shapes of the APIs it
reproduces (docs/api-shapes.md).

Every route tollhouse answers — health, readiness, metrics, rate-limit status, the
platform routes (events, call counts, the analytics catalogue), the jobs routes of the
policy's async routes, the queue, webhook deliveries, scoring volume — and the bundled
example upstream's routes are written here as data, with their parameters, bodies and
responses, so the document can be checked against the running server (``tests/fuzz/``).

What is documented follows the policy: each async route gets its four job routes, the
``X-Tenant-Id`` header is required where an access rule says so, ``[platform] prefix``
and ``disable`` move and drop tollhouse's own routes as the route table does, and the
example upstream's routes appear only when it is the upstream.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Final

from tollhouse.analytics.call_counts import DEFAULT_AMT, LABELS, MAX_AMT
from tollhouse.analytics.catalogue import CATALOGUE
from tollhouse.identifiers import (
    APPLICATION_ID,
    CRITERION_ID,
    CURSOR,
    IDEMPOTENCY_KEY,
    LABEL_VALUE,
    POSTING_ID,
    SCORING_JOB_ID,
    TENANT,
    path_segment,
)
from tollhouse.jobs.shapes import MAX_STATUS_IDS, STATUS_ID_PATTERN
from tollhouse.jobs.volume import TIME_RANGES
from tollhouse.openapi.admin import (
    ADMIN_RESPONSES,
    ADMIN_SCHEMAS,
    ADMIN_SECURITY_SCHEME,
    admin_paths,
)
from tollhouse.openapi.components import (
    HEADERS,
    RESPONSES,
    SCHEMAS,
    SECURITY,
    SECURITY_SCHEMES,
    Schema,
    limit_headers,
    ref,
)
from tollhouse.policy.match import Router
from tollhouse.policy.model import Policy

#: Where the document is served (contract: the platform app's original path).
OPENAPI_PATH: Final = "/v1/platform/openapi.json"
_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_ID: Final[Schema] = {"type": "string", "minLength": 1, "maxLength": 256}
#: ``GET /v1/score?ids=``: 1 to 100 ids of 1-64 letters, digits, ``_`` or ``-``.
_STATUS_IDS: Final = f"^{STATUS_ID_PATTERN}(,{STATUS_ID_PATTERN}){{0,{MAX_STATUS_IDS - 1}}}$"
#: The call-counts shape's timestamp bounds.
_STAMP: Final[Schema] = {"type": "number", "minimum": -150000000000.0, "maximum": 3500000000.0}


def _response(description: str, schema: Schema | None, **headers: Schema) -> Schema:
    out: Schema = {"description": description, "headers": {**limit_headers(), **headers}}
    if schema is not None:
        out["content"] = {"application/json": {"schema": schema}}
    return out


def _errors(*codes: int, detail: bool = False) -> dict[str, Schema]:
    names = {
        400: "BadRequest",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        405: "MethodNotAllowed",
        409: "Conflict",
        413: "PayloadTooLarge",
        422: "ValidationFailed",
        429: "RateLimited",
    }
    detailed = {
        400: "DetailBadRequest",
        401: "DetailUnauthorized",
        403: "DetailForbidden",
        404: "DetailNotFound",
        422: "DetailValidation",
        429: "DetailRateLimited",
    }
    out = {}
    for code in codes:
        name = detailed.get(code, names[code]) if detail else names[code]
        out[str(code)] = {"$ref": "#/components/responses/" + name}
    return out


#: What the gateway itself may answer on any authenticated route.
_GATEWAY = (400, 401, 403, 429)
_GATEWAY_BODY = (*_GATEWAY, 413)


def _query(name: str, schema: Schema, description: str, *, required: bool = False) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "schema": schema,
        "description": description,
    }


def _path(name: str, description: str, schema: Schema) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


def _body(schema: Schema, description: str) -> Schema:
    return {
        "required": True,
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }


def _op(
    summary: str,
    tag: str,
    responses: dict[str, Schema],
    *,
    parameters: list[Schema] | None = None,
    body: Schema | None = None,
    description: str | None = None,
    operation_id: str | None = None,
) -> Schema:
    op: Schema = {"summary": summary, "tags": [tag], "responses": responses}
    if description:
        op["description"] = description
    if operation_id:
        op["operationId"] = operation_id
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
    return op


# ---- the routes answered in raw ASGI ------------------------------------------------------


def _gateway_paths() -> dict[str, dict[str, Schema]]:
    return {
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "tags": ["operations"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "The process is up.",
                        "content": {"application/json": {"schema": ref("Health")}},
                    }
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: the database and the limit store",
                "tags": ["operations"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "Ready (limits may be degraded: served locally).",
                        "content": {"application/json": {"schema": ref("Readiness")}},
                    },
                    "503": {
                        "description": "Not ready: the failed check is named.",
                        "content": {"application/json": {"schema": ref("Readiness")}},
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "tags": ["operations"],
                "security": [],
                "description": "Open unless TOLLHOUSE_METRICS_TOKEN is set (then Bearer).",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": {
                        "description": "A metrics token is set and was not sent.",
                        "content": {"application/json": {"schema": ref("ErrorEnvelope")}},
                    },
                },
            }
        },
        "/v1/rate-limit/status": {
            "get": _op(
                "Rate limit status",
                "rate limits",
                {
                    "200": _response("Every bucket, pool and category.", ref("RateLimitStatus")),
                    **_errors(*_GATEWAY),
                },
                description=(
                    "Reads every bucket and pool of the caller without consuming anything "
                    "but its own rate_limit_status bucket. X-Tenant-Id is not required."
                ),
            )
        },
        "/v1/platform/authorize": {
            "get": _op(
                "Forward-auth decision",
                "forward auth",
                {
                    "200": {
                        "description": (
                            "Admitted: no body; X-Tollhouse-Org, -Environment, -Key-Id, "
                            "-Role, X-Request-Id and the rate-limit headers to copy."
                        )
                    },
                    **_errors(*_GATEWAY_BODY),
                },
                parameters=[
                    {
                        "name": name,
                        "in": "header",
                        "required": False,
                        "description": text,
                        "schema": {"type": "string"},
                    }
                    for name, text in (
                        ("X-Original-Method", "nginx: the original method."),
                        ("X-Original-URI", "nginx: the original path and query."),
                        ("X-Forwarded-Method", "Traefik, Caddy: the original method."),
                        ("X-Forwarded-Uri", "Traefik, Caddy: the original path and query."),
                    )
                ],
                description=(
                    "Asked by a proxy in [proxy] trusted_proxies (anyone else: 403) whether "
                    "the original request may pass; any method is accepted and the body is "
                    "ignored. Refusals carry the envelope in the body and in "
                    "X-Tollhouse-Error (docs/forward-auth.md)."
                ),
            )
        },
    }


def _job_paths(policy: Policy) -> dict[str, dict[str, Schema]]:
    paths: dict[str, dict[str, Schema]] = {}
    idempotency = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "The same key and body give the same job (Idempotent-Replayed: true).",
        "schema": IDEMPOTENCY_KEY.schema(),
    }
    for route in policy.async_routes:
        method, _, path = route.route.partition(" ")
        base = path.strip().rstrip("/")
        verb = method.split("/")[0].lower() or "post"
        score = base.endswith("/score")
        item = ref("ScoreRequest") if score else {"type": "object"}
        batch = (
            ref("ScoreBatch")
            if score
            else {
                "type": "object",
                "required": ["items"],
                "properties": {
                    "items": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 100,
                        "items": {"type": "object"},
                    }
                },
            }
        )
        accepted = {
            "Location": {"description": "Where to poll the job.", "schema": {"type": "string"}},
            "Idempotent-Replayed": {
                "description": "Present (true) when an Idempotency-Key replayed an earlier job.",
                "schema": {"type": "string", "const": "true"},
            },
        }
        paths[base] = {
            verb: _op(
                f"Submit a job ({route.route})",
                "jobs",
                {
                    "202": _response("Queued.", ref("Accepted"), **accepted),
                    **_errors(*_GATEWAY_BODY, 422),
                },
                parameters=[idempotency],
                body=_body(item, "The job's payload."),
            )
        }
        if verb != "get":
            paths[base]["get"] = _op(
                "Many jobs' status in one call",
                "jobs",
                {
                    "200": _response("The jobs found, in the order asked.", ref("JobStatuses")),
                    **_errors(*_GATEWAY),
                },
                parameters=[
                    _query(
                        "ids",
                        {"type": "string", "pattern": _STATUS_IDS},
                        f"1 to {MAX_STATUS_IDS} scoring job ids, comma-separated.",
                        required=True,
                    )
                ],
                description=(
                    "Each job as a poll of it answers; ids the caller's org and environment "
                    "have no job of (another org's too) are listed in notFound. Limited as one "
                    "poll. No ids, more than 100, or one that is not 1-64 letters, digits, _ "
                    "or - is a 400 naming the parameter."
                ),
            )
        paths[base + "/batch"] = {
            "post": _op(
                "Submit up to 100 jobs",
                "jobs",
                {
                    "202": _response(
                        "Each item queued or refused, in order.",
                        ref("BatchAccepted"),
                        **{"Idempotent-Replayed": accepted["Idempotent-Replayed"]},
                    ),
                    **_errors(*_GATEWAY_BODY, 422),
                },
                parameters=[idempotency],
                body=_body(batch, '{"items": [1..100 payloads]}'),
            )
        }
        paths[base + "/application/{applicationId}"] = {
            "get": _op(
                "The latest job of an application",
                "jobs",
                {"200": _response("The job.", ref("Job")), **_errors(*_GATEWAY, 404)},
                parameters=[
                    _path("applicationId", "The application's id.", APPLICATION_ID.schema())
                ],
            )
        }
        paths[base + "/{scoringJobId}"] = {
            "get": _op(
                "Poll a job",
                "jobs",
                {
                    "200": _response("The job.", ref("Job")),
                    **_errors(*_GATEWAY, 404, 405),
                },
                parameters=[_path("scoringJobId", "The id the 202 gave.", SCORING_JOB_ID.schema())],
                description="Another org's job is a 404, exactly like an unknown one.",
            )
        }
    paths["/v1/queue"] = {
        "get": _op(
            "The caller's queue and jobs",
            "jobs",
            {
                "200": _response("Counts and one page of jobs.", ref("QueuePage")),
                **_errors(*_GATEWAY),
            },
            parameters=[
                _query(
                    "status",
                    {"enum": ["queued", "running", "completed", "failed"]},
                    "Only jobs in this status.",
                ),
                _query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                    "Jobs per page.",
                ),
                _query("cursor", CURSOR.schema(), "nextCursor of the previous page."),
            ],
        )
    }
    paths["/v1/webhooks/deliveries"] = {
        "get": _op(
            "Webhook deliveries and their attempts",
            "jobs",
            {"200": _response("Newest first.", ref("Deliveries")), **_errors(*_GATEWAY)},
            parameters=[_query("jobId", SCORING_JOB_ID.schema(), "Only this job's deliveries.")],
        )
    }
    paths["/v1/analytics/scoring-volume"] = {
        "get": _op(
            "Scoring volume",
            "analytics",
            {
                "200": _response(
                    "Completed and failed jobs per bucket.",
                    ref("ScoringVolume"),
                    **{
                        "Cache-Control": {
                            "description": "private, max-age=60",
                            "schema": {"type": "string"},
                        }
                    },
                ),
                **_errors(*_GATEWAY, 422),
            },
            parameters=[
                _query(
                    "timeRange",
                    {"enum": ["1h", "24h", "7d", "30d", "90d"]},
                    "Lookback window.",
                    required=True,
                )
            ],
        )
    }
    return paths


# ---- the self-serve routes: an org's own keys and webhook endpoints ---------------------------


def _optional_body(schema: Schema, description: str) -> Schema:
    return {**_body(schema, description), "required": False}


def _portal_paths() -> dict[str, dict[str, Schema]]:
    """The self-serve API (root and manager keys; 403 for the others)."""
    managing = (
        "Root and manager keys only (other roles: 403). Scoped to the caller's org and "
        "environment: another org's id is a 404, exactly like an unknown one."
    )
    overlap = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "overlapSeconds": {
                "type": "integer",
                "minimum": 0,
                "maximum": 2592000,
                "description": "How long the old one keeps working (default 86400; 0: ends now).",
            }
        },
    }
    key_id = _path("keyId", "The key (key_…).", _ID)
    endpoint_id = _path("endpointId", "The webhook endpoint (we_…).", _ID)
    with_body = (*_GATEWAY_BODY, 422)
    one = "/v1/webhooks/endpoints/{endpointId}"
    return {
        "/v1/limits": {
            "get": _op(
                "The org's effective limits",
                "rate limits",
                {
                    "200": _response(
                        "Each bucket and pool with the policy's limit and the org's "
                        "(overrides marked, key overrides of this environment).",
                        {
                            "allOf": [
                                ref("AdminOrgLimits"),
                                {
                                    "type": "object",
                                    "required": ["environment"],
                                    "properties": {
                                        "environment": {"enum": ["SANDBOX", "PRODUCTION"]}
                                    },
                                },
                            ]
                        },
                    ),
                    **_errors(*_GATEWAY),
                },
                description=managing
                + " Read-only: overrides are set by the API provider (the provider API).",
            )
        },
        "/v1/keys": {
            "get": _op(
                "The org's keys of the caller's environment",
                "keys",
                {
                    "200": _response("Newest first; never a secret.", ref("Keys")),
                    **_errors(*_GATEWAY),
                },
                description=managing,
            ),
            "post": _op(
                "Create a key",
                "keys",
                {
                    "201": _response("The key, with its secret (shown once).", ref("KeyCreated")),
                    **_errors(*with_body),
                },
                body=_optional_body(
                    ref("NewKey"), "Name, role, environment, expiry (none: defaults)."
                ),
                description=managing
                + " A key never creates one with a higher role than its own, nor a "
                "PRODUCTION key when it is a SANDBOX one (403 naming why).",
            ),
        },
        "/v1/keys/{keyId}": {
            "delete": _op(
                "Revoke a key",
                "keys",
                {"200": _response("The key, revoked.", ref("Key")), **_errors(*_GATEWAY, 404)},
                parameters=[key_id],
                description=managing,
            )
        },
        "/v1/keys/{keyId}/rotate": {
            "post": _op(
                "Rotate a key",
                "keys",
                {
                    "201": _response("The new key with its secret (once).", ref("KeyRotated")),
                    **_errors(*with_body, 404, 409),
                },
                parameters=[key_id],
                body=_optional_body(overlap, "The old key's overlap."),
                description=managing + " A revoked or expired key is a 409 CONFLICT.",
            )
        },
        "/v1/webhooks/endpoints": {
            "get": _op(
                "The org's webhook endpoints",
                "webhooks",
                {"200": _response("Oldest first.", ref("WebhookEndpoints")), **_errors(*_GATEWAY)},
                description=managing,
            ),
            "post": _op(
                "Register a webhook endpoint",
                "webhooks",
                {
                    "201": _response(
                        "The endpoint, with its whsec_ secret (shown once).",
                        ref("WebhookEndpointCreated"),
                    ),
                    **_errors(*with_body),
                },
                body=_body(ref("NewWebhookEndpoint"), "The URL and an event-type filter."),
                description=managing + " A private or unresolvable target is a 400.",
            ),
        },
        one: {
            "patch": _op(
                "Enable, disable or filter an endpoint",
                "webhooks",
                {
                    "200": _response("The endpoint.", ref("WebhookEndpoint")),
                    **_errors(*with_body, 404),
                },
                parameters=[endpoint_id],
                body=_optional_body(ref("WebhookEndpointChanges"), "What changes (none: nothing)."),
                description=managing,
            ),
            "delete": _op(
                "Remove an endpoint",
                "webhooks",
                {
                    "200": _response("The endpoint, removed.", ref("WebhookEndpoint")),
                    **_errors(*_GATEWAY, 404),
                },
                parameters=[endpoint_id],
                description=managing + " Its pending deliveries are cancelled.",
            ),
        },
        one + "/rotate-secret": {
            "post": _op(
                "Rotate an endpoint's secret",
                "webhooks",
                {
                    "200": _response(
                        "The endpoint and its new secret.", ref("WebhookEndpointCreated")
                    ),
                    **_errors(*with_body, 404),
                },
                parameters=[endpoint_id],
                body=_optional_body(overlap, "How long the old secret signs too."),
                description=managing
                + " During the overlap webhook-signature carries a signature by each secret.",
            )
        },
        one + "/test": {
            "post": _op(
                "Send a signed ping",
                "webhooks",
                {
                    "200": _response("The delivery after its first attempt.", ref("Delivery")),
                    **_errors(*_GATEWAY_BODY, 404, 409),
                },
                parameters=[endpoint_id],
                description=managing + " A disabled endpoint is a 409 (CONFLICT).",
            )
        },
        "/v1/webhooks/deliveries/{deliveryId}/replay": {
            "post": _op(
                "Send a delivery again",
                "webhooks",
                {
                    "200": _response(
                        "A new delivery (same webhook-id and body) after its first attempt.",
                        ref("Delivery"),
                    ),
                    **_errors(*_GATEWAY_BODY, 404, 409),
                },
                parameters=[_path("deliveryId", "The delivery (dlv_…).", _ID)],
                description=managing + " A disabled endpoint is a 409 (CONFLICT).",
            )
        },
    }


# ---- the platform routes ----------------------------------------------------------------------


def _stamps() -> list[Schema]:
    return [
        _query("start_timestamp", _STAMP, "Start, epoch seconds."),
        _query("end_timestamp", _STAMP, "End, epoch seconds."),
    ]


def _platform_overlays() -> dict[str, dict[str, Schema]]:
    events_body = {
        "oneOf": [
            {"type": "array", "maxItems": 1000, "items": ref("Event")},
            {
                "type": "object",
                "required": ["events"],
                "properties": {
                    "events": {"type": "array", "maxItems": 1000, "items": ref("Event")}
                },
            },
        ]
    }
    counts = {"200": _response("Counts.", ref("CallCounts")), **_errors(*_GATEWAY, 404)}
    return {
        "/v1/events": {
            "post": _op(
                "Store product events",
                "analytics",
                {
                    "200": _response("What was stored.", ref("EventsIngested")),
                    **_errors(*_GATEWAY_BODY, 422),
                },
                body=_body(events_body, 'A JSON array of events, or {"events": [...]}.'),
                operation_id="post_events_v1_events_post",
                description="Store product events (idempotent per org and event id).",
            )
        },
        "/call-counts/historical/": {
            "get": _op(
                "Call counts over time",
                "analytics",
                counts,
                parameters=_stamps(),
                description="Roles root and manager.",
                operation_id="historical_call_counts_historical__get",
            )
        },
        "/call-counts/historical/{label}/": {
            "get": _op(
                "Call counts per series of a label",
                "analytics",
                {
                    "200": _response("One page of series.", ref("CallCountsByLabel")),
                    **_errors(*_GATEWAY, 404),
                },
                parameters=[
                    _path("label", "The label.", {"enum": list(LABELS)}),
                    *_stamps(),
                    _query(
                        "amt",
                        {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_AMT,
                            "default": DEFAULT_AMT,
                        },
                        "Series per page.",
                    ),
                    _query("cursor", CURSOR.schema(), "next_cursor of the previous page."),
                ],
                description="Roles root and manager.",
                operation_id="by_label_call_counts_historical__label___get",
            )
        },
        "/call-counts/historical/SCENARIOS/{reco_type}/{name}/": {
            "get": _op(
                "Call counts of one scenario",
                "analytics",
                counts,
                parameters=[
                    _path("reco_type", "Recommendation type.", LABEL_VALUE.schema()),
                    _path("name", "Scenario name.", LABEL_VALUE.schema()),
                    *_stamps(),
                ],
                description="Roles root, manager and backend.",
                operation_id="by_scenario_call_counts_historical_SCENARIOS__reco_type___name___get",
            )
        },
        "/v1/analytics/fair-use": {
            "get": _op(
                "Fair-use signals",
                "analytics",
                {
                    "200": _response("Every signal of the policy.", ref("FairUse")),
                    **_errors(*_GATEWAY, 422),
                },
                parameters=[
                    _query(
                        "timeRange",
                        {"enum": list(TIME_RANGES)},
                        "Lookback window, ending now.",
                        required=True,
                    )
                ],
                description="The caller's org and environment; errors in the envelope.",
            )
        },
        "/v1/analytics/{metric}": {
            "get": _op(
                "One metric of the analytics catalogue",
                "analytics",
                {
                    "200": _response("The metric.", ref("AnalyticsResponse")),
                    **_errors(*_GATEWAY, 404, 422, detail=True),
                },
                parameters=[
                    _path("metric", "A metric of the catalogue.", {"enum": sorted(CATALOGUE)}),
                    _query(
                        "time_start",
                        {"type": "string", "format": "date-time"},
                        "Start, ISO 8601 with a timezone offset; before time_end.",
                        required=True,
                    ),
                    _query(
                        "time_end",
                        {"type": "string", "format": "date-time"},
                        "End, ISO 8601 with a timezone offset.",
                        required=True,
                    ),
                    _query(
                        "page",
                        {"type": "integer", "minimum": 1, "maximum": 2**31 - 1, "default": 1},
                        "1-based page.",
                    ),
                    _query(
                        "page_size",
                        {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
                        "Items per page.",
                    ),
                ],
                description=(
                    'Errors as {"detail": "…"}, and 422 as detail[]. api_calls_by_status_class '
                    "is a barchart whose values per bucket are 2xx, 3xx, 4xx, 5xx and unknown "
                    "(calls metered with status 0: forward-auth calls whose access-log line "
                    "never came)."
                ),
                operation_id="analytics_v1_analytics__metric__get",
            )
        },
    }


# ---- the bundled example upstream -----------------------------------------------------------


def _example_paths() -> dict[str, dict[str, Schema]]:
    job = _path("jobId", "The job posting's id.", POSTING_ID.schema())
    criterion = _path("criterionId", "The criterion's id.", CRITERION_ID.schema())
    read = {**_errors(*_GATEWAY, 404, 405, 422)}
    write = {**_errors(*_GATEWAY_BODY, 404, 405, 422)}
    no_content = {"description": "Done.", "headers": limit_headers()}
    criteria = _response("The job's criteria.", ref("JobCriteria"))
    new = _body(ref("NewCriterion"), "A criterion added by hand.")
    added = _response("The new criterion.", ref("Criterion"))
    return {
        "/v1/criteria/generate": {
            "post": _op(
                "Generate criteria for a job posting",
                "example",
                {"200": _response("Criteria.", ref("GeneratedCriteria")), **write},
                body=_body(ref("JobPosting"), "The posting."),
            )
        },
        "/v1/criteria/questions": {
            "post": _op(
                "Generate interview questions",
                "example",
                {"200": _response("Questions.", ref("GeneratedQuestions")), **write},
                body=_body(ref("JobPosting"), "The posting."),
            )
        },
        "/v1/jobs/{jobId}/criteria": {
            "get": _op("A job's criteria", "example", {"200": criteria, **read}, parameters=[job]),
            "post": _op(
                "Add a criterion", "example", {"201": added, **write}, parameters=[job], body=new
            ),
            "patch": _op(
                "Change criteria",
                "example",
                {"200": criteria, **write},
                parameters=[job],
                body=_body(ref("CriteriaPatch"), "Changes by criterion id."),
            ),
        },
        "/v1/jobs/{jobId}/criteria/archive": {
            "post": _op(
                "Archive a job's criteria",
                "example",
                {"200": _response("Archived.", ref("Archived")), **write},
                parameters=[job],
            )
        },
        "/v1/criteria/{jobId}": {
            "get": _op("A job's criteria", "example", {"200": criteria, **read}, parameters=[job]),
            "post": _op(
                "Add a criterion", "example", {"201": added, **write}, parameters=[job], body=new
            ),
            "delete": _op(
                "Delete a job's criteria", "example", {"204": no_content, **read}, parameters=[job]
            ),
        },
        "/v1/criteria/{jobId}/{criterionId}": {
            "patch": _op(
                "Change a criterion",
                "example",
                {"200": _response("The criterion.", ref("Criterion")), **write},
                parameters=[job, criterion],
                body=_body(ref("CriterionChanges"), "The fields to change."),
            ),
            "delete": _op(
                "Delete a criterion",
                "example",
                {"204": no_content, **read},
                parameters=[job, criterion],
            ),
        },
    }


# ---- assembly ---------------------------------------------------------------------------------


_OPS_PATHS: Final = ("/healthz", "/readyz", "/metrics")
#: The group of each of tollhouse's own API paths (``[platform] prefix`` and ``disable``).
_GROUP_OF: Final = (
    ("/v1/events", "events"),
    ("/call-counts/", "call-counts"),
    ("/v1/analytics/", "analytics"),
    ("/v1/queue", "queue"),
    ("/v1/webhooks/", "webhooks"),
    ("/v1/keys", "keys"),
    ("/v1/rate-limit/status", "rate-limit-status"),
    ("/v1/limits", "rate-limit-status"),
    ("/v1/platform/authorize", "forward-auth"),
    (OPENAPI_PATH, "openapi"),
    ("/v1/admin/", "admin"),
)


def _platform_group(path: str) -> str | None:
    for start, group in _GROUP_OF:
        if path.startswith(start):
            return group
    return None


def _tenant_header(policy: Policy, paths: dict[str, dict[str, Schema]]) -> None:
    """Document X-Tenant-Id on every operation; required where the policy says so."""
    router = Router(policy)
    for path, item in paths.items():
        for method, op in item.items():
            if method not in _HTTP_METHODS or not op.get("security", True):
                continue
            if op.get("tags") == ["admin"]:
                continue  # the provider's, not an org's: no tenant
            required = router.match(method.upper(), path).tenant_required
            if path == "/v1/rate-limit/status":
                required = False
            op.setdefault("parameters", []).append(
                {
                    "name": "X-Tenant-Id",
                    "in": "header",
                    "required": required,
                    "description": "Your end customer"
                    + (" (required here)." if required else " (optional here)."),
                    "schema": TENANT.schema(),
                }
            )


def build_document(
    policy: Policy | None,
    *,
    example_upstream: bool = False,
    ops: bool = True,
) -> dict[str, Any]:
    """The full OpenAPI 3.1 document.

    Args:
        policy: the running policy (async routes, tenant rules, ``[platform]``); None
            documents only the platform, status and health routes.
        example_upstream: document the bundled example upstream's routes too.
        ops: the operations endpoints answer on this listener (not on ``--ops-port``).

    Returns:
        A new dict, JSON-serialisable.
    """
    doc: dict[str, Any] = {"openapi": "3.1.0"}
    doc["info"] = {
        "title": "tollhouse",
        "version": "0.1.0",
        "description": (
            "API keys, rate limits, async jobs with webhooks and usage analytics in front "
            "of an HTTP API. Send the key as `Authorization: Bearer sk_…` or `X-API-Key`."
        ),
    }
    paths: dict[str, dict[str, Schema]] = doc.setdefault("paths", {})
    paths.update(_platform_overlays())
    paths.update(_portal_paths())
    for path, item in _gateway_paths().items():
        if ops or not path.startswith(_OPS_PATHS):
            paths[path] = item
    paths[OPENAPI_PATH] = {
        "get": {
            "summary": "This document",
            "tags": ["operations"],
            "security": [],
            "description": "Served without a key, so generators can fetch it by URL.",
            "responses": {
                "200": {
                    "description": "OpenAPI 3.1.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    }
    paths.update(admin_paths(policy))
    platform = policy.platform if policy is not None else None
    if platform is not None and (platform.prefix or platform.disable):
        moved: dict[str, dict[str, Schema]] = {}
        for path, item in paths.items():
            group = _platform_group(path)
            if group is None:
                moved[path] = item
            elif group not in platform.disable:
                moved[platform.prefix + path] = item
        doc["paths"] = paths = moved
    if policy is not None:
        for path, item in _job_paths(policy).items():
            paths[path] = item
        if example_upstream:
            for path, item in _example_paths().items():
                paths.setdefault(path, item)
        _tenant_header(policy, paths)
    for path, item in paths.items():
        for method, op in item.items():
            if method not in _HTTP_METHODS:
                continue
            for parameter in op.get("parameters", ()):
                if parameter.get("in") == "path":
                    parameter["schema"] = path_segment(parameter["schema"])
            if "operationId" not in op:
                # e.g. get_v1_score_scoringJobId: unique, stable, usable as a function name.
                words = re.findall(r"[A-Za-z0-9]+", path)
                op["operationId"] = "_".join([method, *words])
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {}).update(copy.deepcopy(SCHEMAS))
    components["schemas"].update(copy.deepcopy(ADMIN_SCHEMAS))
    components["responses"] = {**copy.deepcopy(RESPONSES), **copy.deepcopy(ADMIN_RESPONSES)}
    components["headers"] = copy.deepcopy(HEADERS)
    components["securitySchemes"] = {
        **copy.deepcopy(SECURITY_SCHEMES),
        "adminToken": copy.deepcopy(ADMIN_SECURITY_SCHEME),
    }
    doc["security"] = copy.deepcopy(SECURITY)
    return doc


def query_parameters(document: dict[str, Any]) -> dict[tuple[str, str], frozenset[str]]:
    """``(METHOD, path template) → the query parameters it takes``, for every operation of
    ``document``: the gateway refuses any other on tollhouse's own routes (400 naming it),
    so the document's parameter lists are exactly what is accepted."""
    found: dict[tuple[str, str], frozenset[str]] = {}
    for path, item in document["paths"].items():
        for method, op in item.items():
            if method in _HTTP_METHODS:
                names = {p["name"] for p in op.get("parameters", ()) if p.get("in") == "query"}
                found[(method.upper(), path)] = frozenset(names)
    return found


__all__ = ["OPENAPI_PATH", "build_document", "query_parameters"]
