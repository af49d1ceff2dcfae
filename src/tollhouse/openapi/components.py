"""The reusable parts of tollhouse's OpenAPI document, as data: schemas, headers,
responses and security schemes.

Shapes are those of the APIs tollhouse reproduces (docs/api-shapes.md): the scoring API
shape's error envelope and rate-limit categories, the partner rate-limit status shape's
buckets and pools, the scoring-volume shape, the call-counts shape, and the metrics
catalogue shape's ``{"detail": …}`` errors and ``AnalyticsResponse``. Every schema here is
checked against the real server by the fuzz tests (``tests/fuzz/``).
"""

from __future__ import annotations

from typing import Any, Final

from tollhouse.analytics.events import EVENT_TYPES, FIELDS, MAX_STORED
from tollhouse.identifiers import (
    APPLICATION_ID,
    CRITERION_ID,
    EVENT_ID,
    EVENT_TYPE,
    POSTING_ID,
    free_text,
)
from tollhouse.jobs.volume import TIME_RANGES
from tollhouse.policy.model import FAIR_USE_SIGNALS

Schema = dict[str, Any]

REF = "#/components/schemas/"


def ref(name: str) -> Schema:
    """A ``$ref`` to ``components.schemas[name]``."""
    return {"$ref": REF + name}


def nullable(schema: Schema) -> Schema:
    """``schema`` or ``null`` (OpenAPI 3.1 / JSON Schema 2020-12 spelling)."""
    return {"anyOf": [schema, {"type": "null"}]}


_STRING: Final[Schema] = {"type": "string"}
_INT: Final[Schema] = {"type": "integer"}
_COUNT: Final[Schema] = {"type": "integer", "minimum": 0}
_NUMBER: Final[Schema] = {"type": "number"}
#: A criterion's weight as sent; null is the same as leaving it out.
_REQUEST_WEIGHT: Final[Schema] = nullable({"type": "number", "exclusiveMinimum": 0, "maximum": 1})
#: ``estimatedWaitSeconds``: null while no worker is running (docs/jobs.md).
_WAIT: Final[Schema] = {
    **nullable({"type": "number", "minimum": 0}),
    "description": "Seconds until the job starts; null while no worker is running.",
}
#: UTC ISO 8601 with ``Z`` (``2026-03-01T00:00:00.000Z``).
_TIME: Final[Schema] = {"type": "string", "format": "date-time"}
#: A webhook endpoint's event-type filter: null sends every type.
_EVENT_TYPES: Final[Schema] = {
    **nullable(
        {
            "type": "array",
            "minItems": 1,
            "maxItems": 20,
            "items": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
        }
    ),
    "description": "Only these event types (e.g. score.completed); null: every type.",
}


_NO_NUL: Final = "^[^\\x00]*$"


def _event_field(name: str) -> Schema:
    field = FIELDS[name]
    if field.kind == "str":
        return field.rule.schema()
    if field.kind == "bool":
        return {"type": "boolean"}
    # Stored as round(value × scale) in a 64-bit column (analytics.events.MAX_STORED).
    most = MAX_STORED // field.scale
    return {"type": "integer" if field.kind == "int" else "number", "minimum": 0, "maximum": most}


