"""How tollhouse answers on its own: JSON bodies, the one table from exceptions to error
answers, and refused WebSocket handshakes.

Every error tollhouse renders itself — the gateway's refusals, the route table's 404 and
405, a platform or jobs route failing — goes through :func:`error_for` and
:func:`error_parts`, so each carries ``X-Request-Id`` equal to its body's ``requestId``:

* :class:`~tollhouse.errors.ApiError` → its status, headers and the error envelope, or
  ``{"detail": …}`` under routes whose ``error_format`` is ``detail`` (the metrics
  catalogue shape; its 429 reads ``"Rate limit exceeded"``);
* :class:`~tollhouse.errors.StorageError` → 503 ``SERVICE_UNAVAILABLE`` with
  ``Retry-After: 1`` (logged);
* anything else is a bug: the caller logs it and answers 500 ``INTERNAL``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tollhouse.errors import (
    ApiError,
    ServiceUnavailable,
    StorageError,
    UnsupportedMediaType,
)
from tollhouse.http.asgi import ASGIApp, Header, Message, Receive, Scope, Send
from tollhouse.http.context import request_id_of
from tollhouse.json_reader import read_json

__all__ = [
    "INTERNAL_ERROR",
    "JSON",
    "POLICY_VIOLATION",
    "REQUEST_ID",
    "endpoint",
    "error_for",
    "error_parts",
    "json_response",
    "read_json",
    "reject_websocket",
    "send_error",
    "send_json",
    "with_request_id",
]

logger = logging.getLogger(__name__)

REQUEST_ID = b"x-request-id"
JSON: Header = (b"content-type", b"application/json")
#: ``{"detail": ...}`` bodies (error_format = "detail"): the metrics catalogue shape words
#: its 405 and 429 so.
_DETAIL_MESSAGES = {405: "Method Not Allowed", 429: "Rate limit exceeded"}
#: What a storage failure is called when a route does not say which store failed.
STORE_UNAVAILABLE = "The database is unavailable; retry shortly."


def error_for(exc: BaseException, unavailable: str = STORE_UNAVAILABLE) -> ApiError | None:
    """The answer to ``exc`` (the exception-handler table), or None for a bug (500).

    Args:
        exc: what a route or the gateway raised.
        unavailable: the 503's message when ``exc`` is a storage failure.
    """
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, StorageError):
        logger.error("storage failed", exc_info=exc, extra={"error": str(exc)})
        return ServiceUnavailable(unavailable, headers={"Retry-After": "1"})
    return None


def error_parts(
    exc: ApiError, request_id: str, error_format: str = "envelope"
) -> tuple[list[Header], bytes]:
    """Headers (``X-Request-Id`` included) and body of the answer for ``exc``."""
    if error_format == "detail":
        body = orjson.dumps({"detail": _DETAIL_MESSAGES.get(exc.status, exc.message)})
    else:
        body = orjson.dumps(exc.body(request_id))
    headers = [JSON, (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    headers.append((REQUEST_ID, request_id.encode()))
    return headers, body


async def send_json(
    send: Send, status: int, body: bytes, headers: list[Header], *, head: bool = False
) -> None:
    """Answer ``status`` with a JSON ``body`` (none for HEAD) and ``headers``."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [JSON, (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})


async def send_error(
    send: Send, exc: ApiError, request_id: str, error_format: str = "envelope"
) -> None:
    """Answer with ``exc`` (see :func:`error_parts`)."""
    headers, body = error_parts(exc, request_id, error_format)
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def with_request_id(send: Send, request_id: str) -> Send:
    """``send`` adding ``X-Request-Id: request_id`` to an answer that has none."""
    header = (REQUEST_ID, request_id.encode())

    async def stamped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            if not any(name.lower() == REQUEST_ID for name, _ in headers):
                headers.append(header)
            message = {**message, "headers": headers}  # the app's own message unchanged
        await send(message)

    return stamped


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON :class:`~starlette.responses.Response` (orjson)."""
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def _json_type(value: bytes) -> bool:
    kind = value.split(b";", 1)[0].strip().lower()
    return kind == b"application/json" or (
        kind.startswith(b"application/") and kind.endswith(b"+json")
    )


def check_json_type(scope: Scope) -> None:
    """Refuse a body sent as anything but JSON (``application/json`` or ``…+json``); a
    request without ``Content-Type`` is read as JSON.

    Raises:
        UnsupportedMediaType: 415.
    """
    for name, value in scope["headers"]:
        if name == b"content-type" and not _json_type(value):
            shown = value.decode("latin-1")[:80]
            raise UnsupportedMediaType(
                f"{scope['method']} {scope['path']} takes a JSON body "
                f'("Content-Type: application/json"), not {shown!r}.',
                headers={"Accept": "application/json"},
            )


Handler = Callable[[Request], Awaitable[Response]]


def endpoint(
    handler: Handler, *, json_body: bool = False, unavailable: str = STORE_UNAVAILABLE
) -> ASGIApp:
    """A route's ASGI app from ``handler`` (a Starlette request → response function),
    its errors answered through :func:`error_for`.

    Args:
        handler: the route's code.
        json_body: the route takes a JSON body (other content types get 415).
        unavailable: the 503's message when the route's store fails.
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if json_body:
                check_json_type(scope)
            response = await handler(Request(scope, receive))
        except (ApiError, StorageError) as exc:
            error = error_for(exc, unavailable)
            assert error is not None
            request_id = request_id_of(scope)
            response = json_response(error.body(request_id), error.status, error.headers)
        await response(scope, receive, send)

    return app


#: The ASGI extension that lets a WebSocket app refuse a handshake with an HTTP response.
HTTP_RESPONSE_EXTENSION = "websocket.http.response"
#: Close codes of a refused handshake on servers without that extension.
POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011
#: Longest close reason, in bytes (a close frame's payload is 125 bytes with the code).
_MAX_CLOSE_REASON = 123


async def reject_websocket(
    scope: Scope, send: Send, status: int, headers: list[Header], body: bytes, reason: str
) -> None:
    """Refuse a WebSocket handshake whose ``websocket.connect`` has been received.

    With the ``websocket.http.response`` extension in ``scope["extensions"]`` the caller
    gets an HTTP response: ``status``, ``headers``, ``body``. Without it the handshake is
    refused with ``websocket.close`` — code 1008 (policy violation) for a 4xx status,
    1011 (internal error) otherwise, ``reason`` (e.g. ``RATE_LIMITED``) as its reason —
    which servers answer with a 403.
    """
    if HTTP_RESPONSE_EXTENSION in (scope.get("extensions") or ()):
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    code = POLICY_VIOLATION if status < 500 else INTERNAL_ERROR
    short = reason.encode()[:_MAX_CLOSE_REASON].decode(errors="ignore")
    await send({"type": "websocket.close", "code": code, "reason": short})
