"""The provider API's part of the OpenAPI document (``/v1/admin/*``, tag ``admin``).

Its operations are called with an admin token (security scheme ``adminToken``), not an
org's key; they carry no rate-limit headers (no bucket applies to them) and no
``X-Tenant-Id``. See :mod:`tollhouse.http.admin`.
"""

from __future__ import annotations

from typing import Any, Final

from tollhouse.identifiers import CURSOR, SCORING_JOB_ID
from tollhouse.jobs.volume import TIME_RANGES
from tollhouse.keys.model import ROLES
from tollhouse.openapi.components import Schema, header, nullable, ref
from tollhouse.policy.model import Policy
from tollhouse.security.audit import ACTIONS

#: The admin token, as the security requirement of every provider API operation.
ADMIN_SECURITY: Final[list[dict[str, list[str]]]] = [{"adminToken": []}]
ADMIN_SECURITY_SCHEME: Final[Schema] = {
    "type": "http",
    "scheme": "bearer",
    "description": "An admin token: TOLLHOUSE_ADMIN_TOKEN, or one from "
    "`tollhouse admin-tokens create` (`adm_…`). Never an org's key.",
}

_TIME: Final[Schema] = {"type": "string", "format": "date-time"}
#: A name as sent: no NUL; null is the same as "".
_NAME: Final[Schema] = {"type": ["string", "null"], "maxLength": 200, "pattern": "^[^\\x00]*$"}
_ORG_ID: Final[Schema] = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}
_KEY_ID: Final[Schema] = {"type": "string", "pattern": "^key_[0-9a-f]{16}$"}
_ENVIRONMENT: Final[Schema] = {"enum": ["SANDBOX", "PRODUCTION"]}
_LIMIT: Final[Schema] = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}


def _object(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }


def _closed(schema: Schema) -> Schema:
    return {**schema, "additionalProperties": False}


def _page(item: str) -> Schema:
    return _object(
        {
            "data": {"type": "array", "items": ref(item)},
            "hasMore": {"type": "boolean"},
            "nextCursor": nullable({"type": "string"}),
        }
    )


_KEY_FIELDS: Final[dict[str, Schema]] = {
    "id": _KEY_ID,
    "org": _ORG_ID,
    "environment": _ENVIRONMENT,
    "role": {"enum": list(ROLES)},
    "name": _NAME,
    "prefix": {"type": "string"},
    "status": {"enum": ["active", "revoked", "expired"]},
    "createdAt": _TIME,
    "expiresAt": nullable(_TIME),
    "revokedAt": nullable(_TIME),
    "lastUsedAt": nullable(_TIME),
    "meta": nullable({"type": "object"}),
}
#: The override fields of a bucket or a pool in an org's limits (AdminOrgLimits).
_OVERRIDDEN: Final[dict[str, Schema]] = {
    "policyLimit": {"type": "integer"},
    "limit": {"type": "integer"},
    "overridden": {"type": "boolean"},
    "override": nullable(_object({"limit": {"type": "integer"}, "updatedAt": _TIME})),
    "keyOverrides": {
        "type": "array",
        "items": _object({"keyId": _KEY_ID, "limit": {"type": "integer"}, "updatedAt": _TIME}),
    },
}
#: Of a bucket or a pool, in the provider API's answer only (not in an org's own).
_BY_ENVIRONMENT: Final[dict[str, Schema]] = {
    "environmentOverrides": {
        "type": "array",
        "items": _object(
            {"environment": _ENVIRONMENT, "limit": {"type": "integer"}, "updatedAt": _TIME}
        ),
    },
    "byEnvironment": _object(
        {
            env: _object({"limit": {"type": "integer"}, "overridden": {"type": "boolean"}})
            for env in ("SANDBOX", "PRODUCTION")
        }
    ),
}
_SECRET: Final[Schema] = {
    "type": "string",
    "pattern": "^sk_(test|live)_",
    "description": "The secret: shown here once, stored only as a hash.",
}

