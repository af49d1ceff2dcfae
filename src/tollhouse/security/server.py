"""Request-head limits for ``tollhouse serve``: header size and a header deadline.

uvicorn's fast parser (httptools) buffers a request head of any size and gives a client
as long as it likes to send it; its keep-alive timeout runs only between requests, and
every byte received resets it. :class:`LimitedHttpToolsProtocol` adds two limits:

* **Header size**: the request line plus headers may take at most
  ``config.h11_max_incomplete_event_size`` bytes (``[limits] max_header_bytes``; the same
  setting bounds the h11 parser). Beyond it the answer is ``431 Request Header Fields Too
  Large`` and the connection is closed.
* **Header deadline**: a connection must deliver each complete request head within
  :data:`HEADER_TIMEOUT` seconds of its first byte (or of connecting). A client trickling
  headers byte by byte (slow loris) gets ``408 Request Timeout`` and the connection is
  closed, so it cannot hold a connection for ever.
* **No unread body after an answer for long**: a request answered before its body was
  all in (a refusal that never read it, the gateway's 408) has :data:`DRAIN_TIMEOUT`
  seconds for the rest to arrive (read and dropped, so the answer is not reset under
  the client by a close with unread data), then its connection is closed. uvicorn
  alone would drop the rest for as long as the client trickles it, every byte putting
  off the keep-alive timeout. (The body's
  own deadline is the gateway's, ``[limits] body_timeout``, so it holds in-process too.)

Both deadlines of a connection, the head's and uvicorn's keep-alive timeout, are kept as
loop times with one timer each that is not re-armed per request: a timer that fires
early looks at the deadline as it is then and waits again if it has moved. uvicorn
alone arms and cancels an event-loop timer twice per request.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: Seconds a client has to send a complete request head.
HEADER_TIMEOUT = 10.0
#: Seconds the rest of a body answered before it was all in may take to arrive (it is
#: read and dropped) before the connection is closed.
DRAIN_TIMEOUT = 5.0
#: The default cap on a request head (request line + headers), in bytes.
DEFAULT_MAX_HEADER_BYTES = 16_384
#: Seconds a timer may fire early (the loop clock's resolution is a millisecond) and still
#: count as on time.
_TIMER_SLACK = 0.001


class CoalescingTransport:
    """A transport whose writes within one event loop turn leave in one ``write``.

    uvicorn writes a response's head as soon as the app sends ``http.response.start`` and
    its body with the next message, so every small answer costs two system calls; joined,
    it costs one. Pending bytes are written at the end of the turn — or, for the only
    request in flight, as soon as its answer is complete (the protocol's
    ``on_response_complete``: before whatever the app still does in that turn) — and
    before anything that must come after them (``close``, ``abort`` drops them, a
    protocol switch).
    Everything else is the wrapped transport's.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pending = self._pending
        if pending is None:
            self._pending = [bytes(data)]
            self._loop.call_soon(self.flush)
        else:
            pending.append(bytes(data))

    def flush(self) -> None:
        """Write what is pending now."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        if not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def is_closing(self) -> bool:
        # Asked several times per request: spared the ``__getattr__`` fallback.
        return self._transport.is_closing()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.flush()
        self._transport.set_protocol(protocol)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HeadTooLarge(httptools.HttpParserError):
    """Raised from a parser callback: the request head is over the limit."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header-size cap and a header deadline."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limit = getattr(self.config, "h11_max_incomplete_event_size", None)
        self.max_head_bytes: int = limit or DEFAULT_MAX_HEADER_BYTES
        self.head_timeout: float = HEADER_TIMEOUT
        self._head_bytes = 0
        self._head_too_large = False
        # The loop time by which the head being received must be complete (None: no head
        # is awaited), and the timer that checks it (armed at or before it).
        self._head_due: float | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        # The loop time at which the idle connection is closed (None: not idle), and its
        # timer (armed at or before it): uvicorn's keep-alive timeout.
        self._idle_due: float | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self.drain_timeout: float = DRAIN_TIMEOUT
        self._drain_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Responses are written through a transport that joins the writes of one event
        # loop turn: the head and the body of an answer go out in one system call.
        self.transport = cast(asyncio.Transport, CoalescingTransport(transport, self.loop))
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_drain_timer()
        super().connection_lost(exc)
        self._idle_due = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_due = None  # the timer stays; it finds no head awaited
        super().on_headers_complete()

    def _unset_keepalive_if_required(self) -> None:
        # uvicorn's: cancel the keep-alive timer (a byte came, or an answer is done).
        # Here the deadline goes and the timer stays, finding the connection not idle.
        self._idle_due = None

    def on_response_complete(self) -> None:
        if len(self.tasks) == 1:
            # The only request in flight: its complete answer leaves now, not after what
            # the app still does in this turn (the gateway's metering, the task's end).
            # With others in flight, the answers of a turn leave together at its end: a
            # client woken once per turn, not once per answer (written one by one, each
            # would pay the kernel for waking a client gone back to sleep).
            cast(CoalescingTransport, self.transport).flush()
        cycle = self.cycle
        if (
            cycle is not None
            and cycle.response_complete
            and cycle.more_body
            and not self.transport.is_closing()
        ):
            # Answered before its body was all in: the rest may still come (a client
            # that sent head and body in two writes), and is read and dropped for at
            # most DRAIN_TIMEOUT; closing at once could reset the connection under the
            # answer (unread data makes the kernel send RST). Past that, it is closed.
            self._cancel_drain_timer()
            self._drain_timer = self.loop.call_later(self.drain_timeout, self._drain_timed_out)
        # uvicorn's own, with the keep-alive timeout as a deadline instead of a timer
        # armed per answer.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle_due = None
        self.flow.resume_reading()
        if self.pipeline:
            # Pipelined requests waiting: the next one starts.
            next_cycle, app = self.pipeline.pop()
            self._start_asgi_task(next_cycle, app)
            return
        loop = self.loop
        due = self._idle_due = loop.time() + self.timeout_keep_alive
        if self._idle_timer is None:
            self._idle_timer = loop.call_at(due, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        due = self._idle_due
        if due is None or self.transport.is_closing():
            return  # busy since: the next answer arms the timer again
        if due - self.loop.time() > _TIMER_SLACK:
            # The connection was used since the timer was armed: wait for the new deadline.
            self._idle_timer = self.loop.call_at(due, self._idle_check)
            return
        self.timeout_keep_alive_handler()

    def on_message_complete(self) -> None:
        self._cancel_drain_timer()
        super().on_message_complete()

    def _cancel_drain_timer(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None

    def _drain_timed_out(self) -> None:
        self._drain_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        if self._head_too_large:
            self._send_and_close(
                b"431 Request Header Fields Too Large",
                f"The request head is over {self.max_head_bytes} bytes.",
            )
            return
        super().send_400_response(msg)

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_head_bytes:
            self._head_too_large = True
            raise HeadTooLarge("request head too large")

    def _arm_head_timer(self) -> None:
        # A head awaited already keeps its deadline (the first request's runs from
        # connecting); the timer is armed only when there is none.
        if self._head_due is None:
            self._head_due = self.loop.time() + self.head_timeout
        if self._head_timer is None:
            self._head_timer = self.loop.call_at(self._head_due, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        self._head_due = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        due = self._head_due
        if due is None or self.transport.is_closing():
            return  # no head awaited now: the next one arms the timer again
        if due - self.loop.time() > _TIMER_SLACK:
            # A later head than the one the timer was armed for: wait for its deadline.
            self._head_timer = self.loop.call_at(due, self._head_timed_out)
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered; its head was complete
        self._send_and_close(
            b"408 Request Timeout",
            f"The request head did not arrive within {self.head_timeout:g} seconds.",
        )

    def _send_and_close(self, status: bytes, message: str) -> None:
        body = message.encode()
        self.transport.write(
            b"HTTP/1.1 "
            + status
            + b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\nconnection: close\r\n\r\n"
            + body
        )
        self.transport.close()
