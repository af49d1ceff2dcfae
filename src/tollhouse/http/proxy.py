"""The reverse proxy: a raw ASGI app that forwards the gateway's traffic to an HTTP upstream.

``tollhouse serve`` mounts :class:`ReverseProxy` behind the gateway when the policy says
``[upstream] url = "http://..."``. By the time a request gets here the gateway has
authenticated it, counted it against its limits and put ``request_id`` and ``identity`` in
``scope["state"]``; the proxy's job is to pass the exchange through faithfully and cheaply:

* the request target is forwarded byte for byte (percent-encoding and dot segments as
  received), so the upstream routes on exactly the path the gateway matched its policy on;
* bodies are streamed both ways, never buffered whole;
* hop-by-hop headers are dropped both ways, the caller's credentials never leave the
  gateway, and the upstream learns who called through ``X-Tollhouse-*`` headers that
  callers cannot forge (any they send are dropped);
* a client that goes away cancels the upstream exchange, so the gateway's in-flight slot
  is released at once;
* an upstream that cannot be reached or is too slow becomes the usual error envelope
  (502 ``UPSTREAM_UNAVAILABLE``, 504 ``UPSTREAM_TIMEOUT``), never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, Final
from urllib.parse import quote

import httpx
from starlette.types import Receive, Scope, Send

from tollhouse.errors import (
    ApiError,
    BadRequest,
    ConfigError,
    PayloadTooLarge,
    TollhouseError,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_json,
)
from tollhouse.keys.model import Identity

__all__ = [
    "CALLER_SECRET_HEADERS",
    "HOP_BY_HOP_HEADERS",
    "IDENTITY_HEADER_PREFIX",
    "ReverseProxy",
]

logger = logging.getLogger(__name__)

#: Fields that describe one connection, not the message (RFC 9110 §7.6.1, plus the older
#: ``keep-alive``, ``proxy-*`` and ``trailer`` names): never forwarded, in either direction.
HOP_BY_HOP_HEADERS: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

#: The caller's credentials. The gateway has already checked them; an upstream must never see
#: them (it could log or replay them).
CALLER_SECRET_HEADERS: Final = frozenset({b"authorization", b"x-api-key"})

#: Headers the proxy writes itself from the authenticated identity. Anything a caller sends
#: under this prefix is dropped, or the upstream could be told a forged org or role.
IDENTITY_HEADER_PREFIX: Final = b"x-tollhouse-"

# Request headers the proxy owns: it sets them itself below (host, x-forwarded-*,
# x-request-id) or has answered them already (``expect``: reading the body through ASGI
# makes the server send ``100 Continue`` to the caller; the upstream gets the body anyway).
_REQUEST_DROP: Final = (
    HOP_BY_HOP_HEADERS
    | CALLER_SECRET_HEADERS
    | {
        b"host",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-request-id",
    }
)

_JSON_HEADERS: Final = ((b"content-type", b"application/json"),)

# Every printable ASCII byte, '%' included, so existing escapes in a target stay as they are
# and only bytes the upstream connection could not carry get percent-encoded.
_PRINTABLE_ASCII: Final = "".join(map(chr, range(0x21, 0x7F)))

# RFC 3986 path characters; used only when a server gives no ``raw_path``.
_PATH_SAFE: Final = "/:@!$&'()*+,;=~"


class _ClientGone(TollhouseError):
    """The caller disconnected while its request body was still being read."""


class _BodyTooLarge(TollhouseError):
    """The request body grew past ``max_body_size`` while it was being streamed."""


class _Call:
    """What the exchange and the disconnect watcher of one request share."""

    __slots__ = ("body_done", "response_complete")

    def __init__(self, body_done: asyncio.Event | None) -> None:
        # Set once the last request body message has been received; until then ``receive``
        # belongs to the body stream and the watcher must not call it.
        self.body_done = body_done
        # True once the final response message is on its way: the server then answers
        # ``receive`` with ``http.disconnect``, which is not the caller going away.
        self.response_complete = False


class ReverseProxy:
    """A raw ASGI app that forwards every HTTP request to one upstream base URL.

    One pooled :class:`httpx.AsyncClient` serves all requests (no redirects followed, no
    proxy or certificate settings taken from the environment, no cookies stored). The
    request target is the base URL's path followed by the request's ``raw_path`` and query
    string, byte for byte.

    Scopes other than HTTP: ``lifespan`` is answered (shutdown closes the pool), so the
    proxy can be served on its own; a gateway that serves it should call :meth:`aclose` at
    its own shutdown instead. ``websocket`` connections are refused with a
    ``websocket.close`` (code 1003, "unsupported"); before the handshake completes servers
    turn that into an HTTP 403.

    Args:
        upstream_url: ``http://`` or ``https://`` URL of the upstream, optionally with a
            path prefix (``http://127.0.0.1:9000/api``). Credentials in the URL
            (``http://user:pass@host``) are sent to the upstream as HTTP Basic auth.
        timeout: seconds the upstream may take for each read or write, and the longest
            wait for a free pooled connection; beyond it the caller gets a 504. Applies to
            each step, not to the whole exchange, so long streamed responses are fine.
        connect_timeout: seconds to open a new connection to the upstream (then 504).
        max_connections: most connections open to the upstream at once.
        max_keepalive: most idle connections kept for reuse.
        max_body_size: largest request body in bytes, or None for no limit; bigger bodies
            get a 413 (before anything reaches the upstream when ``Content-Length`` says so).

    Attributes:
        upstream_url: the URL the proxy was built with, as given.

    Raises:
        ConfigError: the URL is not an http(s) URL with a host, or a limit is not positive.
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        max_connections: int = 200,
        max_keepalive: int = 100,
        max_body_size: int | None = None,
    ) -> None:
        url = _parse_upstream_url(upstream_url)
        for name, value in (
            ("timeout", timeout),
            ("connect_timeout", connect_timeout),
            ("max_connections", max_connections),
        ):
            if not value > 0:
                raise ConfigError(f"upstream {name} must be greater than 0, got {value!r}")
        if max_keepalive < 0:
            raise ConfigError(f"upstream max_keepalive must be 0 or more, got {max_keepalive!r}")
        if max_body_size is not None and max_body_size < 0:
            raise ConfigError(f"max_body_size must be 0 or more (or None), got {max_body_size!r}")

        self.upstream_url = upstream_url
        self._origin = url
        self._host = url.netloc  # host[:port], port only when not the scheme's default
        self._authority = f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"
        self._prefix = url.raw_path.rstrip(b"/")
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._max_connections = max_connections
        self._max_body_size = max_body_size
        timeouts = httpx.Timeout(timeout, connect=connect_timeout)
        # Requests are built by hand (the client's default headers such as Accept-Encoding
        # would change what the caller asked for), so the timeouts travel per request.
        self._timeouts = timeouts.as_dict()
        self._client = httpx.AsyncClient(
            timeout=timeouts,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_keepalive
            ),
            follow_redirects=False,
            trust_env=False,
            # The client is shared by every caller: a jar that refuses all cookies keeps one
            # caller's Set-Cookie from being stored (and growing) in the gateway.
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        )

    async def aclose(self) -> None:
        """Close the pooled upstream connections. Safe to call more than once."""
        await self._client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection: proxy HTTP, answer lifespan, refuse websockets."""
        kind = scope["type"]
        if kind == "http":
            await self._proxy(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1003, "reason": "not supported"})

    # -- lifespan --------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- http ------------------------------------------------------------------------------

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: dict[str, Any] = scope.get("state") or {}
        request_id = state.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            request_id = "req_" + secrets.token_hex(12)
        identity = state.get("identity")

        target = self._target(scope)
        if target is None:
            error: ApiError = BadRequest(
                "The request target must be a path starting with '/'; "
                "send an origin-form request such as 'GET /v1/resource'."
            )
            await _reply_error(send, error, request_id)
            return
        headers, content_length = self._request_headers(
            scope, identity if isinstance(identity, Identity) else None, request_id
        )
        limit = self._max_body_size
        if limit is not None and content_length is not None and content_length > limit:
            await _reply_error(send, _too_large(limit), request_id)
            return

        # The first message tells whether there is a body at all (no Content-Length is
        # needed for that, so HTTP/2 servers work too) and carries all of a small one.
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        first: bytes = message.get("body", b"")
        content: bytes | AsyncIterator[bytes] | None
        if message.get("more_body", False):
            call = _Call(asyncio.Event())
            content = self._stream_body(first, receive, call)
        else:
            call = _Call(None)
            if limit is not None and len(first) > limit:
                await _reply_error(send, _too_large(limit), request_id)
                return
            content = first or None

        request = httpx.Request(
            scope["method"],
            self._origin,
            headers=headers,
            content=content,
            # httpcore's "target" extension puts our bytes on the request line unchanged;
            # going through httpx.URL would normalise them (and parse them per request).
            extensions={"timeout": self._timeouts, "target": target},
        )
        exchange = asyncio.create_task(self._exchange(request, send, request_id, call))
        watcher = asyncio.create_task(_wait_for_disconnect(receive, call.body_done))
        try:
            await asyncio.wait((exchange, watcher), return_when=asyncio.FIRST_COMPLETED)
            if watcher.done() and not call.response_complete:
                # Nobody is left to read the answer: stop waiting on the upstream now, so
                # the gateway's in-flight slot is released when we return.
                exchange.cancel()
            await asyncio.wait((exchange,))
        finally:
            watcher.cancel()
            if not exchange.done():  # we are being cancelled ourselves
                exchange.cancel()
                await asyncio.wait((exchange,))
        if not exchange.cancelled():
            exchange.result()  # upstream failures were answered inside; re-raise bugs only
        if watcher.done() and not watcher.cancelled():
            watcher.result()  # a failing receive() is a bug upstream of us: surface it

    def _target(self, scope: Scope) -> bytes | None:
        """Request line target for the upstream, or None if the request's is not a path."""
        raw: bytes | None = scope.get("raw_path")
        if not raw:
            raw = quote(scope["path"], safe=_PATH_SAFE).encode("ascii")
        # An absolute-form target ("http://other/x") would reach the upstream as one and
        # name a host the gateway never checked; only origin-form paths go through.
        if raw[:1] != b"/":
            return None
        target = self._prefix + raw
        query: bytes = scope.get("query_string", b"")
        if query:
            target += b"?" + query
        if not target.isascii():
            # Some servers pass raw UTF-8 through; an HTTP/1.1 request line cannot carry it.
            target = quote(target, safe=_PRINTABLE_ASCII).encode("ascii")
        return target

    def _request_headers(
        self, scope: Scope, identity: Identity | None, request_id: str
    ) -> tuple[list[tuple[bytes, bytes]], int | None]:
        """Headers for the upstream, in the caller's order, and the declared body length."""
        headers: list[tuple[bytes, bytes]] = [(b"host", self._host)]
        forwarded_for: list[bytes] = []
        connection: list[bytes] = []
        original_host: bytes | None = None
        content_length: bytes | None = None
        drop = _REQUEST_DROP
        for name, value in scope["headers"]:
            if name in drop:
                if name == b"connection":
                    connection.append(value)
                elif name == b"x-forwarded-for":
                    forwarded_for.append(value)
                elif name == b"host":
                    original_host = value
                continue
            if name.startswith(IDENTITY_HEADER_PREFIX):
                continue
            if name == b"content-length":
                content_length = value
            headers.append((name, value))

        if connection:
            named = _connection_tokens(connection)
            named.discard(b"host")  # the upstream's own Host is ours to send
            headers = [item for item in headers if item[0] not in named]
            if b"x-forwarded-for" in named:
                forwarded_for = []
            if b"content-length" in named:
                content_length = None

        client = scope.get("client")
        if client:
            forwarded_for.append(str(client[0]).encode("latin-1"))
        if forwarded_for:
            headers.append((b"x-forwarded-for", b", ".join(forwarded_for)))
        headers.append((b"x-forwarded-proto", str(scope.get("scheme") or "http").encode("ascii")))
        if original_host is not None:
            headers.append((b"x-forwarded-host", original_host))
        headers.append((b"x-request-id", request_id.encode("utf-8")))
        if identity is not None:
            headers += (
                (b"x-tollhouse-org", identity.org.encode("utf-8")),
                (b"x-tollhouse-environment", identity.environment.encode("utf-8")),
                (b"x-tollhouse-key-id", identity.key_id.encode("utf-8")),
                (b"x-tollhouse-role", identity.role.encode("utf-8")),
            )

        length: int | None = None
        if content_length is not None:
            try:
                length = int(content_length)
            except ValueError:  # the server has validated it; never fail on it here
                length = None
        return headers, length

    async def _stream_body(
        self, first: bytes, receive: Receive, call: _Call
    ) -> AsyncIterator[bytes]:
        """The request body, from ``receive()`` straight to the upstream connection."""
        limit = self._max_body_size
        size = len(first)
        if first:
            yield first
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            if not more and call.body_done is not None:
                call.body_done.set()  # receive() is free now: the watcher may take it over
            size += len(chunk)
            if limit is not None and size > limit:
                raise _BodyTooLarge
            if chunk:
                yield chunk

    async def _exchange(
        self, request: httpx.Request, send: Send, request_id: str, call: _Call
    ) -> None:
        """Send the request upstream and stream the answer back (or an error envelope)."""
        try:
            response = await self._client.send(request, stream=True)
        except _ClientGone:
            return
        except _BodyTooLarge:
            call.response_complete = True
            await _reply_error(send, _too_large(self._max_body_size or 0), request_id)
            return
        except httpx.TimeoutException as exc:
            call.response_complete = True
            await self._reply_upstream_error(send, self._timeout_error(exc), exc, request_id)
            return
        except httpx.HTTPError as exc:
            call.response_complete = True
            reason = str(exc) or type(exc).__name__
            error = UpstreamUnavailable(
                f"The upstream at {self._authority} could not be reached ({reason}). "
                "Check that it is running and that [upstream] url points at it."
            )
            await self._reply_upstream_error(send, error, exc, request_id)
            return

        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": _response_headers(response.headers.raw),
                }
            )
            try:
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except httpx.HTTPError as exc:
                logger.warning(
                    "upstream failed after the response started; ending the body early",
                    extra={
                        "request_id": request_id,
                        "upstream": self._authority,
                        "error": type(exc).__name__,
                        "detail": str(exc),
                        "bytes_sent": response.num_bytes_downloaded,
                    },
                )
                declared = response.headers.get("content-length")
                if declared is not None and declared.strip() != str(response.num_bytes_downloaded):
                    # The caller was promised more bytes than exist. The server cannot end
                    # such a body cleanly (it would raise); returning lets it close the
                    # connection, which is how the caller learns the body is short.
                    return
            call.response_complete = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

    def _timeout_error(self, exc: httpx.TimeoutException) -> UpstreamTimeout:
        where = f"The upstream at {self._authority}"
        if isinstance(exc, httpx.ConnectTimeout):
            return UpstreamTimeout(
                f"{where} did not accept a connection within {self._connect_timeout:g} s "
                "(connect timeout). Check that it is up, or raise the upstream connect timeout."
            )
        if isinstance(exc, httpx.PoolTimeout):
            return UpstreamTimeout(
                f"All {self._max_connections} connections to {self._authority} stayed busy "
                f"for {self._timeout:g} s (pool timeout). Retry later, or raise the upstream "
                "max_connections."
            )
        step = "write" if isinstance(exc, httpx.WriteTimeout) else "read"
        return UpstreamTimeout(
            f"{where} did not answer within {self._timeout:g} s ({step} timeout). "
            "Retry later, or raise the upstream timeout."
        )

    async def _reply_upstream_error(
        self, send: Send, error: ApiError, exc: Exception, request_id: str
    ) -> None:
        logger.warning(
            "upstream request failed",
            extra={
                "request_id": request_id,
                "upstream": self._authority,
                "status": error.status,
                "error": type(exc).__name__,
                "detail": str(exc),
            },
        )
        await _reply_error(send, error, request_id)