def _event_schema() -> Schema:
    """A product event, exactly as ``POST /v1/events`` checks it: the known types' fields
    typed (required ones required; null is absent), the rest of ``data`` any JSON without
    NUL."""
    typed = []
    for name, kind in sorted(EVENT_TYPES.items()):
        properties: dict[str, Schema] = {}
        required = []
        for field, rule in kind.fields.items():
            schema = _event_field(field)
            if rule.choices is not None:
                schema = {"enum": list(rule.choices)}
            if rule.required:
                required.append(field)
            else:
                schema = nullable(schema)
            properties[field] = schema
        data: Schema = {"type": "object", "properties": properties, "required": required}
        then: Schema = {"properties": {"data": data if required else nullable(data)}}
        if required:
            then["required"] = ["data"]
        typed.append({"if": {"properties": {"type": {"const": name}}}, "then": then})
    return {
        "description": "A product event; unknown types and data fields are kept.",
        "type": "object",
        "required": ["id", "type", "time"],
        "properties": {
            "id": EVENT_ID.schema(),
            "type": EVENT_TYPE.schema(),
            "time": {
                "description": "ISO 8601 with a timezone offset, or seconds since the epoch "
                "(years 1 to 9999); at most a day in the future (422).",
                "anyOf": [
                    _TIME,
                    {"type": "number", "minimum": -62_135_596_800, "maximum": 253_402_300_799},
                ],
            },
            "data": {
                "description": "Free-form; the fields the analytics catalogue reads for the "
                "known types are typed.",
                "anyOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "propertyNames": {"pattern": _NO_NUL},
                        "additionalProperties": ref("EventValue"),
                    },
                ],
            },
        },
        "allOf": typed,
    }


def _object(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }


