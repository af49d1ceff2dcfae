"""WebSocket handshakes through the gateway: admitted like ``GET path`` — same keys,
policy match, roles, tenants, buckets consumed at the handshake — with pool slots held
until the connection ends. A refused handshake gets the usual error answer through the
``websocket.http.response`` extension, or a ``websocket.close`` (1008) on servers without
it (:func:`~tollhouse.http.answers.reject_websocket`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from time import perf_counter
from typing import TYPE_CHECKING

from tollhouse.errors import ApiError, InternalError
from tollhouse.http.answers import INTERNAL_ERROR, REQUEST_ID, error_parts, reject_websocket
from tollhouse.http.asgi import Header, Message, Receive, Scope, Send
from tollhouse.http.context import new_request_id, state_of
from tollhouse.keys.model import Identity
from tollhouse.limits.store import Lease
from tollhouse.ops.logs import request_id_var
from tollhouse.policy.match import RouteMatch

if TYPE_CHECKING:
    from tollhouse.http.gateway import Gateway

__all__ = ["admit_websocket"]

logger = logging.getLogger(__name__)


async def admit_websocket(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    """A WebSocket handshake, admitted like ``GET path``: same keys, policy match on
    the path with method ``GET``, roles, tenants, buckets consumed now; a pool slot is
    held until the connection ends. Refused handshakes get the error envelope (see
    :func:`reject_websocket`)."""
    path: str = scope["path"]
    t0 = perf_counter()
    arrived = gw.clock()
    state = state_of(scope)
    request_id = state["request_id"] = new_request_id()
    request_id_var.set(request_id)
    match: RouteMatch | None = None
    method = "GET"  # the handshake is a GET request; policies name it so
    try:
        match, path = gw.route(scope, method, path)
        admitted = gw.admit(scope, state, match, method, path, arrived)
        if not isinstance(admitted, tuple):
            admitted = await admitted
        identity, headers, leases, _ = admitted
    except ApiError as exc:
        request_id = state["request_id"]
        if (await receive())["type"] == "websocket.connect":
            error_headers, body = error_parts(
                exc, request_id, match.error_format if match is not None else "envelope"
            )
            await reject_websocket(scope, send, exc.status, error_headers, body, exc.code)
        gw.account(match, state.get("identity"), method, exc.status, arrived, t0, scope)
        return
    if headers:
        state["limited"] = True  # the proxy drops an upstream's own rate-limit headers
    headers.append((REQUEST_ID, state["request_id"].encode()))
    await _pass_websocket(gw, scope, receive, send, headers, leases, identity, match, arrived, t0)


async def _pass_websocket(
    gw: Gateway,
    scope: Scope,
    receive: Receive,
    send: Send,
    headers: list[Header],
    leases: tuple[Lease, ...],
    identity: Identity,
    match: RouteMatch,
    arrived: float,
    t0: float,
) -> None:
    """Run the app on an admitted WebSocket connection.

    ``headers`` go on the handshake's answer (the 101, or the app's own refusal). The
    connection is counted and metered once, when its handshake is answered: 101 when
    accepted, the status of an HTTP refusal, 403 for a close before accepting, 500
    when the app failed first, 499 when the caller left first.

    Pool slots are given back as soon as the connection ends — the app closes it or
    refuses the handshake, the caller closes or goes away, the app fails or returns.
    While slots are held the gateway reads the caller's messages one ahead of the app
    (a bounded hand-over, never a buffer), so a caller leaving is noticed even by an
    app that is not reading.
    """
    request_id: str = scope["state"]["request_id"]
    answered = False
    closed = False
    gone = False
    held = bool(leases)

    def answer(status: int) -> None:
        nonlocal answered
        answered = True
        gw.account(match, identity, "GET", status, arrived, t0, scope)

    async def release() -> None:
        nonlocal held
        if held:
            held = False
            now = gw.clock()
            for lease in leases:
                await gw.limits.release(lease, now)

    async def send_wrapper(message: Message) -> None:
        nonlocal closed
        kind = message["type"]
        if not answered:
            if kind == "websocket.accept" or kind == "websocket.http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *headers]}
                answer(101 if kind == "websocket.accept" else message["status"])
            elif kind == "websocket.close":
                answer(403)  # servers refuse the handshake with a 403
        if kind == "websocket.close" or (
            kind == "websocket.http.response.body" and not message.get("more_body", False)
        ):
            # The connection ends here: the slot is free before the caller hears it.
            closed = True
            await release()
        await send(message)

    app_receive = receive
    pump: asyncio.Future[None] | None = None
    if held:
        inbox: asyncio.Queue[Message] = asyncio.Queue(maxsize=1)

        async def read_ahead() -> None:
            nonlocal gone
            try:
                while True:
                    message = await receive()
                    if message["type"] == "websocket.disconnect":
                        gone = True
                        await release()
                        await inbox.put(message)
                        return
                    await inbox.put(message)
            except Exception:
                # A server failing on receive: for the app, the caller has left.
                gone = True
                await release()
                await inbox.put({"type": "websocket.disconnect", "code": 1006})
                raise

        pump = asyncio.ensure_future(read_ahead())
        app_receive = inbox.get
    try:
        await gw.app(scope, app_receive, send_wrapper)
    except Exception as exc:
        if isinstance(exc, OSError):  # e.g. a send after the caller left
            logger.info("websocket app stopped: %r", exc, extra={"request_id": request_id})
        else:
            logger.exception("inner app failed", extra={"request_id": request_id})
        error = InternalError("The connection failed inside the API; it has been logged.")
        await release()
        with contextlib.suppress(Exception):
            if not answered:
                answer(error.status)
                error_headers, body = error_parts(error, request_id)
                await reject_websocket(scope, send, error.status, error_headers, body, error.code)
            elif not closed:
                await send(
                    {"type": "websocket.close", "code": INTERNAL_ERROR, "reason": error.code}
                )
    finally:
        if pump is not None:
            pump.cancel()
            await asyncio.wait((pump,))
            if not pump.cancelled() and pump.exception() is not None:
                logger.warning(
                    "websocket receive failed",
                    exc_info=pump.exception(),
                    extra={"request_id": request_id},
                )
        await release()
    if not answered:
        # Returned without answering the handshake: the server refuses it with a 500.
        answer(499 if gone else InternalError.status)