ADMIN_SCHEMAS: Final[dict[str, Schema]] = {
    "AdminOrg": {
        "description": "An org. `firstKey` only in the answer to a creation that asked for it.",
        **_object(
            {
                "id": _ORG_ID,
                "name": _NAME,
                "createdAt": _TIME,
                "suspended": {"type": "boolean"},
                "suspendedAt": nullable(_TIME),
            },
            {"firstKey": ref("AdminCreatedKey")},
        ),
    },
    "AdminOrgPage": {"description": "Orgs, newest first.", **_page("AdminOrg")},
    "AdminNewKey": {
        "description": "A key to make. expiresAt: ISO 8601 with an offset, in the future; "
        "null or absent: never.",
        **_closed(
            _object(
                {"environment": _ENVIRONMENT},
                {
                    "role": {"enum": list(ROLES), "default": "member"},
                    "name": _NAME,
                    "expiresAt": nullable(_TIME),
                    "meta": {"type": "object", "description": "At most 4096 bytes of JSON."},
                },
            )
        ),
    },
    "AdminNewOrg": {
        "description": "An org to make; with firstKey, its first key in the same "
        "transaction (both or neither).",
        **_closed(
            _object({"id": _ORG_ID}, {"name": _NAME, "firstKey": nullable(ref("AdminNewKey"))})
        ),
    },
    "AdminOrgChanges": {
        "description": "suspended: true refuses every key of the org (403 ORG_SUSPENDED) "
        "within a second; false lets them in again; null or absent: unchanged.",
        **_closed(_object({}, {"name": _NAME, "suspended": nullable({"type": "boolean"})})),
    },
    "AdminKey": {"description": "A key (never its secret).", **_object(_KEY_FIELDS)},
    "AdminCreatedKey": {
        "description": "A key just made, with its secret (`key`) shown once.",
        **_object({**_KEY_FIELDS, "key": _SECRET}),
    },
    "AdminRotatedKey": {
        "description": "The new key with its secret, and the key it replaces as it is now.",
        **_object({**_KEY_FIELDS, "key": _SECRET, "replaces": ref("AdminKey")}),
    },
    "AdminKeyPage": {"description": "An org's keys, newest first.", **_page("AdminKey")},
    "AdminRotation": {
        "description": "overlapSeconds: how long the old key keeps working (default 86400; "
        "0 revokes it at once).",
        **_closed(
            _object({}, {"overlapSeconds": {"type": "integer", "minimum": 0, "maximum": 2592000}})
        ),
    },
    "AdminOrgLimits": {
        "description": "An org's effective limits: each bucket and each in-flight pool with "
        "the policy's limit, the org's override for every environment, its overrides for one "
        "environment and the limit a key of each environment gets (environmentOverrides and "
        "byEnvironment: in the provider API's answer only), its keys' overrides.",
        **_object(
            {
                "org": _ORG_ID,
                "buckets": {
                    "type": "array",
                    "items": _object(
                        {
                            "name": {"type": "string"},
                            "displayName": {"type": "string"},
                            "windowSeconds": {"type": "integer", "minimum": 1},
                            "scope": {"type": "string"},
                            **_OVERRIDDEN,
                            "shadow": {"type": "boolean"},
                        },
                        _BY_ENVIRONMENT,
                    ),
                },
                "pools": {
                    "type": "array",
                    "items": _object({"name": {"type": "string"}, **_OVERRIDDEN}, _BY_ENVIRONMENT),
                },
            }
        ),
    },
    "AdminSecretRotation": {
        "description": "overlapSeconds: how long the old secret signs too (default 86400; "
        "0: the new one alone, at once).",
        **_closed(
            _object({}, {"overlapSeconds": {"type": "integer", "minimum": 0, "maximum": 2592000}})
        ),
    },
    "AdminLimitChange": {
        "description": "The new limit per window; with keyId, for that key of the org only; "
        "with environment (not with keyId: 422), for the org's keys of that environment "
        "only.",
        **_closed(
            _object(
                {"limit": _LIMIT},
                {"keyId": nullable(_KEY_ID), "environment": nullable(_ENVIRONMENT)},
            )
        ),
        # Both present and not null is refused (a null one reads as absent).
        "not": {
            "required": ["keyId", "environment"],
            "properties": {"keyId": {"type": "string"}, "environment": {"type": "string"}},
        },
    },
    "AdminOverride": {
        "description": "An override as stored.",
        **_object(
            {
                "org": _ORG_ID,
                "bucket": {"type": "string"},
                "keyId": nullable(_KEY_ID),
                "environment": nullable(_ENVIRONMENT),
                "limit": _LIMIT,
                "updatedAt": _TIME,
            }
        ),
    },
    "AuditEntry": {
        "description": "One audited change: who (admin token id, key id or cli:<user>), "
        "what, when, from which address. Never a secret.",
        **_object(
            {
                "id": {"type": "string"},
                "at": _TIME,
                "actor": {"type": "string"},
                "action": {"enum": list(ACTIONS)},
                "org": {"type": "string"},
                "targetId": {"type": "string"},
                "details": {"type": "object"},
                "address": nullable({"type": "string"}),
            }
        ),
    },
    "AuditPage": {"description": "Audit entries, newest first.", **_page("AuditEntry")},
    "AdminWebhookEndpoint": {
        "description": "An org's webhook endpoint (never its secret): the self-serve shape "
        "with the org and when it was disabled.",
        "allOf": [
            ref("WebhookEndpoint"),
            _object({"org": _ORG_ID, "disabledAt": nullable(_TIME)}),
        ],
    },
    "AdminWebhookEndpointCreated": {
        "description": "The endpoint and its whsec_ secret, shown this once.",
        "allOf": [ref("AdminWebhookEndpoint"), _object({"secret": {"type": "string"}})],
    },
    "AdminFairUse": {
        "description": "An org's fair-use signals in one environment over the range: "
        "what GET /v1/analytics/fair-use answers the org's own keys, with the org.",
        "allOf": [ref("FairUse"), _object({"org": _ORG_ID})],
    },
    "AdminWebhookEndpoints": _object(
        {"data": {"type": "array", "items": ref("AdminWebhookEndpoint")}}
    ),
}