SCHEMAS: Final[dict[str, Schema]] = {
    # ---- errors ------------------------------------------------------------------------
    "ErrorEnvelope": {
        "description": "The error envelope: every tollhouse error but the analytics catalogue's.",
        **_object({"error": ref("Error")}),
    },
    "Error": _object(
        {
            "type": {"type": "string", "format": "uri"},
            "code": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "message": _STRING,
            "requestId": {"type": "string", "pattern": "^req_"},
        }
    ),
    "DetailError": {
        "description": 'The analytics catalogue\'s error body: {"detail": "…"}.',
        **_object({"detail": _STRING}),
    },
    "ValidationDetail": {
        "description": "The analytics catalogue's 422: pydantic-v1-style validation errors.",
        **_object(
            {
                "detail": {
                    "type": "array",
                    "items": _object(
                        {
                            "loc": {
                                "type": "array",
                                "items": {"anyOf": [_STRING, _INT]},
                            },
                            "msg": _STRING,
                            "type": _STRING,
                        }
                    ),
                }
            }
        ),
    },
    # ---- health and rate-limit status --------------------------------------------------
    "Health": _object({"status": {"const": "ok"}}, {"service": _STRING}),
    "Readiness": _object(
        {
            "status": {"enum": ["ready", "unavailable"]},
            "checks": _object(
                {
                    "database": {"enum": ["ok", "unavailable"]},
                    "limits": {"enum": ["ok", "degraded"]},
                }
            ),
        }
    ),
    "RateLimitCategory": {
        "description": "One bucket as a category.",
        **_object(
            {
                "category": _STRING,
                "displayName": _STRING,
                "endpoints": {"type": "array", "items": _STRING},
                "limit": _COUNT,
                "used": _COUNT,
                "remaining": _COUNT,
                "resetAt": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Unix time the window resets (0 if no request yet).",
                },
                "windowSeconds": {"type": "integer", "minimum": 1},
            },
            {"shadow": {"type": "boolean"}, "shadowDenied": _COUNT},
        ),
    },
    "RateLimitBucket": {
        "description": "One bucket.",
        **_object(
            {
                "limit": _COUNT,
                "remaining": _COUNT,
                "resetAt": _COUNT,
                "resetInSeconds": _COUNT,
            },
            {"shadow": {"type": "boolean"}, "shadowDenied": _COUNT},
        ),
    },
    "PoolStatus": {
        "description": "One in-flight pool (e.g. criteria_ai_inflight).",
        **_object({"limit": _COUNT, "active": _COUNT, "retryAfterSeconds": _COUNT}),
    },
    "RateLimitStatus": {
        "description": (
            "Per-second buckets and pools (partnerId, buckets) and per-minute categories "
            "(categories) in one body; each in-flight pool is a top-level member named after "
            "the pool."
        ),
        "type": "object",
        "required": [
            "partnerId",
            "environment",
            "generatedAt",
            "degraded",
            "buckets",
            "categories",
            "timestamp",
        ],
        "properties": {
            "partnerId": _STRING,
            "environment": {"enum": ["SANDBOX", "PRODUCTION"]},
            "generatedAt": _TIME,
            "degraded": {"type": "boolean"},
            "buckets": {"type": "object", "additionalProperties": ref("RateLimitBucket")},
            "categories": {"type": "array", "items": ref("RateLimitCategory")},
            "timestamp": _TIME,
        },
        "additionalProperties": ref("PoolStatus"),
    },
    # ---- jobs (the scoring API shape) --------------------------------------------------
    "JobError": {
        "description": "Why a job failed (or its last attempt did).",
        "type": "object",
        "required": ["code", "message"],
        "properties": {"code": _STRING, "message": _STRING},
    },
    "Accepted": {
        "description": "The 202 of an async route.",
        **_object(
            {
                "scoringJobId": _STRING,
                "status": {"const": "queued"},
                "queuePosition": _COUNT,
                "estimatedWaitSeconds": _WAIT,
            }
        ),
    },
    "Job": {
        "description": (
            "A job as polled (and as webhooks carry it): queued jobs carry their position "
            "and wait, completed ones the handler's result, failed ones an error."
        ),
        **_object(
            {
                "scoringJobId": _STRING,
                "status": {"enum": ["queued", "running", "completed", "failed"]},
                "attempts": _COUNT,
                "createdAt": _TIME,
            },
            {
                "applicationId": _STRING,
                "jobId": _STRING,
                "startedAt": _TIME,
                "queuePosition": _COUNT,
                "estimatedWaitSeconds": _WAIT,
                "nextAttemptAt": _TIME,
                "lastError": ref("JobError"),
                "completedAt": _TIME,
                "result": {"type": "object"},
                "failedAt": _TIME,
                "error": ref("JobError"),
            },
        ),
    },
    "BatchAccepted": {
        "description": "The 202 of a batch: one result per item, in order.",
        **_object(
            {
                "results": {
                    "type": "array",
                    "items": {
                        "oneOf": [
                            {
                                **_object(
                                    {
                                        "index": _COUNT,
                                        "scoringJobId": _STRING,
                                        "status": {"const": "queued"},
                                        "queuePosition": _COUNT,
                                        "estimatedWaitSeconds": _WAIT,
                                    }
                                )
                            },
                            _object(
                                {
                                    "index": _COUNT,
                                    "status": {"const": "error"},
                                    "error": ref("Error"),
                                }
                            ),
                        ]
                    },
                },
                "accepted": _COUNT,
                "rejected": _COUNT,
            }
        ),
    },
    "JobStatuses": {
        "description": "Many jobs' status (GET /v1/score?ids=): the jobs found, in the order "
        "asked, and the ids the caller has no job of.",
        **_object(
            {
                "data": {"type": "array", "maxItems": 100, "items": ref("Job")},
                "notFound": {"type": "array", "maxItems": 100, "items": _STRING},
            }
        ),
    },
    "QueuePage": {
        "description": "The caller's queue and one page of its jobs, newest first.",
        **_object(
            {
                "queue": _object(
                    {
                        "queued": _COUNT,
                        "running": _COUNT,
                        "cap": _COUNT,
                        "meanProcessingSeconds": nullable({"type": "number", "minimum": 0}),
                        "estimatedWaitSeconds": _WAIT,
                    }
                ),
                "data": {"type": "array", "items": ref("Job")},
                "hasMore": {"type": "boolean"},
                "nextCursor": nullable(_STRING),
            }
        ),
    },
    "Delivery": {
        "description": "One event's delivery to one endpoint, with its attempts.",
        **_object(
            {
                "id": _STRING,
                "messageId": _STRING,
                "endpointId": _STRING,
                "url": _STRING,
                "jobId": nullable(_STRING),
                "eventType": _STRING,
                "status": _STRING,
                "createdAt": _TIME,
                "nextAttemptAt": nullable(_TIME),
                "finishedAt": nullable(_TIME),
                "attempts": {
                    "type": "array",
                    "items": _object(
                        {
                            "attempt": {"type": "integer", "minimum": 1},
                            "at": _TIME,
                            "statusCode": nullable(_INT),
                            "durationMs": {"type": "number", "minimum": 0},
                            "error": nullable(_STRING),
                        },
                        {"responseBody": nullable(_STRING)},
                    ),
                },
            }
        ),
    },
    "Deliveries": {
        "description": "The caller's webhook deliveries and their attempts, newest first.",
        **_object({"data": {"type": "array", "items": ref("Delivery")}}),
    },
    # ---- the self-serve API: keys and webhook endpoints -------------------------------
    "Key": {
        "description": "An API key of the caller's org (never its secret).",
        **_object(
            {
                "id": _STRING,
                "name": _STRING,
                "role": {"enum": ["root", "manager", "backend", "member"]},
                "environment": {"enum": ["SANDBOX", "PRODUCTION"]},
                "prefix": _STRING,
                "status": {"enum": ["active", "revoked", "expired"]},
                "createdAt": _TIME,
                "expiresAt": nullable(_TIME),
                "revokedAt": nullable(_TIME),
                "lastUsedAt": {
                    **nullable(_TIME),
                    "description": "Start of the latest minute (hour, day) with a call.",
                },
            }
        ),
    },
    "KeyCreated": {
        "description": "A new key: its secret is shown this once.",
        "allOf": [ref("Key"), _object({"secret": _STRING})],
    },
    "KeyRotated": {
        "description": "The new key (its secret once) and the key it replaces.",
        "allOf": [ref("KeyCreated"), _object({"replaces": ref("Key")})],
    },
    "Keys": _object({"data": {"type": "array", "items": ref("Key")}}),
    "NewKey": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "maxLength": 200},
            "role": {"enum": ["root", "manager", "backend", "member"], "default": "member"},
            "environment": {
                "enum": ["SANDBOX", "PRODUCTION"],
                "description": "Default: the caller's.",
            },
            "expiresAt": {**nullable(_TIME), "description": "In the future; null: never."},
        },
    },
    "WebhookEndpoint": {
        "description": "A URL the org receives its environment's events at.",
        **_object(
            {
                "id": _STRING,
                "url": _STRING,
                "environment": {"enum": ["SANDBOX", "PRODUCTION"]},
                "enabled": {"type": "boolean"},
                "disabledReason": nullable(_STRING),
                "eventTypes": nullable({"type": "array", "items": _STRING}),
                "createdAt": _TIME,
                "previousSecretExpiresAt": {
                    **nullable(_TIME),
                    "description": "After a rotation: until when the old secret signs too.",
                },
            }
        ),
    },
    "WebhookEndpointCreated": {
        "description": "The endpoint and its whsec_ secret, shown this once.",
        "allOf": [ref("WebhookEndpoint"), _object({"secret": _STRING})],
    },
    "WebhookEndpoints": _object({"data": {"type": "array", "items": ref("WebhookEndpoint")}}),
    "NewWebhookEndpoint": {
        "type": "object",
        "additionalProperties": False,
        "required": ["url"],
        "properties": {
            "url": {
                "type": "string",
                "minLength": 1,
                "maxLength": 2048,
                # An absolute http(s) URL with a host (and a port of up to 4 digits).
                "pattern": r"^https?://[A-Za-z0-9.-]+(?::[0-9]{1,4})?(?:/[\x21-\x7e]*)?$",
                "description": "Where deliveries go. Unless the policy allows private "
                "targets, a host resolving to a loopback, private or link-local address is "
                "refused (400).",
            },
            "eventTypes": _EVENT_TYPES,
        },
    },
    "WebhookEndpointChanges": {
        "type": "object",
        "additionalProperties": False,
        # enabled: null leaves it as it is.
        "properties": {"enabled": nullable({"type": "boolean"}), "eventTypes": _EVENT_TYPES},
    },
    "ScoringVolume": {
        "description": "Finished jobs per time bucket.",
        **_object(
            {
                "period": _object({"start": _TIME, "end": _TIME}),
                "granularity": {"enum": ["minute", "hour", "day"]},
                "data": {
                    "type": "array",
                    "items": _object(
                        {
                            "timestamp": _TIME,
                            "total": _COUNT,
                            "completed": _COUNT,
                            "failed": _COUNT,
                        }
                    ),
                },
            }
        ),
    },
    "FairUse": {
        "description": "The caller's fair-use signals over the range (docs/analytics.md).",
        **_object(
            {
                "timeRange": {"enum": list(TIME_RANGES)},
                "period": _object({"start": _TIME, "end": _TIME}),
                "environment": {"enum": ["SANDBOX", "PRODUCTION"]},
                "signals": {"type": "array", "items": ref("FairUseSignal")},
            }
        ),
    },
    "FairUseSignal": {
        "description": "One signal: ok, watch (above half the threshold) or flagged.",
        **_object(
            {
                "signal": {"enum": list(FAIR_USE_SIGNALS)},
                "value": _NUMBER,
                "threshold": _NUMBER,
                "status": {"enum": ["ok", "watch", "flagged"]},
                "action": {"enum": ["flag", "throttle"]},
                "involved": {
                    "type": "array",
                    "description": "The jobIds or key ids involved, most first (at most 20).",
                    "items": _object({"id": {"type": "string"}, "count": _NUMBER}),
                },
                "involvedCount": _COUNT,
                "firstSeen": nullable(_TIME),
                "lastSeen": nullable(_TIME),
                "detail": {"type": "object", "description": "What the value was computed from."},
            }
        ),
    },
    # ---- usage analytics (the call-counts and metrics catalogue shapes) ----------------
    "EventsIngested": _object({"received": _COUNT, "inserted": _COUNT, "duplicates": _COUNT}),
    "Event": _event_schema(),
    "EventValue": {
        "description": "Any JSON value without NUL (\\u0000) in a string or a key.",
        "x-json-value": True,
        "anyOf": [
            {"type": ["null", "boolean", "number"]},
            {"type": "string", "pattern": _NO_NUL},
            {"type": "array", "items": ref("EventValue")},
            {
                "type": "object",
                "propertyNames": {"pattern": _NO_NUL},
                "additionalProperties": ref("EventValue"),
            },
        ],
    },
    "CallCounts": {
        "description": "Call counts of the org (or one scenario) over time.",
        **_object(
            {
                "timestamps": {"type": "array", "items": _NUMBER},
                "counts": {"type": "array", "items": _NUMBER},
            },
            {"warnings": {"type": "array", "items": _STRING}},
        ),
    },
    "CallCountsByLabel": {
        "description": "Call counts: one page of series of a label.",
        **_object(
            {
                "timestamps": {"type": "array", "items": _NUMBER},
                "series": {
                    "type": "array",
                    "items": _object(
                        {
                            "key": _STRING,
                            "description": _STRING,
                            "extra_data": {"type": "object"},
                            "counts": {"type": "array", "items": _NUMBER},
                        }
                    ),
                },
                "has_next": {"type": "boolean"},
                "next_cursor": nullable(_STRING),
            },
            {"warnings": {"type": "array", "items": _STRING}},
        ),
    },
    "AnalyticsResponse": {
        "description": "An AnalyticsResponse: the value's shape follows the type.",
        "oneOf": [
            ref("AnalyticsSimple"),
            ref("AnalyticsBarchart"),
            ref("AnalyticsTable"),
            ref("AnalyticsPage"),
            ref("AnalyticsEmpty"),
        ],
    },
    "AnalyticsSimple": _object(
        {
            "type": {"const": "simple"},
            "value": _object(
                {
                    "value": {"type": ["number", "string", "null"]},
                    "prefix": nullable(_STRING),
                    "suffix": nullable(_STRING),
                }
            ),
        }
    ),
    "AnalyticsBarchart": _object(
        {
            "type": {"const": "barchart"},
            "value": _object(
                {
                    "values": {
                        "type": "array",
                        "items": _object(
                            {
                                "name": _STRING,
                                "values": {
                                    "type": "object",
                                    "additionalProperties": {"type": ["number", "null"]},
                                },
                                "value_mapping": nullable({"type": "object"}),
                            }
                        ),
                    }
                }
            ),
        }
    ),
    "AnalyticsTable": _object(
        {
            "type": {"enum": ["table", "horizontal-barchart"]},
            "value": _object(
                {
                    "headings": {"type": "array", "items": _STRING},
                    "rows": {"type": "array", "items": {"type": "object"}},
                    "prefixes": nullable({"type": "object"}),
                    "suffixes": nullable({"type": "object"}),
                }
            ),
        }
    ),
    "AnalyticsPage": {
        "description": "A paginated table (api_calls_log).",
        **_object(
            {
                "type": {"const": "table"},
                "value": _object(
                    {
                        "headings": {"type": "array", "items": _STRING},
                        "items": {"type": "array", "items": {"type": "object"}},
                        "total": _COUNT,
                        "pages": _COUNT,
                        "size": {"type": "integer", "minimum": 1},
                        "page": {"type": "integer", "minimum": 1},
                    }
                ),
            }
        ),
    },
    "AnalyticsEmpty": _object(
        {"type": {"const": "empty"}, "value": {"type": "object", "maxProperties": 0}}
    ),
    # ---- the bundled example upstream (the scoring API shape's criteria and scores) -----
    "JobPosting": {
        "type": "object",
        "required": ["jobId", "title", "description"],
        "properties": {
            "jobId": POSTING_ID.schema(),
            "title": free_text(500, required=True),
            "description": free_text(100_000, required=True),
        },
    },
    "Criterion": _object(
        {
            "id": _STRING,
            "name": _STRING,
            "description": _STRING,
            "weight": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        }
    ),
    "GeneratedCriteria": _object(
        {"jobId": _STRING, "criteria": {"type": "array", "items": ref("Criterion")}}
    ),
    "GeneratedQuestions": _object(
        {"jobId": _STRING, "questions": {"type": "array", "items": ref("Criterion")}}
    ),
    "JobCriteria": _object(
        {
            "jobId": _STRING,
            "criteria": {"type": "array", "items": ref("Criterion")},
            "archived": {"type": "boolean"},
        }
    ),
    "NewCriterion": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": free_text(200, required=True),
            "description": free_text(5000, required=False),
            "weight": _REQUEST_WEIGHT,
        },
    },
    "CriterionChanges": {
        "type": "object",
        "properties": {
            # null or absent: unchanged; present, not blank.
            "name": {**free_text(200, required=True), "type": ["string", "null"]},
            "description": free_text(5000, required=False),
            "weight": _REQUEST_WEIGHT,
        },
    },
    "CriteriaPatch": {
        "type": "object",
        "required": ["criteria"],
        "properties": {
            "criteria": {
                "type": "array",
                "maxItems": 100,
                "items": {
                    "allOf": [
                        ref("CriterionChanges"),
                        {
                            "type": "object",
                            "required": ["id"],
                            "properties": {"id": CRITERION_ID.schema()},
                        },
                    ]
                },
            }
        },
    },
    "Archived": _object({"jobId": _STRING, "archived": {"const": True}, "archivedAt": _TIME}),
    "ScoreRequest": {
        "type": "object",
        "required": ["applicationId", "jobId", "candidate"],
        "properties": {
            "applicationId": APPLICATION_ID.schema(),
            "jobId": POSTING_ID.schema(),
            "candidate": {
                "type": "object",
                "required": ["name", "resume"],
                "properties": {
                    "name": free_text(200, required=True),
                    "resume": free_text(200_000, required=True),
                },
            },
        },
    },
    "ScoreBatch": {
        "type": "object",
        "required": ["items"],
        "properties": {
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": 100,
                "items": ref("ScoreRequest"),
            }
        },
    },
}

