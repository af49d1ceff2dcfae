"""Connections to one upstream origin: an asyncio protocol per connection, a pool of them.

The per-request cost is what this module is about. A request on a pooled connection is:
pop an idle connection, one ``transport.write`` of head and body (built with one join;
the proxy hands over its header block already encoded), one future awaited for the head,
the body chunks taken from a deque. The connection's response parser is reused from one
answer to the next, and the read timeout costs no timer per request: each connection
keeps one timer that, when it fires, re-arms itself for the current deadline if the
connection has heard from the upstream since (an event-loop timer costs more to create
and cancel than the rest of the client's Python per request). No objects per header
beyond the parser's own, no per-request imports, no ``Request``/``URL`` objects.

Under concurrency the dearest part of a request is not Python but waking the upstream:
a write to a sleeping process pays, in the writer's kernel time, for waking it. So while
other requests are in flight, a request's write waits for the end of the event loop's
turn and leaves with the other requests of that turn, back to back: the upstream is woken
once per turn, not once per request (:meth:`UpstreamPool._post`).
"""

from __future__ import annotations

import asyncio
import collections
import ssl as ssl_module
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import urlsplit

import httptools

from tollhouse.errors import ConfigError
from tollhouse.upstream._errors import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamPoolTimeout,
    UpstreamProtocolError,
    UpstreamReadTimeout,
)

#: Buffered response bytes above which the upstream socket is paused until the reader
#: catches up (below ``_LOW_WATER`` it is resumed).
_HIGH_WATER: Final = 256 * 1024
_LOW_WATER: Final = 64 * 1024

#: Methods safe to send again when a reused connection turns out to be closed before any
#: byte of the answer came back (RFC 9110 §9.2.2).
_IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

_NO_BODY: Final = b"\r\n"
_EMPTY_BODY: Final = b"content-length: 0\r\n\r\n"
_CHUNKED: Final = b"transfer-encoding: chunked\r\n\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"
_BODY_METHODS: Final = frozenset({b"POST", b"PUT", b"PATCH"})

#: Seconds a timer may fire early (the loop clock's resolution is a millisecond) and still
#: count as on time.
_TIMER_SLACK: Final = 0.001


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an upstream is: scheme, host, port, and the path prefix of its base URL."""

    scheme: str
    host: str
    port: int
    prefix: bytes
    """The base URL's path without its trailing slash (``b""`` for none)."""
    authority: bytes
    """``host[:port]`` as a ``Host`` header says it (port omitted when the default)."""
    userinfo: str = ""
    """``user:password`` from the URL, sent as HTTP Basic auth by the proxy."""

    @property
    def url(self) -> str:
        """``scheme://host:port`` with the prefix: for logs."""
        return f"{self.scheme}://{self.host}:{self.port}{self.prefix.decode('latin-1')}"


def parse_origin(url: str) -> Origin:
    """Parse an upstream base URL (``http://host:port/optional/prefix``).

    Raises:
        ConfigError: not an http(s) URL with a host, or with a query or fragment.
    """
    example = "e.g. 'http://127.0.0.1:9000' or 'https://api.internal/v2'"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(
            f"upstream url {url!r} is not a valid URL ({exc}); write it like {example}"
        ) from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"upstream url {url!r} must start with http:// or https://; {example}")
    host = parts.hostname
    if not host:
        raise ConfigError(f"upstream url {url!r} has no host; {example}")
    if parts.query or parts.fragment:
        raise ConfigError(
            f"upstream url {url!r} must not have a query string or fragment; "
            f"give only scheme, host, port and an optional path prefix ({example})"
        )
    default = 443 if parts.scheme == "https" else 80
    real_port = port or default
    shown = f"[{host}]" if ":" in host else host
    authority = shown if real_port == default else f"{shown}:{real_port}"
    userinfo = ""
    if parts.username is not None:
        userinfo = f"{parts.username}:{parts.password or ''}"
    return Origin(
        scheme=parts.scheme,
        host=host,
        port=real_port,
        prefix=parts.path.rstrip("/").encode("latin-1"),
        authority=authority.encode("latin-1"),
        userinfo=userinfo,
    )


