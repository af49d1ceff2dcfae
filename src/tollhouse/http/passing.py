"""Passing an admitted request on: to the upstream or to one of tollhouse's own routes,
with the gateway's headers added to the answer.

Three ways, cheapest first (the gateway picks): :meth:`Passer.plain` for a request that
holds no pool slot and has no body of unknown length; :meth:`Passer.counted` when the
body streams in without ``Content-Length`` (counted against ``[limits] max_body_bytes``,
413 past it) or pool slots are held (:meth:`Passer.holding` gives them back the moment
the request ends — completion, error, or the client going away).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from tollhouse.errors import InternalError, PayloadTooLarge
from tollhouse.http.answers import send_error
from tollhouse.http.asgi import ASGIApp, Header, Message, Receive, Scope, Send
from tollhouse.limits.store import Lease, LimitStore

__all__ = ["BODY_METHODS", "Passer"]

logger = logging.getLogger(__name__)

#: Methods whose body is watched when it comes without ``Content-Length``.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_FAILED = "The request failed inside the API; it has been logged."


class Passer:
    """Runs admitted requests.

    Args:
        limits: where pool slots are given back.
        clock: wall clock in epoch seconds.
        max_body: the largest body accepted, in bytes.
    """

    def __init__(self, limits: LimitStore, clock: Callable[[], float], max_body: int) -> None:
        self.limits = limits
        self.clock = clock
        self.max_body = max_body

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

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

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
        """Pass a request that holds pool slots or streams a body of unknown length;
        returns the response status."""
        started = False
        status = 0
        finished = False
        too_large = False
        received = 0
        limit = self.max_body
        watch_body = length is None and scope["method"] in BODY_METHODS

        async def send_wrapper(message: Message) -> None:
            nonlocal started, finished, status
            if too_large and not started:
                return  # the app's answer to a cut-off body is replaced by our 413
            kind = message["type"]
            if kind == "http.response.start":
                started = True
                status = message["status"]
                message["headers"] = list(message.get("headers", ())) + headers
            elif kind == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        def count(message: Message) -> Message:
            # Bodies without Content-Length are counted as they stream in; past the limit
            # the app is told the client left, and the caller gets a 413.
            nonlocal received, too_large
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def receive_counted() -> Message:
            if too_large:
                return {"type": "http.disconnect"}
            return count(await receive())

        try:
            if leases:
                await self.holding(
                    app, scope, receive, send_wrapper, count, leases, lambda: finished
                )
            else:
                await app(scope, receive_counted if watch_body else receive, send_wrapper)
        except Exception:
            if not too_large:
                logger.exception("inner app failed", extra={"request_id": request_id})
                if not started:
                    await send_error(send, InternalError(_FAILED), request_id)
                    return InternalError.status
        if too_large and not started:
            await send_error(
                send,
                PayloadTooLarge(f"The request body exceeds the limit of {self.max_body} bytes."),
                request_id,
            )
            return PayloadTooLarge.status
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