def _error(description: str) -> Schema:
    return {
        "description": description,
        "headers": {"X-Request-Id": header("X-Request-Id")},
        "content": {"application/json": {"schema": ref("ErrorEnvelope")}},
    }


ADMIN_RESPONSES: Final[dict[str, Schema]] = {
    "AdminBadRequest": _error("Malformed JSON, cursor or query parameter (BAD_REQUEST)."),
    "AdminUnauthorized": _error(
        "No admin token, or an unknown or revoked one (ADMIN_TOKEN_REQUIRED)."
    ),
    "AdminForbidden": _error("An org's API key was sent instead of an admin token (ADMIN_ONLY)."),
    "AdminNotFound": _error(
        "No org, key, bucket, override, webhook endpoint or delivery under this id (NOT_FOUND)."
    ),
    "AdminConflict": _error(
        "The org id is taken, or the key is revoked or expired already (CONFLICT)."
    ),
    "AdminPayloadTooLarge": _error("The body exceeds the limit (PAYLOAD_TOO_LARGE)."),
    "AdminUnsupportedMediaType": _error("The body is not JSON (UNSUPPORTED_MEDIA_TYPE)."),
    "AdminValidationFailed": _error(
        "A field of the body, or the timeRange query parameter, is invalid (VALIDATION_FAILED)."
    ),
}
_CODES: Final = {
    400: "AdminBadRequest",
    401: "AdminUnauthorized",
    403: "AdminForbidden",
    404: "AdminNotFound",
    409: "AdminConflict",
    413: "AdminPayloadTooLarge",
    415: "AdminUnsupportedMediaType",
    422: "AdminValidationFailed",
}
_WRITE: Final = (400, 401, 403, 413, 415, 422)


def _answer(description: str, schema: str | None) -> Schema:
    out: Schema = {"description": description, "headers": {"X-Request-Id": header("X-Request-Id")}}
    if schema is not None:
        out["content"] = {"application/json": {"schema": ref(schema)}}
    return out


def _op(
    summary: str,
    status: int,
    answer: Schema,
    codes: tuple[int, ...],
    *,
    parameters: list[Schema] | None = None,
    body: str | None = None,
    description: str | None = None,
) -> Schema:
    responses: dict[str, Any] = {str(status): answer}
    for code in sorted(set(codes)):
        responses[str(code)] = {"$ref": "#/components/responses/" + _CODES[code]}
    op: Schema = {
        "summary": summary,
        "tags": ["admin"],
        "security": ADMIN_SECURITY,
        "responses": responses,
    }
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {
            "required": body not in _OPTIONAL_BODIES,
            "content": {"application/json": {"schema": ref(body)}},
        }
    return op


#: Bodies that may be left out (every field has a default).
_OPTIONAL_BODIES: Final = ("AdminRotation", "AdminSecretRotation")


def _param(name: str, where: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema,
        "description": description,
    }


