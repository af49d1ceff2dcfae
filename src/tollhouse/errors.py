"""The one exception tree of tollhouse, and the client-visible error envelope.

::

    TollhouseError                       root: everything tollhouse raises
    ├── ConfigError                      a bad policy file or setting (raised at start)
    │   └── PolicyError                  carries the file and the field path
    ├── StorageError                     a backend (SQL, Redis) failed; wraps the driver error
    │   └── DataRejected          400    the database refused a value (also a BadRequest)
    └── ApiError                         client-visible: type, code, status, message
        ├── BadRequest            400    BAD_REQUEST
        ├── Unauthorized          401    UNAUTHORIZED
        │   ├── KeyExpired        401    KEY_EXPIRED
        │   └── AdminTokenRequired 401   ADMIN_TOKEN_REQUIRED
        ├── Forbidden             403    FORBIDDEN
        │   ├── OrgSuspended      403    ORG_SUSPENDED
        │   ├── AdminOnly         403    ADMIN_ONLY
        │   ├── RoleEscalation    403    ROLE_ESCALATION
        │   └── EnvironmentEscalation 403 ENVIRONMENT_ESCALATION
        ├── TenantRequired        400    TENANT_REQUIRED
        ├── NotFound              404    NOT_FOUND
        ├── MethodNotAllowed      405    METHOD_NOT_ALLOWED
        ├── RequestTimeout        408    REQUEST_TIMEOUT
        ├── Conflict              409    CONFLICT
        ├── PayloadTooLarge       413    PAYLOAD_TOO_LARGE
        ├── UnsupportedMediaType  415    UNSUPPORTED_MEDIA_TYPE
        ├── ValidationFailed      422    VALIDATION_FAILED
        ├── RateLimited           429    RATE_LIMITED
        ├── ConcurrencyLimited    429    CONCURRENCY_LIMITED
        ├── InternalError         500    INTERNAL
        ├── UpstreamUnavailable   502    UPSTREAM_UNAVAILABLE
        ├── ServiceUnavailable    503    SERVICE_UNAVAILABLE
        └── UpstreamTimeout       504    UPSTREAM_TIMEOUT

Every :class:`ApiError` renders to the error envelope of the scoring API shape
(docs/api-shapes.md)::

    {"error": {"type": "https://tollhouse.dev/errors/rate-limited", "code": "RATE_LIMITED",
               "status": 429, "message": "...", "requestId": "req_..."}}
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

#: Base of the ``type`` URI in the error envelope; the slug of each error follows it.
ERROR_TYPE_BASE = "https://tollhouse.dev/errors/"


class TollhouseError(Exception):
    """Root of every exception tollhouse raises."""


class ConfigError(TollhouseError):
    """A setting or file given to tollhouse is wrong; raised at start, never per request."""


class PolicyError(ConfigError):
    """A policy file is wrong.

    Args:
        source: the file (or ``<built-in>``) the policy came from.
        field: dotted path of the offending field, e.g. ``buckets[2].window``.
        problem: what is wrong and what to change.
    """

    def __init__(self, source: str, field: str, problem: str) -> None:
        self.source = source
        self.field = field
        self.problem = problem
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {problem}")


class StorageError(TollhouseError):
    """A storage backend failed; the driver's exception is chained as ``__cause__``."""


class ApiError(TollhouseError):
    """An error the client sees, rendered as the error envelope.

    Args:
        message: what happened and what the caller should change.
        headers: extra response headers (e.g. ``Retry-After``).
    """

    status: ClassVar[int] = 500
    code: ClassVar[str] = "INTERNAL"
    slug: ClassVar[str] = "internal"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def body(self, request_id: str) -> dict[str, Any]:
        """The envelope as a dict."""
        return error_body(self.status, self.code, self.slug, self.message, request_id)


class BadRequest(ApiError):
    status, code, slug = 400, "BAD_REQUEST", "bad-request"