class _Connection(asyncio.Protocol):
    """One keep-alive connection; also the ``httptools`` callback target of its answers."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        # The answer being read (reset by ``begin`` for each request).
        self.parser: httptools.HttpResponseParser | None = None
        self.head_only = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.body_done = False
        self.interim = False  # in an interim (1xx) answer, between its head and its end
        self.framed = False  # Content-Length or chunked: EOF before the end is an error
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.reading_paused = False
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future[None] | None = None
        # The read timeout: the loop time by which the awaited answer must show progress,
        # and the connection's one timer (armed for ``timer_due``, at or before it).
        self.due = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_due = 0.0
        self.drain: asyncio.Future[None] | None = None
        self.writing_paused = False
        self.got_bytes = False
        self.keep_alive = False

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None or self.body_done:
            # Bytes nobody asked for (after a complete answer): the connection's framing
            # can no longer be trusted.
            self.abort()
            return
        self.got_bytes = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamProtocolError("the upstream switched protocols unasked"))
            self.abort()
        except httptools.HttpParserError as exc:
            if not self.body_done:
                self._fail(UpstreamProtocolError(f"invalid HTTP from the upstream: {exc}"))
            # else: bytes after a complete answer; the answer stands, the connection goes.
            self.abort()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer.cancel()
        if self.parser is not None and not self.body_done:
            if self.head_done and not self.framed:
                # Read-until-close framing: the end of the connection is the end of the body.
                self.on_message_complete()
            else:
                where = "its headers" if not self.head_done else "the body"
                self._fail(
                    UpstreamDisconnected(f"the upstream closed the connection during {where}")
                )
        drain = self.drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        drain = self.drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.body_done:
            # Another message after the complete answer, in the same read: the upstream's
            # framing cannot be trusted (and a reused parser must not carry a part of it
            # into the next answer). Stops the parser; ``data_received`` closes.
            raise UpstreamProtocolError("the upstream sent bytes after its answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None
        status = parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (103 Early Hints, an unasked 100): the final one follows
            # (llhttp calls ``on_message_complete`` for the interim one: see there).
            self.headers = []
            self.interim = True
            return
        self.status = status
        self.head_done = True
        framed = status in (204, 304) or self.head_only
        if not framed:
            for name, value in self.headers:
                if name == b"content-length" or (
                    name == b"transfer-encoding" and b"chunked" in value.lower()
                ):
                    framed = True
                    break
        self.framed = framed
        if self.head_only:
            # llhttp cannot be told the request was HEAD; a Content-Length on the answer
            # would have it wait for a body that never comes.
            self.on_message_complete()
        else:
            self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False  # the end of an interim answer, not of the answer
            return
        if not self.body_done:
            parser = self.parser
            # Asked here: once the message is over, llhttp has reset its flags.
            self.keep_alive = parser is not None and parser.should_keep_alive()
            self.body_done = True
            self._wake()

    # -- used by the pool and the response --------------------------------------------------

    def begin(self, head_only: bool) -> None:
        """Get ready to read the answer to a new request."""
        if self.parser is None or self.head_only:
            # After a HEAD answer llhttp may still expect the body its Content-Length
            # announced (see ``on_headers_complete``): that parser is not reused. Any other
            # parser that got here read its last answer whole (the connection was reusable)
            # and is ready for the next one.
            self.parser = httptools.HttpResponseParser(self)
        self.head_only = head_only
        self.status = 0
        self.headers = []
        self.head_done = False
        self.body_done = False
        self.interim = False
        self.framed = False
        self.chunks.clear()
        self.buffered = 0
        self.error = None
        self.got_bytes = False
        self.keep_alive = False

    def reusable(self) -> bool:
        """True when the answer was read whole and both sides keep the connection."""
        return (
            not self.closed
            and self.body_done
            and self.error is None
            and not self.chunks
            and self.keep_alive
        )

    def abort(self) -> None:
        """Close now, discarding anything buffered."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, idle: float) -> None:
        """Wait for the next event of the answer (head, body bytes, end or error); fail
        with :class:`UpstreamReadTimeout` after ``idle`` seconds without one."""
        loop = self.loop
        due = self.due = loop.time() + idle
        if self.timer is None or self.timer_due > due:
            # No timer yet, or one armed for later than this (shorter) timeout allows.
            if self.timer is not None:
                self.timer.cancel()
            self.timer = loop.call_at(due, self._check_read_timeout)
            self.timer_due = due
        waiter = self.waiter = loop.create_future()
        try:
            await waiter
        finally:
            self.waiter = None

    def _check_read_timeout(self) -> None:
        self.timer = None
        waiter = self.waiter
        if waiter is None or waiter.done() or self.closed:
            return  # nothing awaited now: the next wait arms the timer again
        due = self.due
        if due - self.loop.time() > _TIMER_SLACK:
            # Progress since the timer was armed moved the deadline: wait for the new one.
            self.timer = self.loop.call_at(due, self._check_read_timeout)
            self.timer_due = due
            return
        self._fail(UpstreamReadTimeout("the upstream sent nothing within the read timeout"))
        self.abort()

    async def write_body(self, body: AsyncIterable[bytes], chunked: bool, idle: float) -> None:
        """Stream a request body, waiting out the upstream's back-pressure."""
        transport = self.transport
        assert transport is not None
        try:
            await self._write_chunks(transport, body, chunked, idle)
        finally:
            close = getattr(body, "aclose", None)
            if close is not None:
                await close()  # an async generator left early: let it clean up now

    async def _write_chunks(
        self,
        transport: asyncio.Transport,
        body: AsyncIterable[bytes],
        chunked: bool,
        idle: float,
    ) -> None:
        async for chunk in body:
            if self.closed or self.head_done:
                # The upstream answered (or left) before taking the whole body: stop sending.
                return
            if not chunk:
                continue
            if chunked:
                transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            else:
                transport.write(chunk)
            if self.writing_paused:
                drain = self.drain = self.loop.create_future()
                timer = self.loop.call_later(idle, self._write_timed_out, drain)
                try:
                    await drain
                finally:
                    timer.cancel()
                    self.drain = None
                if self.error is not None:
                    raise self.error
        if chunked and not self.closed and not self.head_done:
            transport.write(_LAST_CHUNK)

    def _write_timed_out(self, drain: asyncio.Future[None]) -> None:
        if not drain.done():
            self.error = UpstreamReadTimeout(
                "the upstream did not take the request body within the read timeout"
            )
            self.abort()
            drain.set_result(None)