#: Response headers, by name.
HEADERS: Final[dict[str, Schema]] = {
    "X-Request-Id": {
        "description": "The request's id (also in error bodies as requestId).",
        "required": True,
        "schema": {"type": "string", "pattern": "^req_"},
    },
    "X-RateLimit-Limit": {
        "description": "The tightest bucket's limit.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "X-RateLimit-Remaining": {
        "description": "Requests left in the tightest bucket's window.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "X-RateLimit-Reset": {
        "description": "Unix time the tightest bucket's window resets.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "RateLimit-Policy": {
        "description": 'IETF draft: one item per bucket, e.g. `"scoring";q=1000;w=60`.',
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'IETF draft: one item per bucket, e.g. `"scoring";r=847;t=12`.',
        "schema": {"type": "string"},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    },
}


def header(name: str) -> Schema:
    """A ``$ref`` to ``components.headers[name]``."""
    return {"$ref": "#/components/headers/" + name}


def limit_headers() -> dict[str, Schema]:
    """The headers of a response the gateway passed (rate-limit headers when limited)."""
    return {
        name: header(name)
        for name in (
            "X-Request-Id",
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
            "RateLimit-Policy",
            "RateLimit",
        )
    }


def _json(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str, schema: str = "ErrorEnvelope") -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"X-Request-Id": header("X-Request-Id")},
        "content": _json(ref(schema)),
    }


