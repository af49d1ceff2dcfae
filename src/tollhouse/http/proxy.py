"""The reverse proxy: a raw ASGI app that forwards the gateway's traffic to an HTTP upstream.

``tollhouse serve`` mounts :class:`ReverseProxy` behind the gateway when the policy says
``[upstream] url = "http://..."``. By the time a request gets here the gateway has
authenticated it, counted it against its limits and put ``request_id`` and ``identity`` in
``scope["state"]``; the proxy's job is to pass the exchange through faithfully and cheaply:

* the request target is the path the gateway matched its policy on, byte for byte, with
  the query string as received;
* bodies stream both ways, never buffered whole, on pooled keep-alive connections of
  tollhouse's own upstream client (:mod:`tollhouse.upstream`);
* hop-by-hop headers are dropped both ways; the caller's credentials never leave the
  gateway (unless ``forward_authorization`` says the caller's own ``Authorization`` is
  for the upstream); the upstream learns who called through ``X-Tollhouse-*`` headers that
  callers cannot forge, and where from through ``X-Forwarded-*``, ``Forwarded`` and
  ``X-Real-IP`` that callers cannot forge either (unless they are a trusted proxy);
* one set of each header the gateway owns reaches the caller: its ``Date``, its
  ``X-Request-Id``, and its rate-limit headers when the route has buckets (the upstream's
  are dropped then, and passed through when tollhouse has none of its own);
* absolute ``Location``/``Content-Location`` answers that point at the upstream's own
  origin are rewritten to the caller's origin, so a redirect never leads past the gateway;
* an upstream that cannot be reached or is too slow becomes the usual error envelope
  (502 ``UPSTREAM_UNAVAILABLE``, 504 ``UPSTREAM_TIMEOUT``) naming what happened and the
  request id, never the upstream's address (that goes to the log);
* an upstream that fails once its answer has started makes the proxy cut the caller's
  connection: the caller sees a broken response, never a clean end of a short body;
* a client that goes away cancels the upstream exchange (checked once a request has run
  for :data:`WATCH_AFTER` seconds), so the gateway's in-flight slot is released at once.

Why one module of this size: each rule above is a few lines on the same exchange (the
request's headers, its body, the answer's headers, its body, the failure paths), and
they read best in the order a request meets them; the upstream client itself
(connections, pooling, framing) is :mod:`tollhouse.upstream`, the WebSocket relay
:mod:`tollhouse.http.websocket`, the shared header sets :mod:`tollhouse.http.fields`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any, Final
from urllib.parse import quote

from starlette.types import Message, Receive, Scope, Send

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
from tollhouse.http.fields import HOP_BY_HOP_HEADERS, RATE_LIMIT_HEADERS
from tollhouse.http.gateway import new_request_id, reject_websocket
from tollhouse.http.websocket import proxy_websocket
from tollhouse.keys.model import Identity
from tollhouse.memo import remember
from tollhouse.upstream import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamPool,
    UpstreamPoolTimeout,
    UpstreamReadTimeout,
    parse_origin,
)

__all__ = [
    "BUFFER_BODY",
    "CALLER_SECRET_HEADERS",
    "FORWARDED_HEADERS",
    "HOP_BY_HOP_HEADERS",
    "IDENTITY_HEADER_PREFIX",
    "RATE_LIMIT_HEADERS",
    "WATCH_AFTER",
    "ReverseProxy",
]

logger = logging.getLogger(__name__)

#: The caller's credentials. The gateway has already checked them; an upstream must never
#: see them (it could log or replay them).
CALLER_SECRET_HEADERS: Final = frozenset({b"authorization", b"x-api-key"})

#: Where a request came from, as proxies tell it. Replaced by the proxy's own account
#: unless the peer is a trusted proxy.
FORWARDED_HEADERS: Final = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"x-real-ip"}
)

#: Headers the proxy writes itself from the authenticated identity. Anything a caller sends
#: under this prefix is dropped, or the upstream could be told a forged org or role.
IDENTITY_HEADER_PREFIX: Final = b"x-tollhouse-"

#: Bytes of a request body of unknown length gathered before sending: a body that ends
#: within it goes upstream with a ``Content-Length``, a longer one streams chunked.
BUFFER_BODY: Final = 64 * 1024

#: Seconds after which a request still running starts watching for its caller leaving.
#: Shorter requests never pay for the watch (a task per request would cost more than
#: the rest of the proxy's work); a caller that leaves one of them is noticed when the
#: answer is written.
WATCH_AFTER: Final = 0.5

# Request headers the proxy owns: it sets them itself below (host, forwarded headers,
# x-request-id) or has answered them already (``expect``: reading the body through ASGI
# makes the server send ``100 Continue`` to the caller; the upstream gets the body anyway).
_REQUEST_DROP: Final = (
    HOP_BY_HOP_HEADERS
    | CALLER_SECRET_HEADERS
    | FORWARDED_HEADERS
    | {b"host", b"expect", b"x-request-id", b"content-length"}
)

# Response headers the server or the gateway owns.
_RESPONSE_DROP: Final = HOP_BY_HOP_HEADERS | {b"date", b"x-request-id"}
_RESPONSE_DROP_LIMITED: Final = _RESPONSE_DROP | RATE_LIMIT_HEADERS
_LOCATIONS: Final = (b"location", b"content-location")

_JSON_HEADERS: Final = ((b"content-type", b"application/json"),)

# The proxy's own request fields, in the order they follow the caller's: one ``%`` each
# for the common cases instead of a tuple and a join per field.
_FORWARDED_FIELDS: Final = (
    b"x-forwarded-for: %s\r\nx-real-ip: %s\r\n"
    b'forwarded: for=%s;proto=%s;host="%s"\r\n'
    b"x-forwarded-proto: %s\r\nx-forwarded-host: %s\r\n"
)
_FORWARDED_FIELDS_NO_HOST: Final = (
    b"x-forwarded-for: %s\r\nx-real-ip: %s\r\n"
    b"forwarded: for=%s;proto=%s\r\n"
    b"x-forwarded-proto: %s\r\n"
)
_IDENTIFIED_FIELDS: Final = (
    b"x-request-id: %s\r\n"
    b"x-tollhouse-org: %s\r\nx-tollhouse-environment: %s\r\n"
    b"x-tollhouse-key-id: %s\r\nx-tollhouse-role: %s\r\n"
)

#: Most entries of a proxy's memo of forwarded header lines (one per caller address,
#: scheme and ``Host``); a full memo starts over.
_FORWARDED_MEMO: Final = 4096
# Longest ``Host`` kept in that memo (a host name is at most 253 bytes): longer ones are
# built per request, so the memo stays small whatever callers send.
_MEMO_HOST: Final = 300

#: Seconds a timer may fire early (the loop clock's resolution is a millisecond) and still
#: count as on time.
_TIMER_SLACK: Final = 0.001

# Every printable ASCII byte, '%' included, so existing escapes in a target stay as they are
# and only bytes the upstream connection could not carry get percent-encoded.
_PRINTABLE_ASCII: Final = "".join(map(chr, range(0x21, 0x7F)))

# RFC 3986 path characters; used only when a server gives no ``raw_path``.
_PATH_SAFE: Final = "/:@!$&'()*+,;=~"


class _ClientGone(TollhouseError):
    """The caller disconnected while its request body was still being read."""


class _BodyTooLarge(TollhouseError):
    """The request body grew past ``max_body_size`` while it was being streamed."""


class _Watches:
    """When the disconnect watches of a proxy's requests start: one timer for them all.

    Every watch waits the same :data:`WATCH_AFTER`, so the armed ones are due in the
    order they were armed: the timer only ever waits for the first. Arming and stopping a
    watch is a dict insert and delete; an event-loop timer per request would cost more
    than the rest of the proxy's Python.
    """

    __slots__ = ("armed", "loop", "timer")

    def __init__(self) -> None:
        #: Armed watches (insertion order is due order) → their loop time to start.
        self.armed: dict[_Watch, float] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.timer: asyncio.TimerHandle | None = None

    def arm(self, watch: _Watch) -> None:
        loop = watch.loop
        if loop is not self.loop:
            # First use, or a new event loop (the old one's timer will never fire).
            self.armed.clear()
            self.loop = loop
            self.timer = None
        due = loop.time() + WATCH_AFTER
        self.armed[watch] = due
        if self.timer is None:
            self.timer = loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self.timer = None
        loop = self.loop
        assert loop is not None
        armed = self.armed
        now = loop.time()
        while armed:
            watch = next(iter(armed))
            due = armed[watch]
            if due - now > _TIMER_SLACK:
                self.timer = loop.call_at(due, self._fire)
                return
            del armed[watch]
            watch.start()


class _Watch:
    """The disconnect watch of one request: armed in :class:`_Watches`, a task only if
    its request is still running when it is due."""

    __slots__ = ("gone", "loop", "receive", "task", "watcher", "watches")

    def __init__(
        self,
        receive: Receive,
        task: asyncio.Task[Any],
        loop: asyncio.AbstractEventLoop,
        watches: _Watches,
    ) -> None:
        self.receive = receive
        self.task = task
        self.loop = loop
        self.watches = watches
        self.gone = False
        self.watcher: asyncio.Task[None] | None = None

    def arm(self) -> None:
        self.watches.arm(self)

    def start(self) -> None:
        self.watcher = self.loop.create_task(self._watch())

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        self.task.cancel()

    def stop(self) -> None:
        self.watches.armed.pop(self, None)
        if self.watcher is not None:
            self.watcher.cancel()
            self.watcher = None


class ReverseProxy:
    """A raw ASGI app that forwards every HTTP request to one upstream base URL.

    The request target is the base URL's path followed by the request's ``raw_path`` and
    query string, byte for byte.

    Scopes other than HTTP: ``lifespan`` is answered (shutdown closes the pool), so the
    proxy can be served on its own; a gateway that serves it should call :meth:`aclose` at
    its own shutdown instead. ``websocket`` connections are relayed to the upstream's
    ``ws://``/``wss://`` address (:func:`tollhouse.http.websocket.proxy_websocket`) with
    the same headers an HTTP request gets.

    Args:
        upstream_url: ``http://`` or ``https://`` URL of the upstream, optionally with a
            path prefix (``http://127.0.0.1:9000/api``). Credentials in the URL
            (``http://user:pass@host``) are sent to the upstream as HTTP Basic auth.
        timeout: the read timeout: seconds the upstream may stay silent while its answer
            is awaited, or not take the request body (then 504). Applies to each wait,
            not to the whole exchange, so long streamed answers are fine.
        connect_timeout: seconds to open a new connection to the upstream (then 502).
        total_timeout: seconds the whole exchange may take, or None for no limit (then
            504, or the caller's connection is cut if the answer has started).
        pool_timeout: seconds a request may wait for a free connection when all
            ``max_connections`` are busy (then 504).
        max_connections: most connections open to the upstream at once.
        keepalive_expiry: seconds an idle connection is kept for reuse; keep it below the
            upstream's own keep-alive timeout.
        max_body_size: largest request body in bytes, or None for no limit; bigger bodies
            get a 413 (before anything reaches the upstream when ``Content-Length`` says so).
        preserve_host: send the caller's ``Host`` upstream instead of the upstream's own.
        forward_authorization: when the caller's tollhouse key came in ``X-API-Key``, pass
            its ``Authorization`` header to the upstream (the caller's own credentials
            for the upstream). Off: no credential of the caller ever leaves the gateway.

    Attributes:
        upstream_url: the URL the proxy was built with, as given.
        pool: the upstream connection pool.

    Raises:
        ConfigError: the URL is not an http(s) URL with a host, or a limit is not positive.
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        total_timeout: float | None = None,
        pool_timeout: float = 10.0,
        max_connections: int = 100,
        keepalive_expiry: float = 4.0,
        max_body_size: int | None = None,
        preserve_host: bool = False,
        forward_authorization: bool = False,
    ) -> None:
        origin = parse_origin(upstream_url)
        if max_body_size is not None and max_body_size < 0:
            raise ConfigError(f"max_body_size must be 0 or more (or None), got {max_body_size!r}")
        if total_timeout is not None and not total_timeout > 0:
            raise ConfigError(f"upstream total_timeout must be greater than 0, got {total_timeout}")
        self.upstream_url = upstream_url
        self.origin = origin
        self.pool = UpstreamPool(
            origin,
            max_connections=max_connections,
            connect_timeout=connect_timeout,
            read_timeout=timeout,
            pool_timeout=pool_timeout,
            keepalive_expiry=keepalive_expiry,
        )
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._total_timeout = total_timeout
        self._max_body_size = max_body_size
        self._preserve_host = preserve_host
        self._forward_authorization = forward_authorization
        self._watches = _Watches()
        # The event loop of the thread that last called, with that thread's id: asking
        # asyncio for the running loop costs a getpid() system call on Python 3.11.
        self._loop: tuple[int, asyncio.AbstractEventLoop] | None = None
        # The proxy's own forwarded header lines by (caller address, scheme, Host): the
        # same few callers send most requests, and the lines are built once for each.
        self._forwarded_memo: dict[tuple[Any, Any, bytes | None], bytes] = {}
        self._host_field = b"host: %s\r\n" % origin.authority
        self._basic_field: bytes | None = None
        if origin.userinfo:
            basic = b"Basic " + base64.b64encode(origin.userinfo.encode("utf-8"))
            self._basic_field = b"authorization: %s\r\n" % basic
        # Absolute Location values that name the upstream itself, with and without an
        # explicit default port (nginx's default proxy_redirect).
        base = f"{origin.scheme}://".encode() + origin.authority
        self._own_origins = [base + origin.prefix]
        explicit = f"{origin.scheme}://{origin.host}:{origin.port}".encode() + origin.prefix
        if explicit != self._own_origins[0]:
            self._own_origins.append(explicit)

    async def aclose(self) -> None:
        """Close the pooled upstream connections. Safe to call more than once."""
        await self.pool.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection: proxy HTTP and websockets, answer lifespan."""
        kind = scope["type"]
        if kind == "http":
            if "request_id" in (scope.get("state") or ()):
                await self._proxy(scope, receive, send)
            else:
                await self._proxy(scope, receive, _with_request_id(scope, send))
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)

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

    # -- websocket -------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Relay an admitted WebSocket connection to the upstream's ``ws(s)://`` address,
        with the same request headers an HTTP request would get."""
        state: dict[str, Any] = scope.setdefault("state", {})
        request_id = state.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            request_id = state["request_id"] = new_request_id()
        target = self._target(scope)
        if target is None:
            await receive()  # websocket.connect
            error = BadRequest("The request target must be a path starting with '/'.")
            body = error_json(error, request_id)
            headers = [*_JSON_HEADERS, (b"x-request-id", request_id.encode())]
            await reject_websocket(scope, send, 400, headers, body, error.code)
            return
        block, _, _ = self._request_headers(scope, state, request_id)
        scheme = "wss" if self.origin.scheme == "https" else "ws"
        url = f"{scheme}://{self.origin.authority.decode('latin-1')}{target.decode('ascii')}"
        await proxy_websocket(
            scope,
            receive,
            send,
            url=url,
            headers=_fields(block),
            request_id=request_id,
            connect_timeout=self._connect_timeout,
            open_timeout=self._timeout,
        )

    # -- http ------------------------------------------------------------------------------

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: dict[str, Any] = scope.setdefault("state", {})
        request_id = state.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            # Served without the gateway: the proxy's own errors still carry an id.
            request_id = new_request_id()
            state["request_id"] = request_id
            state["own_request_id"] = True

        target = self._target(scope)
        if target is None:
            error: ApiError = BadRequest(
                "The request target must be a path starting with '/'; "
                "send an origin-form request such as 'GET /v1/resource'."
            )
            await _reply_error(send, error, request_id)
            return
        headers, content_length, caller_host = self._request_headers(scope, state, request_id)
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
        body: bytes | AsyncIterator[bytes] | None
        task, loop = self._current_task()
        watch = _Watch(receive, task, loop, self._watches)
        more = message.get("more_body", False)
        if more and content_length is None:
            # A body of unknown length (chunked): a small one is gathered and sent with a
            # Content-Length, since many upstream servers (WSGI ones among them) refuse
            # chunked requests; past BUFFER_BODY it streams chunked.
            parts = [first]
            size = len(first)
            while more and size <= BUFFER_BODY:
                message = await receive()
                if message["type"] == "http.disconnect":
                    state["aborted"] = 499
                    return
                chunk = message.get("body", b"")
                parts.append(chunk)
                size += len(chunk)
                more = message.get("more_body", False)
            first = b"".join(parts)
        if more:
            # Streamed: with the caller's Content-Length when it gave one, else chunked.
            body = self._stream_body(first, receive, watch)
        else:
            content_length = None  # a body in bytes gets its Content-Length from the pool
            if limit is not None and len(first) > limit:
                await _reply_error(send, _too_large(limit), request_id)
                return
            body = first or None
            watch.arm()

        started = False
        try:
            if self._total_timeout is not None:
                async with asyncio.timeout(self._total_timeout):
                    started = await self._exchange(
                        scope,
                        send,
                        body,
                        content_length,
                        target,
                        headers,
                        request_id,
                        state,
                        caller_host,
                    )
            else:
                started = await self._exchange(
                    scope,
                    send,
                    body,
                    content_length,
                    target,
                    headers,
                    request_id,
                    state,
                    caller_host,
                )
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            # The caller left: nobody is left to read the answer. Returning releases the
            # gateway's in-flight slot; the upstream connection was closed by the cancel.
            task.uncancel()
            state["aborted"] = 499
        except TimeoutError:
            # The total timeout ([upstream] total_timeout) ran out.
            started = state.get("response_started", False)
            self._log_failure("total timeout", request_id, None)
            if started:
                state["aborted"] = 502  # cut the caller's connection: the body is short
            else:
                await _reply_error(
                    send,
                    UpstreamTimeout(
                        f"The upstream API did not finish answering within "
                        f"{self._total_timeout:g} s (total timeout). Retry later."
                    ),
                    request_id,
                )
        finally:
            watch.stop()

    async def _exchange(
        self,
        scope: Scope,
        send: Send,
        body: bytes | AsyncIterator[bytes] | None,
        length: int | None,
        target: bytes,
        headers: bytes,
        request_id: str,
        state: dict[str, Any],
        caller_host: bytes | None,
    ) -> bool:
        """Send the request upstream and stream the answer back (or an error envelope)."""
        try:
            response = await self.pool.request(
                scope["method"].encode("ascii"), target, headers, body, length=length
            )
        except _ClientGone:
            state["aborted"] = 499
            return False
        except _BodyTooLarge:
            await _reply_error(send, _too_large(self._max_body_size or 0), request_id)
            return False
        except UpstreamError as exc:
            self._log_failure(type(exc).__name__, request_id, exc)
            await _reply_error(send, self._error_for(exc), request_id)
            return False

        try:
            drop = _RESPONSE_DROP_LIMITED if state.get("limited") else _RESPONSE_DROP
            out: list[tuple[bytes, bytes]] = []
            connection: list[bytes] | None = None
            for name, value in response.headers:
                if name in drop:
                    if name == b"connection":
                        connection = [*(connection or ()), value]
                    continue
                if name in _LOCATIONS:
                    value = self._rewrite_location(value, scope, caller_host)
                out.append((name, value))
            if connection:
                named = _connection_tokens(connection)
                out = [item for item in out if item[0] not in named]
            start = {"type": "http.response.start", "status": response.status, "headers": out}
            if response.complete:
                # The whole answer came with its head: one message, the common case.
                payload = await response.read()
                await send(start)
                state["response_started"] = True
                await send({"type": "http.response.body", "body": payload, "more_body": False})
                return True
            await send(start)
            state["response_started"] = True
            try:
                while chunk := await response.next_chunk():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except UpstreamError as exc:
                # The answer has started: no envelope can follow. Returning without the
                # final message makes the server close the caller's connection, which is
                # how the caller learns the body is incomplete.
                self._log_failure("failed mid-body: " + type(exc).__name__, request_id, exc)
                state["aborted"] = 502
                return True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return True
        finally:
            response.close()

    def _error_for(self, exc: UpstreamError) -> ApiError:
        if isinstance(exc, UpstreamConnectTimeout):
            return UpstreamUnavailable(
                f"The upstream API did not accept a connection within "
                f"{self._connect_timeout:g} s. Retry later."
            )
        if isinstance(exc, UpstreamConnectError):
            return UpstreamUnavailable(
                "The upstream API could not be reached (connection failed). Retry later."
            )
        if isinstance(exc, UpstreamPoolTimeout):
            return UpstreamTimeout(
                f"Every connection to the upstream API stayed busy for "
                f"{self.pool.pool_timeout:g} s. Retry later."
            )
        if isinstance(exc, UpstreamReadTimeout):
            return UpstreamTimeout(
                f"The upstream API did not answer within {self._timeout:g} s. Retry later."
            )
        return UpstreamUnavailable(
            "The upstream API closed the connection or sent an invalid answer. Retry later."
        )

    def _log_failure(self, what: str, request_id: str, exc: Exception | None) -> None:
        logger.warning(
            "upstream request failed",
            extra={
                "request_id": request_id,
                "upstream": self.origin.url,
                "error": what,
                "detail": str(exc) if exc is not None else "",
            },
        )

    def _target(self, scope: Scope) -> bytes | None:
        """Request line target for the upstream, or None if the request's is not a path."""
        raw: bytes | None = scope.get("raw_path")
        if not raw:
            raw = quote(scope["path"], safe=_PATH_SAFE).encode("ascii")
        # An absolute-form target ("http://other/x") would reach the upstream as one and
        # name a host the gateway never checked; only origin-form paths go through.
        if raw[:1] != b"/":
            return None
        target = self.origin.prefix + raw if self.origin.prefix else raw
        query: bytes = scope.get("query_string", b"")
        if query:
            target += b"?" + query
        if not target.isascii():
            # Some servers pass raw UTF-8 through; an HTTP/1.1 request line cannot carry it.
            target = quote(target, safe=_PRINTABLE_ASCII).encode("ascii")
        return target

    def _current_task(self) -> tuple[asyncio.Task[Any], asyncio.AbstractEventLoop]:
        """The task serving this request and its loop, without asking asyncio for the
        running loop (a ``getpid()`` system call on Python 3.11) unless this thread's loop
        is not the remembered one: a thread runs one loop at a time, and the remembered
        loop of a thread that ended (its id reused) has no current task."""
        thread = threading.get_ident()
        known = self._loop
        task = asyncio.current_task(known[1]) if known is not None and known[0] == thread else None
        if task is None:
            loop = asyncio.get_running_loop()
            self._loop = (thread, loop)
            task = asyncio.current_task(loop)
            assert task is not None
        return task, task.get_loop()

    def _request_headers(
        self, scope: Scope, state: dict[str, Any], request_id: str
    ) -> tuple[bytes, int | None, bytes | None]:
        """The header block for the upstream, the declared body length, and the caller's
        ``Host``.

        The block is what goes on the wire, each field ``name: value\\r\\n``: ``Host``
        first, then the caller's fields that may go on, in their order, then the proxy's
        own (credentials for the upstream, forwarded headers, request id, identity).
        """
        kept: list[tuple[bytes, bytes]] = []
        # Fields the proxy owns or drops: set aside in one test per field, looked at after.
        owned: list[tuple[bytes, bytes]] = []
        drop = _REQUEST_DROP
        prefix = IDENTITY_HEADER_PREFIX
        for field in scope["headers"]:
            name = field[0]
            if name in drop or name.startswith(prefix):
                owned.append(field)
            else:
                kept.append(field)

        connection: list[bytes] | None = None
        caller_host: bytes | None = None
        content_length: bytes | None = None
        forwarded: list[tuple[bytes, bytes]] | None = None
        authorization: bytes | None = None
        api_key = False
        for name, value in owned:
            if name == b"host":
                caller_host = value
            elif name == b"content-length":
                content_length = value
            elif name == b"connection":
                connection = [*(connection or ()), value]
            elif name in FORWARDED_HEADERS:
                forwarded = [*(forwarded or ()), (name, value)]
            elif name == b"authorization":
                authorization = value
            elif name == b"x-api-key":
                api_key = True
            # anything else (hop-by-hop, x-tollhouse-*, expect, ...) is dropped

        if connection:
            named = _connection_tokens(connection)
            named.discard(b"host")  # the upstream's own Host is ours to send
            kept = [item for item in kept if item[0] not in named]
            if forwarded:
                forwarded = [item for item in forwarded if item[0] not in named]
            if b"content-length" in named:
                content_length = None

        host = self._host_field
        if self._preserve_host and caller_host is not None:
            host = b"host: %s\r\n" % caller_host
        credentials = self._basic_field
        forward = self._forward_authorization and api_key and authorization is not None
        if credentials is None and forward:
            credentials = b"authorization: %s\r\n" % authorization
        identity = state.get("identity")
        if isinstance(identity, Identity):
            own = _IDENTIFIED_FIELDS % (
                request_id.encode("latin-1"),
                identity.org.encode("utf-8"),
                identity.environment.encode("utf-8"),
                identity.key_id.encode("utf-8"),
                identity.role.encode("utf-8"),
            )
        else:
            own = b"x-request-id: %s\r\n" % request_id.encode("latin-1")
        block = b"".join(
            (
                host,
                b"".join([b"%s: %s\r\n" % field for field in kept]),
                credentials or b"",
                self._forwarded_fields(scope, state, forwarded, caller_host),
                own,
            )
        )

        length: int | None = None
        if content_length is not None:
            try:
                length = int(content_length)
            except ValueError:  # the server has validated it; never fail on it here
                length = None
        return block, length, caller_host

    def _forwarded_fields(
        self,
        scope: Scope,
        state: dict[str, Any],
        given: list[tuple[bytes, bytes]] | None,
        caller_host: bytes | None,
    ) -> bytes:
        """``X-Forwarded-*``, ``Forwarded`` and ``X-Real-IP``, as header block lines.

        From an untrusted peer, whatever the caller sent under these names is dropped and
        the proxy's own account replaces it. From a trusted proxy (``scope["state"]["peer"]``
        set by :meth:`tollhouse.http.forwarded.TrustedProxies.resolve`, which also put the
        client address it resolved in ``scope["client"]``), its headers are kept and the
        peer is appended to the chain.
        """
        client = scope.get("client")
        peer = state.get("peer")
        if peer is None or not given:
            if caller_host is not None and len(caller_host) > _MEMO_HOST:
                return self._own_forwarded(client, scope, caller_host)
            memo = self._forwarded_memo
            key = (client[0] if client else None, scope.get("scheme"), caller_host)
            lines = memo.get(key)
            if lines is None:
                lines = self._own_forwarded(client, scope, caller_host)
                remember(memo, _FORWARDED_MEMO, key, lines)
            return lines
        client_host = str(client[0]).encode("latin-1") if client else None
        scheme = str(scope.get("scheme") or "http").encode("ascii")
        fields: list[tuple[bytes, bytes]] = []
        chain = [v for n, v in given if n == b"x-forwarded-for"]
        chain.append(str(peer[0]).encode("latin-1"))
        fields.append((b"x-forwarded-for", b", ".join(chain)))
        kept = {n for n, _ in given}
        for name, value in given:
            if name in (b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"):
                fields.append((name, value))
        if b"x-forwarded-proto" not in kept:
            fields.append((b"x-forwarded-proto", scheme))
        if b"x-forwarded-host" not in kept and caller_host is not None:
            fields.append((b"x-forwarded-host", caller_host))
        if client_host is not None:
            fields.append((b"x-real-ip", client_host))
        return b"".join([b"%s: %s\r\n" % field for field in fields])

    @staticmethod
    def _own_forwarded(client: Any, scope: Scope, caller_host: bytes | None) -> bytes:
        """The forwarded header lines of a caller that is not a trusted proxy: the
        proxy's own account of it, whatever it sent under these names."""
        client_host = str(client[0]).encode("latin-1") if client else None
        scheme = str(scope.get("scheme") or "http").encode("ascii")
        if client_host is None:
            if caller_host is None:
                return b"x-forwarded-proto: %s\r\n" % scheme
            return b"x-forwarded-proto: %s\r\nx-forwarded-host: %s\r\n" % (scheme, caller_host)
        node = b'"[' + client_host + b']"' if b":" in client_host else client_host
        if caller_host is None:
            return _FORWARDED_FIELDS_NO_HOST % (client_host, client_host, node, scheme, scheme)
        return _FORWARDED_FIELDS % (
            client_host,
            client_host,
            node,
            scheme,
            caller_host.replace(b'"', b""),
            scheme,
            caller_host,
        )

    def _rewrite_location(self, value: bytes, scope: Scope, caller_host: bytes | None) -> bytes:
        """An absolute URL at the upstream's own origin → the same place at the caller's."""
        if caller_host is None or value[:1] == b"/":
            return value
        for own in self._own_origins:
            if value.startswith(own):
                rest = value[len(own) :]
                if rest[:1] not in (b"", b"/", b"?", b"#"):
                    continue  # another path that merely shares the prefix
                scheme = str(scope.get("scheme") or "http").encode("ascii")
                return scheme + b"://" + caller_host + (rest or b"/")
        return value

    async def _stream_body(
        self, first: bytes, receive: Receive, watch: _Watch
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
            size += len(chunk)
            if limit is not None and size > limit:
                raise _BodyTooLarge
            if not more:
                watch.arm()  # receive() is free now: the watch may take it over
            if chunk:
                yield chunk


def _fields(block: bytes) -> list[tuple[bytes, bytes]]:
    """A header block (``name: value\\r\\n`` lines) as ``(name, value)`` pairs."""
    return [
        (name, value)
        for line in block.split(b"\r\n")
        if line
        for name, _, value in (line.partition(b": "),)
    ]


def _connection_tokens(values: list[bytes]) -> set[bytes]:
    """Header names a ``Connection`` field lists: hop-by-hop for this message only."""
    return {
        token for value in values for part in value.split(b",") if (token := part.strip().lower())
    }


def _with_request_id(scope: Scope, send: Send) -> Send:
    """``send`` adding ``X-Request-Id`` to the answer (the proxy served without a gateway)."""

    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            request_id = scope["state"]["request_id"]
            message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
        await send(message)

    if scope.get("state") is None:
        scope["state"] = {}
    return sender


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than {limit} bytes; send a smaller one.")


async def _reply_error(send: Send, error: ApiError, request_id: str) -> None:
    # X-Request-Id is added by the gateway in front (or by ``ReverseProxy.__call__``
    # when served alone), like on every other answer.
    body = error_json(error, request_id)
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode("ascii"))]
    for name, value in error.headers.items():
        headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
