"""Passing an admitted request on: to the upstream or to one of tollhouse's own routes,
with the gateway's headers added to the answer.

Three ways, cheapest first (the gateway picks): :meth:`Passer.plain` for a request that
holds no pool slot and has no body; :meth:`Passer.counted` when a body is to come (it
must arrive within its deadline, ``[limits] body_timeout``, or the caller gets 408; one
streamed without ``Content-Length`` is counted against ``[limits] max_body_bytes``, 413
past it) or pool slots are held (:meth:`Passer.holding` gives them back the moment the
request ends — completion, error, or the client going away).

A request on a route with a pool is read whole first, by a :class:`BodyReader`, within
its deadline and before the pool is asked: a slot is taken only by a request ready to
run, never by a body still trickling in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from tollhouse.errors import (
    ApiError,
    InternalError,
    PayloadTooLarge,
    RequestTimeout,
    TollhouseError,
)
from tollhouse.http.answers import send_error
from tollhouse.http.asgi import ASGIApp, Header, Message, Receive, Scope, Send
from tollhouse.limits.store import Lease, LimitStore

__all__ = ["BODY_METHODS", "BodyReader", "ClientGone", "Passer", "body_expected"]

logger = logging.getLogger(__name__)

#: Methods whose body is watched when it comes without ``Content-Length``.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_FAILED = "The request failed inside the API; it has been logged."
_DISCONNECT: Message = {"type": "http.disconnect"}


def body_expected(method: str, length: int | None) -> bool:
    """True when a request has a body to wait for: a ``Content-Length`` above 0, or a
    body method without one (the body streams in)."""
    return bool(length) or (length is None and method in BODY_METHODS)


def too_slow(deadline: float) -> RequestTimeout:
    """The 408 of a body that missed its deadline; the connection is closed after it
    (the rest of the body may still be on its way)."""
    return RequestTimeout(
        f"The request body did not arrive within {round(deadline, 1):g} s; send it faster or "
        "send a smaller one.",
        headers={"Connection": "close"},
    )


class ClientGone(TollhouseError):
    """The caller left while its body was being read (nobody to answer: 499)."""


class BodyReader:
    """Reads a request body whole before the limits are asked (routes with a pool), then
    hands it to the app as one message.

    Args:
        receive: the server's receive channel.
    """

    __slots__ = ("_body", "receive")

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self._body: bytes | None = None

    async def read(self, length: int | None, deadline: float, max_body: int) -> None:
        """Receive the whole body within ``deadline`` seconds.

        Raises:
            RequestTimeout: not all of it came in time (408).
            PayloadTooLarge: it grew past ``max_body`` bytes (413).
            ClientGone: the caller disconnected first.
        """
        parts: list[bytes] = []
        size = 0
        more = True
        try:
            async with asyncio.timeout(deadline):
                while more:
                    message = await self.receive()
                    if message["type"] != "http.request":
                        raise ClientGone
                    chunk: bytes = message.get("body", b"")
                    size += len(chunk)
                    if size > max_body:
                        raise PayloadTooLarge(
                            f"The request body exceeds the limit of {max_body} bytes."
                        )
                    parts.append(chunk)
                    more = message.get("more_body", False)
        except TimeoutError:
            raise too_slow(deadline) from None
        self._body = parts[0] if len(parts) == 1 else b"".join(parts)

    async def replay(self) -> Message:
        """The receive channel the app is given: the body read, then the server's own
        (which tells of the caller leaving)."""
        body = self._body
        if body is None:
            return await self.receive()
        self._body = None
        return {"type": "http.request", "body": body, "more_body": False}


class Passer:
    """Runs admitted requests.

    Args:
        limits: where pool slots are given back.
        clock: wall clock in epoch seconds.
        max_body: the largest body accepted, in bytes.
    """

    def __init__(
        self,
        limits: LimitStore,
        clock: Callable[[], float],
        max_body: int,
        body_deadline: Callable[[int | None], float] | None = None,
    ) -> None:
        self.limits = limits
        self.clock = clock
        self.max_body = max_body
        #: Seconds a body of a declared length (None: streamed) may take to arrive; None:
        #: no deadline.
        self.body_deadline = body_deadline

    async def plain(
        self,
        app: ASGIApp,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: list[Header],
        request_id: str,
    ) -> int:
        """Pass a request that holds no slot and has no body to count; returns the status."""
        status = 0

        def send_with_headers(message: Message) -> Awaitable[None]:
            # Not a coroutine function: it hands back the server's own awaitable, so
            # the app's two sends per request make no extra coroutine each.
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # A new message, never the app's changed: an app may send one prebuilt
                # start message for every request.
                message = {**message, "headers": [*message.get("headers", ()), *headers]}
            return send(message)

        try:
            await app(scope, receive, send_with_headers)
        except Exception:
            logger.exception("inner app failed", extra={"request_id": request_id})
            if not status:
                await send_error(send, InternalError(_FAILED), request_id)
                status = InternalError.status
        # An app that returned without answering: the server sends a 500 for it.
        return status or InternalError.status

    async def counted(
        self,
        app: ASGIApp,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: list[Header],
        leases: tuple[Lease, ...],
        length: int | None,
        request_id: str,
    ) -> int:
        """Pass a request that holds pool slots or has a body to come; returns the
        response status.

        A body to come must arrive within its deadline (408 after it) and, streamed
        without ``Content-Length``, within ``max_body`` (413 past it): the app is then told
        the client left, and its answer is replaced by the error. A request holding
        slots had its body read before (:class:`BodyReader`).
        """
        started = False
        status = 0
        finished = False
        #: Why the body was cut off (413, 408): that answer replaces the app's.
        cut: ApiError | None = None
        received = 0
        limit = self.max_body
        watch_body = length is None and scope["method"] in BODY_METHODS
        body_done = False
        timer = self.body_deadline
        seconds = timer(length) if timer is not None and not leases else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds if seconds is not None else 0.0

        async def send_wrapper(message: Message) -> None:
            nonlocal started, finished, status
            if cut is not None and not started:
                return  # the app's answer to a cut-off body is replaced by ours
            kind = message["type"]
            if kind == "http.response.start":
                started = True
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), *headers]}
            elif kind == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        def count(message: Message) -> Message:
            # Bodies without Content-Length are counted as they stream in; past the limit
            # the app is told the client left, and the caller gets a 413.
            nonlocal received, cut
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    cut = PayloadTooLarge(
                        f"The request body exceeds the limit of {self.max_body} bytes."
                    )
                    return _DISCONNECT
            return message

        async def receive_guarded() -> Message:
            # The body must be in by its deadline; after it, the channel is the server's
            # own again (it tells of the caller leaving).
            nonlocal body_done, cut
            if cut is not None:
                return _DISCONNECT
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                assert seconds is not None
                cut = too_slow(seconds)
                return _DISCONNECT
            if message["type"] == "http.request":
                if watch_body:
                    message = count(message)
                if not message.get("more_body", False):
                    body_done = True
            return message

        async def receive_counted() -> Message:
            if cut is not None:
                return _DISCONNECT
            return count(await receive())

        try:
            if leases:
                await self.holding(
                    app, scope, receive, send_wrapper, count, leases, lambda: finished
                )
            elif seconds is not None:
                await app(scope, receive_guarded, send_wrapper)
            else:
                await app(scope, receive_counted if watch_body else receive, send_wrapper)
        except Exception:
            if cut is None:
                logger.exception("inner app failed", extra={"request_id": request_id})
                if not started:
                    await send_error(send, InternalError(_FAILED), request_id)
                    return InternalError.status
        if cut is not None and not started:
            # The app (a reverse proxy) may have noted the caller as gone: it is not.
            scope["state"].pop("aborted", None)
            await send_error(send, cut, request_id)
            return cut.status
        # 499 (client closed request) when the client left before any answer.
        return status or 499

    async def holding(
        self,
        app: ASGIApp,
        scope: Scope,
        receive: Receive,
        send: Send,
        count: Callable[[Message], Message],
        leases: tuple[Lease, ...],
        finished: Callable[[], bool],
    ) -> None:
        """Run the app while holding pool slots, giving them back the moment the request
        ends — completion, error, or the client going away.

        The gateway owns the receive channel here: a pump reads it (so a client that
        disconnects is noticed even while the app is busy and not reading) and feeds the
        app through a queue. On disconnect the app is cancelled and the slots released.
        """
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        app_task = asyncio.ensure_future(app(scope, inbox.get, send))
        gone = False

        async def pump() -> None:
            nonlocal gone
            while True:
                message = count(await receive())
                inbox.put_nowait(message)
                if message["type"] == "http.disconnect":
                    # After a complete response the app may still run background work:
                    # only a client leaving mid-request cancels it.
                    if not app_task.done() and not finished():
                        gone = True
                        app_task.cancel()
                    return

        pump_task = asyncio.ensure_future(pump())
        try:
            await app_task
        except asyncio.CancelledError:
            if not gone:
                app_task.cancel()
                raise
        finally:
            pump_task.cancel()
            now = self.clock()
            for lease in leases:
                await self.limits.release(lease, now)