class DataRejected(BadRequest, StorageError):
    """The database refused a value it was given (too long, out of range, not encodable):
    the caller's data, not the database's health. A :class:`StorageError` to code that
    retries storage failures and a :class:`BadRequest` (400) to every HTTP layer —
    ``ApiError`` comes before ``StorageError`` in its MRO, so handlers registered for
    both answer 400, never 503. The driver's error is chained as ``__cause__``.
    """


class TenantRequired(ApiError):
    status, code, slug = 400, "TENANT_REQUIRED", "tenant-required"


class Unauthorized(ApiError):
    status, code, slug = 401, "UNAUTHORIZED", "unauthorized"


class KeyExpired(Unauthorized):
    """The key existed and has expired (its ``expiresAt`` passed, or a rotation's overlap
    ended)."""

    code, slug = "KEY_EXPIRED", "key-expired"


class AdminTokenRequired(Unauthorized):
    """A provider API route was called without a valid admin token."""

    code, slug = "ADMIN_TOKEN_REQUIRED", "admin-token-required"


class Forbidden(ApiError):
    status, code, slug = 403, "FORBIDDEN", "forbidden"


class OrgSuspended(Forbidden):
    """The key's org is suspended (``PATCH /v1/admin/orgs/{orgId}`` ``suspended``)."""

    code, slug = "ORG_SUSPENDED", "org-suspended"


class AdminOnly(Forbidden):
    """An org's API key was sent to a provider API route (admin tokens only)."""

    code, slug = "ADMIN_ONLY", "admin-only"


class RoleEscalation(Forbidden):
    """A key asked for a key with a role above its own."""

    code, slug = "ROLE_ESCALATION", "role-escalation"


class EnvironmentEscalation(Forbidden):
    """A SANDBOX key asked for a PRODUCTION key."""

    code, slug = "ENVIRONMENT_ESCALATION", "environment-escalation"


class NotFound(ApiError):
    status, code, slug = 404, "NOT_FOUND", "not-found"


class MethodNotAllowed(ApiError):
    """The path exists, not for this method; ``headers`` carry its ``Allow``."""

    status, code, slug = 405, "METHOD_NOT_ALLOWED", "method-not-allowed"


class RequestTimeout(ApiError):
    """The request body did not arrive within its deadline (``[limits] body_timeout``)."""

    status, code, slug = 408, "REQUEST_TIMEOUT", "request-timeout"


class Conflict(ApiError):
    """The change clashes with what exists (a duplicate id, a key that cannot be rotated)."""

    status, code, slug = 409, "CONFLICT", "conflict"


class PayloadTooLarge(ApiError):
    status, code, slug = 413, "PAYLOAD_TOO_LARGE", "payload-too-large"


class UnsupportedMediaType(ApiError):
    """A JSON route was sent a body of another ``Content-Type``."""

    status, code, slug = 415, "UNSUPPORTED_MEDIA_TYPE", "unsupported-media-type"


class ValidationFailed(ApiError):
    status, code, slug = 422, "VALIDATION_FAILED", "validation-failed"


class RateLimited(ApiError):
    status, code, slug = 429, "RATE_LIMITED", "rate-limited"


class ConcurrencyLimited(ApiError):
    status, code, slug = 429, "CONCURRENCY_LIMITED", "concurrency-limited"


class InternalError(ApiError):
    status, code, slug = 500, "INTERNAL", "internal"


class ServiceUnavailable(ApiError):
    status, code, slug = 503, "SERVICE_UNAVAILABLE", "service-unavailable"


class UpstreamUnavailable(ApiError):
    status, code, slug = 502, "UPSTREAM_UNAVAILABLE", "upstream-unavailable"


class UpstreamTimeout(ApiError):
    status, code, slug = 504, "UPSTREAM_TIMEOUT", "upstream-timeout"


def error_body(status: int, code: str, slug: str, message: str, request_id: str) -> dict[str, Any]:
    """Build the error envelope (the scoring API shape)."""
    return {
        "error": {
            "type": ERROR_TYPE_BASE + slug,
            "code": code,
            "status": status,
            "message": message,
            "requestId": request_id,
        }
    }


def error_json(error: ApiError, request_id: str) -> bytes:
    """The envelope of ``error`` serialised as JSON bytes."""
    return orjson.dumps(error.body(request_id))
