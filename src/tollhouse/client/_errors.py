"""The SDK's exceptions, under tollhouse's one root.

::

    TollhouseError                       tollhouse.errors: root of everything tollhouse raises
    └── ClientError                      anything the SDK raises
        ├── TransportError               no answer: connection refused, reset, timed out
        │                                (after the retries the policy allows)
        ├── UnexpectedResponse           a success answer whose body is not what the API
        │                                documents (a proxy page, a newer server …)
        └── TollhouseAPIError            the API answered with an error status
            ├── BadRequestError    400   BAD_REQUEST, TENANT_REQUIRED, a ``detail`` 400
            ├── AuthenticationError 401  UNAUTHORIZED
            ├── PermissionDeniedError 403 FORBIDDEN
            ├── NotFoundError      404   NOT_FOUND
            ├── ValidationError    422   VALIDATION_FAILED, IDEMPOTENCY_KEY_REUSED
            ├── RateLimitError     429   RATE_LIMITED, CONCURRENCY_LIMITED (retries used up)
            └── ServerError        5xx   INTERNAL, UPSTREAM_*, SERVICE_UNAVAILABLE

:class:`TollhouseAPIError` is the SDK's name for an error answer; the server's
:class:`tollhouse.errors.ApiError` (what it raises to produce one) is another class, and
the SDK never raises it.

A :class:`TollhouseAPIError` is built from either error shape the server uses (see
docs/api-shapes.md): the error envelope
``{"error": {"type", "code", "status", "message", "requestId"}}`` and the metrics catalogue
shape's ``{"detail": "…"}`` / ``{"detail": [{"loc", "msg", "type"}]}``. Where the body carries
no code or request id, the status and the ``X-Request-Id`` header supply them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from tollhouse.errors import TollhouseError
from tollhouse.times import parse_retry_after


class ClientError(TollhouseError):
    """Root of every exception the SDK raises."""


class TransportError(ClientError):
    """The request got no HTTP answer (connection refused or reset, timeout).

    Args:
        message: what failed, and after how many attempts.
        attempts: requests sent, the failed retries included.
    """

    def __init__(self, message: str, *, attempts: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.attempts = attempts


class UnexpectedResponse(ClientError):
    """A successful answer whose body does not have the documented shape.

    Args:
        message: which field was wrong, e.g. ``queuePosition: expected an integer``.
        body: the body as received (parsed JSON, or the text when it was not JSON).
    """

    def __init__(self, message: str, *, body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.body = body


class TollhouseAPIError(ClientError):
    """The API answered with an error status.

    Attributes:
        status: the HTTP status.
        code: the machine-readable code (``RATE_LIMITED``, ``NOT_FOUND`` …); derived from
            the status when the body has none (a ``{"detail": …}`` body).
        message: the server's message (for a ``detail`` list, its items joined).
        request_id: the ``requestId`` of the envelope, else the ``X-Request-Id`` header.
        type: the envelope's ``type`` URI, if any.
        body: the parsed JSON body (or the raw text when it was not JSON).
        headers: the response headers (lower-case names).
        attempts: requests sent for this call, retries included.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        request_id: str | None = None,
        type: str | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" [{request_id}]" if request_id else ""))
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.type = type
        self.body = body
        self.headers: Mapping[str, str] = dict(headers or {})
        self.attempts = attempts


class BadRequestError(TollhouseAPIError):
    """400: the request is malformed, or ``X-Tenant-Id`` is missing (``TENANT_REQUIRED``)."""


class AuthenticationError(TollhouseAPIError):
    """401: no key, or a key that is unknown or revoked."""


class PermissionDeniedError(TollhouseAPIError):
    """403: the key's role may not call this endpoint."""


class NotFoundError(TollhouseAPIError):
    """404: no such job, application, criterion, metric or label (for this org)."""


class ValidationError(TollhouseAPIError):
    """422: a field is missing or wrong; the message names it."""


class RateLimitError(TollhouseAPIError):
    """429 after the retries the policy allows (or a wait longer than it accepts).

    Attributes:
        retry_after: the server's ``Retry-After`` in seconds, if it sent one.
    """

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked to wait (``Retry-After``), or None."""
        return parse_retry_after(self.headers.get("retry-after"), time.time())


class ServerError(TollhouseAPIError):
    """5xx: the API or its upstream failed (after the retries allowed for this call)."""


_BY_STATUS: dict[int, type[TollhouseAPIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    422: ValidationError,
    429: RateLimitError,
}

#: Codes for bodies without one (``{"detail": …}``), as the envelope names them.
_CODES: dict[int, str] = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    422: "VALIDATION_FAILED",
    429: "RATE_LIMITED",
    500: "INTERNAL",
    502: "UPSTREAM_UNAVAILABLE",
    503: "SERVICE_UNAVAILABLE",
    504: "UPSTREAM_TIMEOUT",
}


def error_class(status: int) -> type[TollhouseAPIError]:
    """The :class:`TollhouseAPIError` subclass for an HTTP status."""
    found = _BY_STATUS.get(status)
    if found is not None:
        return found
    return ServerError if status >= 500 else TollhouseAPIError


def default_code(status: int) -> str:
    """The envelope's code for ``status``, for bodies that carry none."""
    return _CODES.get(status, f"HTTP_{status}")