def admin_paths(policy: Policy | None) -> dict[str, dict[str, Schema]]:
    """The provider API's paths (the policy's bucket and pool names are the ``{bucket}``
    values)."""
    org = _param("orgId", "path", _ORG_ID, "The org's id.")
    key = _param("keyId", "path", _KEY_ID, "The key's id.")
    names = (
        [b.name for b in policy.buckets] + [p.name for p in policy.pools]
        if policy is not None
        else []
    )
    bucket = _param(
        "bucket",
        "path",
        {"enum": names} if names else {"type": "string"},
        "A bucket or an in-flight pool of the policy.",
    )
    paging = [
        _param(
            "limit",
            "query",
            {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
            "Items per page.",
        ),
        _param("cursor", "query", CURSOR.schema(), "nextCursor of the previous page."),
    ]
    return {
        "/v1/admin/orgs": {
            "post": _op(
                "Make an org (and its first key)",
                201,
                _answer("The org; firstKey with its secret when asked.", "AdminOrg"),
                (*_WRITE, 409),
                body="AdminNewOrg",
            ),
            "get": _op(
                "List orgs",
                200,
                _answer("One page of orgs.", "AdminOrgPage"),
                (400, 401, 403),
                parameters=paging,
            ),
        },
        "/v1/admin/orgs/{orgId}": {
            "get": _op(
                "One org", 200, _answer("The org.", "AdminOrg"), (401, 403, 404), parameters=[org]
            ),
            "patch": _op(
                "Rename, suspend or reinstate an org",
                200,
                _answer("The org as it is now.", "AdminOrg"),
                (*_WRITE, 404),
                parameters=[org],
                body="AdminOrgChanges",
            ),
        },
        "/v1/admin/orgs/{orgId}/keys": {
            "post": _op(
                "Make a key of an org",
                201,
                _answer("The key, with its secret (once).", "AdminCreatedKey"),
                (*_WRITE, 404),
                parameters=[org],
                body="AdminNewKey",
            ),
            "get": _op(
                "List an org's keys",
                200,
                _answer("One page of keys (never a secret), with lastUsedAt.", "AdminKeyPage"),
                (400, 401, 403, 404),
                parameters=[
                    org,
                    *paging,
                    _param("environment", "query", _ENVIRONMENT, "Only this environment's."),
                ],
            ),
        },
        "/v1/admin/orgs/{orgId}/limits": {
            "get": _op(
                "An org's effective limits",
                200,
                _answer("Buckets (overrides marked) and pools.", "AdminOrgLimits"),
                (401, 403, 404),
                parameters=[org],
            ),
        },
        "/v1/admin/orgs/{orgId}/limits/{bucket}": {
            "put": _op(
                "Set an override",
                200,
                _answer("The override; running servers apply it within a second.", "AdminOverride"),
                (*_WRITE, 404),
                parameters=[org, bucket],
                body="AdminLimitChange",
                description="Of a bucket (requests per window) or an in-flight pool "
                "(requests in flight at once). The key's override > the org's for the key's "
                "environment > the org's for every environment > the policy, as "
                "`tollhouse limits set`.",
            ),
            "delete": _op(
                "Clear an override",
                204,
                _answer("Cleared.", None),
                (400, 401, 403, 404),
                parameters=[
                    org,
                    bucket,
                    _param("keyId", "query", _KEY_ID, "The key's override, not the org's."),
                    _param(
                        "environment",
                        "query",
                        _ENVIRONMENT,
                        "The org's override for this environment alone, not the one for "
                        "every environment (not with keyId).",
                    ),
                ],
            ),
        },
        "/v1/admin/orgs/{orgId}/fair-use": {
            "get": _op(
                "An org's fair-use signals",
                200,
                _answer("Every signal of the policy, ok, watch or flagged.", "AdminFairUse"),
                (400, 401, 403, 404, 422),
                parameters=[
                    org,
                    {
                        **_param("environment", "query", _ENVIRONMENT, "The environment."),
                        "required": True,
                    },
                    {
                        **_param(
                            "timeRange",
                            "query",
                            {"enum": list(TIME_RANGES)},
                            "Lookback window, ending now.",
                        ),
                        "required": True,
                    },
                ],
                description="The same answer as GET /v1/analytics/fair-use gives the org's "
                "keys of that environment. A missing or unknown environment is a 400, a "
                "missing or unknown timeRange a 422.",
            ),
        },
        "/v1/admin/keys/{keyId}": {
            "delete": _op(
                "Revoke a key",
                200,
                _answer("The key, revoked; refused within a second.", "AdminKey"),
                (401, 403, 404),
                parameters=[key],
            ),
        },
        "/v1/admin/keys/{keyId}/rotate": {
            "post": _op(
                "Rotate a key",
                201,
                _answer("The new key with its secret, and the old one.", "AdminRotatedKey"),
                (*_WRITE, 404, 409),
                parameters=[key],
                body="AdminRotation",
            ),
        },
        **_webhook_paths(org),
        "/v1/admin/audit": {
            "get": _op(
                "The audit log",
                200,
                _answer("One page of changes.", "AuditPage"),
                (400, 401, 403),
                parameters=[
                    *paging,
                    _param("org", "query", _ORG_ID, "Only this org's changes."),
                    _param("action", "query", {"enum": list(ACTIONS)}, "Only this action."),
                ],
            ),
        },
    }


def _webhook_paths(org: Schema) -> dict[str, dict[str, Schema]]:
    """An org's webhook endpoints and deliveries (:mod:`tollhouse.http.admin_webhooks`)."""
    environment = {
        **_param(
            "environment",
            "query",
            _ENVIRONMENT,
            "The environment whose endpoints and deliveries these are (required).",
        ),
        "required": True,
    }
    endpoint = _param("endpointId", "path", {"type": "string"}, "The endpoint (we_…).")
    delivery = _param("deliveryId", "path", {"type": "string"}, "The delivery (dlv_…).")
    scoped = "Scoped by the org and the environment: another org's or environment's id is a 404."
    hooks = "/v1/admin/orgs/{orgId}/webhooks"
    one = hooks + "/endpoints/{endpointId}"
    return {
        hooks + "/endpoints": {
            "get": _op(
                "An org's webhook endpoints",
                200,
                _answer("Oldest first; never a secret.", "AdminWebhookEndpoints"),
                (400, 401, 403, 404),
                parameters=[org, environment],
            ),
            "post": _op(
                "Register a webhook endpoint for an org",
                201,
                _answer(
                    "The endpoint, with its whsec_ secret (once).", "AdminWebhookEndpointCreated"
                ),
                (*_WRITE, 404),
                parameters=[org, environment],
                body="NewWebhookEndpoint",
                description="The URL goes through the SSRF guard: a private or unresolvable "
                "target is a 400 with the guard's message.",
            ),
        },
        one: {
            "patch": _op(
                "Enable, disable or filter an org's endpoint",
                200,
                _answer("The endpoint.", "AdminWebhookEndpoint"),
                (*_WRITE, 404),
                parameters=[org, endpoint, environment],
                body="WebhookEndpointChanges",
                description=scoped,
            ),
            "delete": _op(
                "Remove an org's endpoint",
                200,
                _answer(
                    "The endpoint, removed; its pending deliveries end.", "AdminWebhookEndpoint"
                ),
                (400, 401, 403, 404),
                parameters=[org, endpoint, environment],
                description=scoped,
            ),
        },
        one + "/rotate-secret": {
            "post": _op(
                "Rotate an endpoint's secret",
                200,
                _answer("The endpoint and its new secret (once).", "AdminWebhookEndpointCreated"),
                (*_WRITE, 404),
                parameters=[org, endpoint, environment],
                body="AdminSecretRotation",
                description=scoped + " The old secret signs too for the overlap.",
            ),
        },
        one + "/test": {
            "post": _op(
                "Send an endpoint a signed ping",
                200,
                _answer("The delivery after its first attempt.", "Delivery"),
                (400, 401, 403, 404),
                parameters=[org, endpoint, environment],
                description=scoped + " A disabled endpoint is a 400.",
            ),
        },
        hooks + "/deliveries": {
            "get": _op(
                "An org's webhook deliveries",
                200,
                _answer("Newest first (the latest 100), with their attempts.", "Deliveries"),
                (400, 401, 403, 404),
                parameters=[
                    org,
                    environment,
                    _param("jobId", "query", SCORING_JOB_ID.schema(), "Only this job's."),
                ],
            ),
        },
        hooks + "/deliveries/{deliveryId}/replay": {
            "post": _op(
                "Send a delivery again",
                200,
                _answer(
                    "A new delivery (same webhook-id and body) after its first attempt.",
                    "Delivery",
                ),
                (400, 401, 403, 404),
                parameters=[org, delivery, environment],
                description=scoped + " A disabled endpoint is a 400.",
            ),
        },
    }


__all__ = [
    "ADMIN_RESPONSES",
    "ADMIN_SCHEMAS",
    "ADMIN_SECURITY",
    "ADMIN_SECURITY_SCHEME",
    "admin_paths",
]