def _limited(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {**limit_headers(), "Retry-After": header("Retry-After")},
        "content": _json(ref(schema)),
    }


#: Reusable responses; the ``Detail…`` ones are the metrics catalogue shape's bodies.
RESPONSES: Final[dict[str, Schema]] = {
    "BadRequest": _error(
        "Bad request (BAD_REQUEST), or X-Tenant-Id missing where required (TENANT_REQUIRED)."
    ),
    "Unauthorized": _error("No API key, or not a valid one (UNAUTHORIZED)."),
    "Forbidden": _error("The key's role may not call this (FORBIDDEN)."),
    "NotFound": _error("Nothing of the caller's org under this id (NOT_FOUND)."),
    "MethodNotAllowed": _error("The path exists, not for this method (METHOD_NOT_ALLOWED)."),
    "Conflict": _error("The resource's state refuses this (CONFLICT)."),
    "PayloadTooLarge": _error("The body exceeds the limit (PAYLOAD_TOO_LARGE)."),
    "ValidationFailed": _error("The body or a parameter is invalid (VALIDATION_FAILED)."),
    "RateLimited": _limited(
        "A bucket (RATE_LIMITED) or in-flight pool (CONCURRENCY_LIMITED) is full; retry "
        "after Retry-After seconds.",
        "ErrorEnvelope",
    ),
    "DetailBadRequest": _error('Bad request: {"detail": "…"}.', "DetailError"),
    "DetailUnauthorized": _error('No valid API key: {"detail": "…"}.', "DetailError"),
    "DetailForbidden": _error('The key\'s role may not call this: {"detail": "…"}.', "DetailError"),
    "DetailNotFound": _error('No such metric: {"detail": "Unknown metric …"}.', "DetailError"),
    "DetailValidation": {
        "description": 'Validation errors: {"detail": [{"loc", "msg", "type"}]}.',
        "content": _json(ref("ValidationDetail")),
    },
    "DetailRateLimited": _limited(
        'Rate limited: {"detail": "Rate limit exceeded"}.', "DetailError"
    ),
}

SECURITY_SCHEMES: Final[dict[str, Schema]] = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer sk_test_…` (SANDBOX) or `sk_live_…` (PRODUCTION).",
    },
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "The same key as `X-API-Key: sk_…`.",
    },
}
#: Either scheme authenticates.
SECURITY: Final[list[dict[str, list[str]]]] = [{"bearerAuth": []}, {"apiKey": []}]