class UpstreamResponse:
    """An upstream's answer: status and headers at once, the body as it streams in.

    Call :meth:`close` (or read the body to its end with :meth:`read` /
    :meth:`iter_body`, which close it) when done: that gives the connection back to the
    pool, or closes it if the answer was not taken whole.
    """

    __slots__ = ("_conn", "_pool", "_read_timeout", "headers", "status")

    def __init__(self, conn: _Connection, pool: UpstreamPool, read_timeout: float) -> None:
        self._conn: _Connection | None = conn
        self._pool = pool
        self._read_timeout = read_timeout
        self.status = conn.status
        #: Header fields in the order received, names lower-cased.
        self.headers = conn.headers

    @property
    def complete(self) -> bool:
        """True once the whole body has been received (it may still be buffered here)."""
        conn = self._conn
        return conn is None or conn.body_done

    async def next_chunk(self) -> bytes:
        """The next piece of the body; ``b""`` once the body has ended.

        Raises:
            UpstreamError: the upstream failed, timed out or closed before the end.
        """
        conn = self._conn
        if conn is None:
            return b""
        while True:
            chunks = conn.chunks
            if chunks:
                chunk = chunks.popleft()
                conn.buffered -= len(chunk)
                if conn.reading_paused and conn.buffered < _LOW_WATER and conn.transport:
                    conn.reading_paused = False
                    conn.transport.resume_reading()
                return chunk
            if conn.error is not None:
                self._finish()
                raise conn.error
            if conn.body_done:
                self._finish()
                return b""
            await conn.wait(self._read_timeout)

    async def iter_body(self) -> AsyncIterator[bytes]:
        """The body's pieces in order; the response is closed at the end."""
        try:
            while chunk := await self.next_chunk():
                yield chunk
        finally:
            self.close()

    async def read(self) -> bytes:
        """The whole body (the response is closed after)."""
        conn = self._conn
        if conn is not None and conn.body_done and conn.error is None:
            # The common case for small answers: everything came with the head.
            body = b"".join(conn.chunks)
            conn.chunks.clear()
            conn.buffered = 0
            self._finish()
            return body
        parts = [chunk async for chunk in self.iter_body()]
        return b"".join(parts)

    def close(self) -> None:
        """Give the connection back (if the answer was read whole) or close it."""
        if self._conn is not None:
            self._finish()

    def _finish(self) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            self._pool._release(conn)