def _parse_upstream_url(upstream_url: str) -> httpx.URL:
    example = "e.g. 'http://127.0.0.1:9000' or 'https://api.internal/v2'"
    try:
        url = httpx.URL(upstream_url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConfigError(
            f"upstream url {upstream_url!r} is not a valid URL ({exc}); write it like {example}"
        ) from exc
    if url.scheme not in ("http", "https"):
        raise ConfigError(
            f"upstream url {upstream_url!r} must start with http:// or https://; {example}"
        )
    if not url.host:
        raise ConfigError(f"upstream url {upstream_url!r} has no host; {example}")
    if url.query or url.fragment:
        raise ConfigError(
            f"upstream url {upstream_url!r} must not have a query string or fragment; "
            f"give only scheme, host, port and an optional path prefix ({example})"
        )
    return url


def _connection_tokens(values: list[bytes]) -> set[bytes]:
    """Header names a ``Connection`` field lists: hop-by-hop for this message only."""
    return {
        token for value in values for part in value.split(b",") if (token := part.strip().lower())
    }


def _response_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Upstream response headers minus hop-by-hop ones, names lowercased for ASGI."""
    # Content-Length and Content-Encoding stay: the body is forwarded as the raw bytes.
    headers = [(name.lower(), value) for name, value in raw]
    connection = [value for name, value in headers if name == b"connection"]
    drop = (
        (HOP_BY_HOP_HEADERS | _connection_tokens(connection)) if connection else HOP_BY_HOP_HEADERS
    )
    return [item for item in headers if item[0] not in drop]


async def _wait_for_disconnect(receive: Receive, body_done: asyncio.Event | None) -> None:
    """Return when the caller disconnects (or the server says the response is complete)."""
    if body_done is not None:
        await body_done.wait()
    while (await receive())["type"] != "http.disconnect":
        pass


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than {limit} bytes; send a smaller one.")


async def _reply_error(send: Send, error: ApiError, request_id: str) -> None:
    body = error_json(error, request_id)
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode("ascii"))]
    for name, value in error.headers.items():
        headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
