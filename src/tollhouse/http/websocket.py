"""Proxying an admitted WebSocket connection to an upstream WebSocket server.

:func:`proxy_websocket` is what the reverse proxy runs for a ``websocket`` scope once the
gateway has admitted the handshake. It opens its own WebSocket connection to the upstream
(the ``websockets`` client), then relays:

* the opening handshake: the caller's offered subprotocols go upstream, the upstream's
  choice comes back in ``websocket.accept``; an upstream that refuses (403, 404, …) has
  its status, headers and body passed to the caller through the ``websocket.http.response``
  ASGI extension, or — on a server without it — a ``websocket.close`` (1008 for a 4xx,
  1011 otherwise), which the server turns into a refused handshake;
* every message, text or binary, both ways, one at a time: the next message is read from
  one side only once the previous one was handed to the other, so a slow reader slows
  its writer instead of filling memory (the client library keeps at most ``max_queue``
  frames from the upstream, the server's own buffer is as small on the caller's side);
* close codes and reasons both ways: the upstream closing 4001 "bye" closes the caller's
  connection with 4001 "bye" and the other way round. Codes that cannot be sent in a
  close frame are mapped: "no code" (1005) becomes 1000; a peer that vanished (1006) is
  reported as 1001 (going away) to the upstream and 1011 to the caller.

An upstream that cannot be reached is a 502 ``UPSTREAM_UNAVAILABLE`` (a connect or
opening-handshake timeout a 504 ``UPSTREAM_TIMEOUT``) in the usual error envelope, or a
close 1011 without the extension. The upstream's address is logged, never sent to the
caller: error messages are generic and a ``Location`` naming the upstream is made
relative.

Cancelling the coroutine (the server shutting down, the gateway cancelling it) stops both
relays and closes the upstream connection with 1001; nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, Final

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.frames import Close
from websockets.headers import build_authorization_basic
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import WebSocketURI, parse_uri

from tollhouse.errors import ApiError, UpstreamTimeout, UpstreamUnavailable, error_json
from tollhouse.http.fields import HOP_BY_HOP_HEADERS, RATE_LIMIT_HEADERS
from tollhouse.http.gateway import Message, Receive, Scope, Send, reject_websocket

__all__ = ["proxy_websocket"]

logger = logging.getLogger(__name__)

Header = tuple[bytes, bytes]

#: Request headers of the opening handshake the client library writes itself (``host`` is
#: read separately: it names the authority the upstream is asked for).
_REQUEST_OWNED: Final = HOP_BY_HOP_HEADERS | {
    b"host",
    b"content-length",
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
    b"sec-websocket-accept",
}

#: Upstream response headers the server or the gateway in front owns.
_RESPONSE_DROP: Final = _REQUEST_OWNED | {b"date", b"x-request-id"}

_LOCATIONS: Final = frozenset({b"location", b"content-location"})

#: Close codes a peer may send (RFC 6455 §7.4 and the IANA registry), besides 3000-4999.
_SENDABLE: Final = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013})

#: Close codes the relay uses itself.
NORMAL_CLOSURE: Final = 1000
GOING_AWAY: Final = 1001
INTERNAL_ERROR: Final = 1011


async def proxy_websocket(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    url: str,
    headers: Iterable[Header],
    request_id: str,
    connect_timeout: float = 5.0,
    open_timeout: float = 10.0,
    close_timeout: float = 10.0,
    max_message_size: int | None = 2**20,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """Relay the ASGI ``websocket`` connection ``scope`` to the upstream at ``url``.

    Call it instead of answering the handshake yourself: it receives
    ``websocket.connect``, opens the upstream connection and only then accepts (or
    refuses) the caller's.

    Args:
        scope: the connection's ASGI scope; its ``subprotocols`` are offered upstream and
            its ``extensions`` tell whether a refusal can carry an HTTP response.
        receive: the connection's ASGI ``receive``.
        send: the connection's ASGI ``send``.
        url: ``ws://`` or ``wss://`` URL of the upstream, with the request target (path
            and query string) to ask it for, e.g. ``ws://10.0.0.5:9000/v1/stream?x=1``.
            Credentials in it (``ws://user:pass@host``) are sent as HTTP Basic auth
            unless ``headers`` carry an ``authorization``.
        headers: request headers for the upstream, prepared by the caller (forwarded and
            identity headers, the caller's own that may go on); names in lower case. A
            ``host`` among them is the authority the upstream is asked for (the TCP
            connection still goes to ``url``'s); the WebSocket handshake fields
            (``sec-websocket-*``, ``upgrade``, ``connection``) and other hop-by-hop
            fields are the client library's and are skipped.
        request_id: the request's id, in the error envelope and in log lines.
        connect_timeout: seconds to open the TCP connection to the upstream (then 504).
        open_timeout: seconds for the whole opening — TCP, TLS, the upgrade exchange —
            before the caller gets a 504.
        close_timeout: seconds to wait for the upstream to answer a close frame.
        max_message_size: largest message accepted from the upstream, in bytes (None:
            no limit); a bigger one fails the upstream connection with 1009, which the
            caller is told.
        ssl_context: TLS settings for a ``wss://`` upstream (default: the system's
            trust store, hostname checked).

    Returns:
        The handshake's status as the caller saw it: 101 once both connections were
        open (whatever happened later), the upstream's status when it refused, 502 or
        504 when it could not be reached, 499 when the caller left first.

    Raises:
        ValueError: ``url`` is not a ``ws://`` or ``wss://`` URL with a host.
    """
    try:
        target = parse_uri(url)
    except InvalidURI as exc:
        raise ValueError(f"not a ws:// or wss:// URL with a host: {url!r} ({exc})") from None
    authority = f"{target.host}:{target.port}"

    first = await receive()
    if first["type"] != "websocket.connect":
        return 499  # the caller left before the handshake could be answered
    forwarded, host = _request_headers(headers, target)
    subprotocols = [Subprotocol(p) for p in scope.get("subprotocols") or ()]
    try:
        upstream = await _open(
            target,
            host,
            forwarded,
            subprotocols,
            connect_timeout=connect_timeout,
            open_timeout=open_timeout,
            close_timeout=close_timeout,
            max_message_size=max_message_size,
            ssl_context=ssl_context,
        )
    except InvalidStatus as exc:
        response = exc.response
        status = response.status_code
        logger.info(
            "upstream refused the websocket handshake",
            extra={"request_id": request_id, "upstream": authority, "status": status},
        )
        limited = bool((scope.get("state") or {}).get("limited"))
        refusal = [
            (b"content-length", str(len(response.body)).encode("ascii")),
            *_response_headers(response.headers.raw_items(), target, limited),
        ]
        reason = f"{status} {_phrase(status)}"
        await reject_websocket(scope, send, status, refusal, bytes(response.body), reason)
        return status
    except (TimeoutError, OSError, InvalidHandshake) as exc:
        error: ApiError
        if isinstance(exc, TimeoutError):
            error = UpstreamTimeout(
                "The upstream did not open the WebSocket connection in time; retry later."
            )
        else:
            error = UpstreamUnavailable(
                "The upstream could not be reached to open the WebSocket connection; retry later."
            )
        logger.warning(
            "upstream websocket connection failed",
            extra={
                "request_id": request_id,
                "upstream": authority,
                "status": error.status,
                "error": type(exc).__name__,
                "detail": str(exc),
            },
        )
        body = error_json(error, request_id)
        envelope = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode("ascii")),
        ]
        await reject_websocket(scope, send, error.status, envelope, body, error.code)
        return error.status

    try:
        limited = bool((scope.get("state") or {}).get("limited"))
        accept: Message = {
            "type": "websocket.accept",
            "subprotocol": upstream.subprotocol,
            "headers": _response_headers(upstream.response.headers.raw_items(), target, limited)
            if upstream.response is not None
            else [],
        }
        try:
            await send(accept)
        except OSError:
            await upstream.close(GOING_AWAY)  # the caller left while the upstream opened
            return 499
        await _relay(receive, send, upstream, request_id, authority)
    finally:
        # Normally closed already; after a cancellation or an error, close it now.
        if upstream.state is not State.CLOSED:
            with contextlib.suppress(Exception):
                await upstream.close(GOING_AWAY)
    return 101


class _connect(connect):
    """``websockets``' connect, without following redirects: an upstream's 3xx is its
    answer to the caller, not an instruction for the gateway."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


async def _open(
    target: WebSocketURI,
    host: str | None,
    forwarded: list[tuple[str, str]],
    subprotocols: list[Subprotocol],
    *,
    connect_timeout: float,
    open_timeout: float,
    close_timeout: float,
    max_message_size: int | None,
    ssl_context: ssl.SSLContext | None,
) -> ClientConnection:
    """Open the upstream connection: TCP to ``target`` within ``connect_timeout``, then
    the opening handshake, all within ``open_timeout``."""
    # The request names `host` when given; the TCP connection goes to `target` anyway.
    uri = _request_uri(target, host)
    options: dict[str, Any] = {}
    if target.secure:
        options["ssl"] = ssl_context or ssl.create_default_context()
        options["server_hostname"] = target.host
    async with asyncio.timeout(open_timeout):
        async with asyncio.timeout(connect_timeout):
            sock = await _open_socket(target.host, target.port)
        try:
            return await _connect(
                uri,
                sock=sock,
                subprotocols=subprotocols or None,
                additional_headers=forwarded,
                user_agent_header=None,  # the caller's own User-Agent is among `forwarded`
                compression=None,
                open_timeout=None,  # the enclosing timeout covers the whole opening
                close_timeout=close_timeout,
                max_size=max_message_size,
                **options,
            )
        except BaseException:
            sock.close()  # harmless when the transport took it over and closed it already
            raise


async def _open_socket(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket to ``host:port`` (each address in turn)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error = OSError(f"{host} has no address")
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise error


def _request_uri(target: WebSocketURI, host: str | None) -> str:
    """The URI the handshake request is built from: ``target`` without credentials, with
    ``host`` as its authority when one is given and valid."""
    scheme = "wss" if target.secure else "ws"
    if host:
        uri = f"{scheme}://{host}{target.resource_name}"
        try:
            parse_uri(uri)
        except InvalidURI:
            logger.debug("Host header is not a valid authority; using the upstream's")
        else:
            return uri
    default = 443 if target.secure else 80
    name = f"[{target.host}]" if ":" in target.host else target.host
    port = "" if target.port == default else f":{target.port}"
    return f"{scheme}://{name}{port}{target.resource_name}"


def _request_headers(
    headers: Iterable[Header], target: WebSocketURI
) -> tuple[list[tuple[str, str]], str | None]:
    """The caller's headers as the client library takes them, and the ``host`` among
    them."""
    out: list[tuple[str, str]] = []
    host: str | None = None
    authorization = False
    for name, value in headers:
        name = name.lower()
        if name in _REQUEST_OWNED:
            if name == b"host":
                host = value.decode("latin-1")
            continue
        if name == b"authorization":
            authorization = True
        out.append((name.decode("latin-1"), value.decode("latin-1")))
    if target.user_info is not None and not authorization:
        out.append(("authorization", build_authorization_basic(*target.user_info)))
    return out, host


def _response_headers(
    raw: Iterable[tuple[str, str]], target: WebSocketURI, limited: bool
) -> list[Header]:
    """Upstream response headers for the caller: minus hop-by-hop and handshake fields,
    ``Location`` made relative when it names the upstream."""
    out: list[Header] = []
    for name, value in raw:
        key = name.lower().encode("latin-1")
        if key in _RESPONSE_DROP or (limited and key in RATE_LIMIT_HEADERS):
            continue
        data = value.encode("latin-1")
        if key in _LOCATIONS:
            data = _relative(data, target)
        out.append((key, data))
    return out


def _relative(location: bytes, target: WebSocketURI) -> bytes:
    """``location`` without scheme and authority when they are the upstream's."""
    lowered = location.lower()
    host = target.host.encode("ascii")
    if b":" in host:
        host = b"[" + host + b"]"
    default = 443 if target.secure else 80
    authorities = [host + b":%d" % target.port]
    if target.port == default:
        authorities.append(host)
    for scheme in (b"http://", b"https://", b"ws://", b"wss://"):
        for authority in authorities:
            prefix = scheme + authority
            if lowered.startswith(prefix) and lowered[len(prefix) : len(prefix) + 1] in (
                b"",
                b"/",
                b"?",
                b"#",
            ):
                rest = location[len(prefix) :]
                return rest if rest[:1] == b"/" else b"/" + rest
    return location


async def _relay(
    receive: Receive, send: Send, upstream: ClientConnection, request_id: str, authority: str
) -> None:
    """Pass messages both ways until one side closes, then close the other side with the
    same code and reason."""
    to_upstream = asyncio.ensure_future(_caller_to_upstream(receive, upstream))
    to_caller = asyncio.ensure_future(_upstream_to_caller(upstream, send))
    try:
        await asyncio.wait((to_upstream, to_caller), return_when=asyncio.FIRST_COMPLETED)
        if to_upstream.done() and to_upstream.result() is not None:
            # The caller closed (or vanished): close the upstream with its code.
            code, reason = to_upstream.result() or (NORMAL_CLOSURE, "")
            to_caller.cancel()
            await asyncio.wait((to_caller,))
            sendable = _to_upstream_code(code)
            await upstream.close(sendable, reason if sendable == code else "")
            return
        # The upstream closed, or could not be written to, or the caller could not be
        # written to: wait for the upstream side to finish, then tell the caller.
        closed = await to_caller
        to_upstream.cancel()
        await asyncio.wait((to_upstream,))
        if closed is None:
            # The caller is gone (a send to it failed).
            await upstream.close(GOING_AWAY)
            return
        code, reason = _to_caller_close(closed)
        if code == INTERNAL_ERROR and closed.rcvd is None:
            logger.warning(
                "upstream websocket connection lost",
                extra={"request_id": request_id, "upstream": authority},
            )
        with contextlib.suppress(OSError):
            await send({"type": "websocket.close", "code": code, "reason": reason})
    finally:
        for task in (to_upstream, to_caller):
            task.cancel()
        await asyncio.wait((to_upstream, to_caller))
        for task in (to_upstream, to_caller):
            if not task.cancelled() and task.exception() is not None:
                logger.debug("websocket relay stopped", exc_info=task.exception())


async def _caller_to_upstream(
    receive: Receive, upstream: ClientConnection
) -> tuple[int, str] | None:
    """Relay the caller's messages; return its close code and reason when it leaves, or
    None when the upstream is closing (a send to it failed)."""
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.receive":
            text: str | None = message.get("text")
            data: str | bytes = text if text is not None else message.get("bytes") or b""
            try:
                await upstream.send(data)
            except ConnectionClosed:
                return None
        elif kind == "websocket.disconnect":
            return int(message.get("code") or 1005), str(message.get("reason") or "")


async def _upstream_to_caller(upstream: ClientConnection, send: Send) -> ConnectionClosed | None:
    """Relay the upstream's messages; return how it closed, or None when the caller could
    not be written to any more (it left)."""
    while True:
        try:
            data = await upstream.recv()
        except ConnectionClosed as closed:
            return closed
        message: Message = (
            {"type": "websocket.send", "text": data}
            if isinstance(data, str)
            else {"type": "websocket.send", "bytes": data}
        )
        try:
            await send(message)
        except OSError:  # uvicorn's ClientDisconnected, a transport error
            return None


def _to_upstream_code(code: int) -> int:
    """A caller's close code as one that can be sent upstream."""
    if code in _SENDABLE or 3000 <= code < 5000:
        return code
    return NORMAL_CLOSURE if code == 1005 else GOING_AWAY


def _to_caller_close(closed: ConnectionClosed) -> tuple[int, str]:
    """How the upstream closed, as a close code and reason for the caller."""
    frame: Close | None = closed.rcvd or closed.sent
    if frame is None:
        return INTERNAL_ERROR, "upstream connection lost"
    code = frame.code
    if code in _SENDABLE or 3000 <= code < 5000:
        return code, frame.reason
    if code == 1005:
        return NORMAL_CLOSURE, ""
    return INTERNAL_ERROR, "upstream connection lost"


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Refused"