class UpstreamPool:
    """Keep-alive connections to one upstream origin, and requests sent on them.

    Args:
        origin: the upstream (see :func:`parse_origin`).
        max_connections: most connections open at once; further requests wait for one.
        connect_timeout: seconds to open a connection (then :class:`UpstreamConnectTimeout`).
        read_timeout: seconds the upstream may stay silent while its answer is awaited,
            and while it does not take the request body (then :class:`UpstreamReadTimeout`).
        pool_timeout: seconds a request may wait for a free connection when all
            ``max_connections`` are busy (then :class:`UpstreamPoolTimeout`).
        keepalive_expiry: an idle connection older than this is closed, not reused: keep
            it below the upstream's own idle timeout, so the pool never sends on a
            connection the upstream is closing.
        max_idle: most idle connections kept (default: ``max_connections``).
        ssl_context: TLS settings for ``https`` (default: the system's trust store).
    """

    def __init__(
        self,
        origin: Origin,
        *,
        max_connections: int = 100,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        pool_timeout: float = 30.0,
        keepalive_expiry: float = 4.0,
        max_idle: int | None = None,
        ssl_context: ssl_module.SSLContext | None = None,
    ) -> None:
        for name, value in (
            ("max_connections", max_connections),
            ("connect_timeout", connect_timeout),
            ("read_timeout", read_timeout),
            ("pool_timeout", pool_timeout),
        ):
            if not value > 0:
                raise ConfigError(f"upstream {name} must be greater than 0, got {value!r}")
        self.origin = origin
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.pool_timeout = pool_timeout
        self.keepalive_expiry = keepalive_expiry
        self.max_idle = max_connections if max_idle is None else max_idle
        self._ssl: ssl_module.SSLContext | None = None
        if origin.scheme == "https":
            self._ssl = ssl_context or ssl_module.create_default_context()
        self._idle: list[_Connection] = []
        self._open = 0  # connections open or being opened
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self._closed = False
        # Requests to write at the end of the event loop's turn (see ``_post``).
        self._outbox: list[tuple[_Connection, bytes]] = []

    # -- stats (for /metrics and tests) -------------------------------------------------------

    @property
    def open_connections(self) -> int:
        """Connections open or being opened."""
        return self._open

    @property
    def idle_connections(self) -> int:
        """Open connections waiting for a request."""
        return len(self._idle)

    # -- requests ---------------------------------------------------------------------------

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]] | bytes,
        body: bytes | AsyncIterable[bytes] | None = None,
        *,
        length: int | None = None,
        read_timeout: float | None = None,
    ) -> UpstreamResponse:
        """Send one request; return once the answer's head has arrived.

        Args:
            method: e.g. ``b"GET"``.
            target: the request target as sent (``b"/v1/x?y=1"``).
            headers: every header to send, ``Host`` included, as ``(name, value)`` pairs or
                already encoded as a header block (each field ``name: value\\r\\n``, no
                blank line after the last); ``Transfer-Encoding`` must not be among them,
                nor ``Content-Length`` unless ``body`` is an iterable.
            body: bytes (sent with ``Content-Length``), an async iterable of chunks, or
                None. An iterable is sent chunked, or as it is when ``length`` (or a
                ``Content-Length`` among the header pairs) gives its length: the caller
                then vouches for it.
            length: the length of an iterable ``body``, sent as its ``Content-Length``.
            read_timeout: overrides the pool's read timeout for this request.

        Raises:
            UpstreamError: no connection, a timeout, or an invalid or cut-off answer.
        """
        timeout = self.read_timeout if read_timeout is None else read_timeout
        conn = await self._acquire()
        try:
            return await self._send(conn, method, target, headers, body, length, timeout)
        except UpstreamDisconnected:
            self._release(conn)
            # A pooled connection the upstream closed just as it was reused: nothing of
            # the answer came back, so an idempotent request is sent once more, on a new
            # connection.
            if (
                not conn.reused
                or conn.got_bytes
                or method not in _IDEMPOTENT
                or isinstance(body, AsyncIterable)
            ):
                raise
        except BaseException:
            self._release(conn)
            raise
        conn = await self._acquire(fresh=True)
        try:
            return await self._send(conn, method, target, headers, body, length, timeout)
        except BaseException:
            self._release(conn)
            raise

    async def _send(
        self,
        conn: _Connection,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]] | bytes,
        body: bytes | AsyncIterable[bytes] | None,
        length: int | None,
        idle: float,
    ) -> UpstreamResponse:
        conn.begin(method == b"HEAD")
        transport = conn.transport
        assert transport is not None
        declared = False  # a Content-Length among the header pairs
        if isinstance(headers, bytes):
            block = headers
        else:
            block = b"".join([b"%s: %s\r\n" % field for field in headers])
            declared = any(name == b"content-length" for name, _ in headers)
        head = (method, b" ", target, b" HTTP/1.1\r\n", block)
        if body is None:
            end = _EMPTY_BODY if method in _BODY_METHODS else _NO_BODY
            self._post(conn, b"".join((*head, end)))
        elif isinstance(body, bytes | bytearray | memoryview):
            # One write, head and body together: one system call, one segment.
            end = b"content-length: %d\r\n\r\n" % len(body)
            self._post(conn, b"".join((*head, end, body)))
        else:
            if length is not None:
                end = b"content-length: %d\r\n\r\n" % length
            else:
                end = _NO_BODY if declared else _CHUNKED
            transport.write(b"".join((*head, end)))
            await conn.write_body(body, length is None and not declared, idle)
        while not conn.head_done:
            if conn.error is not None:
                raise conn.error
            await conn.wait(idle)
        return UpstreamResponse(conn, self, idle)

    def _post(self, conn: _Connection, data: bytes) -> None:
        """Write a whole request: now when it is the only one in flight, else at the end
        of this event-loop turn, together with the others of the turn.

        Written one by one as their tasks get to them, requests reach an upstream
        process that went back to sleep after the previous one, and waking it is paid
        by the writer, in the kernel, at more than the write itself costs. Written back
        to back, the first wakes it and the rest find it awake. A lone request gains
        nothing from waiting for the end of the turn, and is not made to wait.
        """
        outbox = self._outbox
        if not outbox:
            if self._open - len(self._idle) <= 1:
                transport = conn.transport
                assert transport is not None
                transport.write(data)
                return
            conn.loop.call_soon(self._write_outbox)
        outbox.append((conn, data))

    def _write_outbox(self) -> None:
        outbox, self._outbox = self._outbox, []
        for conn, data in outbox:
            transport = conn.transport
            if conn.closed or transport is None or transport.is_closing():
                # Closed since it was taken (its request cancelled, or the upstream
                # left): ``connection_lost`` fails the request, which nothing was sent for.
                continue
            try:
                transport.write(data)
            except Exception as exc:  # one failed write must not keep the others back
                conn._fail(UpstreamDisconnected(f"the request could not be sent: {exc}"))
                conn.abort()

    async def _acquire(self, fresh: bool = False) -> _Connection:
        if self._closed:
            raise UpstreamConnectError("the upstream client is closed")
        idle = self._idle
        if not fresh:
            now = time.monotonic()
            while idle:
                conn = idle.pop()
                if conn.closed or now - conn.idle_since > self.keepalive_expiry:
                    self._discard(conn)
                    continue
                conn.reused = True
                return conn
        if self._open >= self.max_connections:
            waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                handed = await asyncio.wait_for(waiter, self.pool_timeout)
            except TimeoutError:
                raise UpstreamPoolTimeout(
                    f"all {self.max_connections} connections to {self.origin.url} stayed busy "
                    f"for {self.pool_timeout:g} s"
                ) from None
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._give_back(waiter.result())
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if handed is not None:
                handed.reused = True
                return handed
            # A slot was freed (a connection closed): open a new one in it.
        self._open += 1
        try:
            return await self._connect()
        except BaseException:
            self._open -= 1
            self._wake_waiter()
            raise

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        origin = self.origin
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(loop),
                    origin.host,
                    origin.port,
                    ssl=self._ssl,
                    server_hostname=origin.host if self._ssl is not None else None,
                ),
                self.connect_timeout,
            )
        except TimeoutError:
            raise UpstreamConnectTimeout(
                f"no connection to {origin.url} within {self.connect_timeout:g} s"
            ) from None
        except OSError as exc:  # refused, unreachable, unknown host, TLS (SSLError)
            raise UpstreamConnectError(
                f"cannot connect to {origin.url}: {exc.strerror or exc}"
            ) from None
        return conn

    def _release(self, conn: _Connection) -> None:
        if conn.reusable() and not self._closed:
            # The parser stays for the next answer; until ``begin`` is called for it,
            # ``body_done`` makes any byte the upstream sends close the connection.
            self._give_back(conn)
        else:
            self._discard(conn)

    def _give_back(self, conn: _Connection | None) -> None:
        """Hand an idle connection to the first waiter, or keep it idle."""
        if conn is None:
            self._wake_waiter()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if len(self._idle) >= self.max_idle:
            self._discard(conn)
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def _discard(self, conn: _Connection) -> None:
        conn.abort()
        self._open -= 1
        self._wake_waiter()

    def _wake_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # a slot is free: open a connection in it
                return

    async def aclose(self) -> None:
        """Close every idle connection; connections in use close when released."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(UpstreamConnectError("the upstream client was closed"))
        self._waiters.clear()
