"""``proxy_websocket`` against a real upstream WebSocket server, over real connections.

The upstream is a small raw ASGI app served by uvicorn; in front of it another uvicorn
serves a raw ASGI app that hands every websocket connection to ``proxy_websocket``; the
caller is the ``websockets`` client. A few cases call the function directly with
hand-written ``receive``/``send`` (a server without the ``websocket.http.response``
extension, cancellation).
"""

from __future__ import annotations

import asyncio
import json
import queue
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import free_port, serve_in_thread, sqlite_key
from tollhouse.http.gateway import Message
from tollhouse.http.websocket import proxy_websocket

WS = "websockets-sansio"

Events = queue.Queue[tuple[str, Any]]


def upstream_app(events: Events) -> Any:
    """Echo server: ``/echo`` echoes (``close-me`` → close 4001 "bye"), ``/forbidden`` and
    ``/missing`` refuse the handshake, ``/moved`` redirects to ``/echo``. Every handshake's
    headers and every disconnect are reported on ``events``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert scope["type"] == "websocket"
        assert (await receive())["type"] == "websocket.connect"
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"]]
        events.put(
            (
                "handshake",
                {"path": scope["path"], "query": scope["query_string"], "headers": headers},
            )
        )
        if scope["path"] == "/forbidden":
            host, port = scope["server"][0].encode(), scope["server"][1]
            body = b'{"why":"no entry"}'
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 403,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"x-upstream", b"refused"),
                        (b"location", b"http://%s:%d/login" % (host, port)),
                    ],
                }
            )
            await send({"type": "websocket.http.response.body", "body": body})
            return
        if scope["path"] == "/moved":
            location = b"ws://%s:%d/echo" % (scope["server"][0].encode(), scope["server"][1])
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 302,
                    "headers": [(b"location", location)],
                }
            )
            await send({"type": "websocket.http.response.body", "body": b""})
            return
        if scope["path"] == "/missing":
            await send({"type": "websocket.http.response.start", "status": 404, "headers": []})
            await send({"type": "websocket.http.response.body", "body": b"no such stream"})
            return
        offered = scope["subprotocols"]
        chosen = "chat.v2" if "chat.v2" in offered else None
        await send(
            {
                "type": "websocket.accept",
                "subprotocol": chosen,
                "headers": [(b"x-upstream", b"open")],
            }
        )
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                events.put(("disconnect", (message.get("code"), message.get("reason", ""))))
                return
            if message.get("text") == "close-me":
                await send({"type": "websocket.close", "code": 4001, "reason": "bye"})
                continue
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})

    return app


def front_app(upstream: str) -> Any:
    """What the reverse proxy does with a websocket scope, reduced to the call itself."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        target = scope["raw_path"].decode()
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode()
        # The caller's headers as they came (the function skips the handshake's own),
        # plus one the front adds, like the proxy's identity headers.
        headers = [*scope["headers"], (b"x-tollhouse-org", b"acme")]
        await proxy_websocket(
            scope,
            receive,
            send,
            url=upstream + target,
            headers=headers,
            request_id="req_front",
            connect_timeout=5,
            open_timeout=5,
        )

    return app


@pytest.fixture(scope="module")
def events() -> Events:
    return queue.Queue()


@pytest.fixture(scope="module")
def upstream(events: Events) -> Iterator[str]:
    with serve_in_thread(upstream_app(events), ws=WS) as url:
        yield url.replace("http://", "ws://")


@pytest.fixture(scope="module")
def front(upstream: str) -> Iterator[str]:
    with serve_in_thread(front_app(upstream), ws=WS) as url:
        yield url.replace("http://", "ws://")


def next_event(events: Events, kind: str) -> Any:
    """The next event of ``kind`` (others before it are dropped)."""
    while True:
        got, value = events.get(timeout=10)
        if got == kind:
            return value


def drain(events: Events) -> None:
    while not events.empty():
        events.get_nowait()


def test_frames_both_ways_subprotocol_and_headers(front: str, events: Events) -> None:
    drain(events)

    async def run() -> None:
        async with connect(
            front + "/echo?room=7",
            subprotocols=["chat.v1", "chat.v2"],  # type: ignore[list-item]
            additional_headers={"Authorization": "Bearer secret", "X-Custom": "kept"},
            user_agent_header="test-agent/1",
        ) as ws:
            assert ws.subprotocol == "chat.v2"
            assert ws.response is not None and ws.response.headers["x-upstream"] == "open"
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x00\x01binary")
            assert await ws.recv() == b"\x00\x01binary"
            for i in range(200):  # many in a row, order kept
                await ws.send(f"m{i}")
            assert [await ws.recv() for _ in range(200)] == [f"m{i}" for i in range(200)]

    asyncio.run(run())
    seen = next_event(events, "handshake")
    assert seen["path"] == "/echo" and seen["query"] == b"room=7"
    names = [k for k, _ in seen["headers"]]
    values = dict(seen["headers"])
    # One of each handshake header, the library's own; the caller's passed through.
    assert names.count("host") == 1 and names.count("sec-websocket-key") == 1
    assert names.count("upgrade") == 1 and names.count("sec-websocket-protocol") == 1
    assert values["sec-websocket-protocol"] == "chat.v1, chat.v2"
    assert values["host"] == front.removeprefix("ws://")  # the host the caller asked for
    assert values["user-agent"] == "test-agent/1"
    assert values["x-custom"] == "kept" and values["x-tollhouse-org"] == "acme"
    assert names.count("authorization") == 1  # here the front passed it on as given


def test_upstream_close_code_and_reason_reach_the_client(front: str, events: Events) -> None:
    async def run() -> tuple[int, str]:
        async with connect(front + "/echo") as ws:
            await ws.send("close-me")
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None
            return closed.value.rcvd.code, closed.value.rcvd.reason

    assert asyncio.run(run()) == (4001, "bye")


def test_client_close_code_and_reason_reach_the_upstream(front: str, events: Events) -> None:
    drain(events)

    async def run() -> None:
        async with connect(front + "/echo") as ws:
            await ws.send("ping")
            assert await ws.recv() == "ping"
            await ws.close(4002, "done here")

    asyncio.run(run())
    assert next_event(events, "disconnect") == (4002, "done here")


class ConnectNoRedirect(connect):
    """The client, showing a redirect instead of following it."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


@pytest.mark.parametrize(
    ("path", "status"), [("/forbidden", 403), ("/missing", 404), ("/moved", 302)]
)
def test_upstream_refusal_is_the_clients_status(front: str, path: str, status: int) -> None:
    async def run() -> InvalidStatus:
        with pytest.raises(InvalidStatus) as refused:
            async with ConnectNoRedirect(front + path):
                pass
        return refused.value

    response = asyncio.run(run()).response
    assert response.status_code == status
    if status == 403:
        assert json.loads(response.body) == {"why": "no entry"}
        assert response.headers["x-upstream"] == "refused"
        assert response.headers["location"] == "/login"  # the upstream's address is not shown
    elif status == 404:
        assert response.body == b"no such stream"
    else:  # not followed by the gateway, and the upstream's address is not shown
        assert response.headers["location"] == "/echo"


def test_upstream_down_is_502_without_its_address() -> None:
    port = free_port()
    with serve_in_thread(front_app(f"ws://127.0.0.1:{port}"), ws=WS) as url:

        async def run() -> InvalidStatus:
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url.replace("http://", "ws://") + "/echo"):
                    pass
            return refused.value

        response = asyncio.run(run()).response
    assert response.status_code == 502
    err = json.loads(response.body)["error"]
    assert err["code"] == "UPSTREAM_UNAVAILABLE" and err["requestId"] == "req_front"
    assert str(port) not in response.body.decode() and "127.0.0.1" not in response.body.decode()


# ---- called directly: no extension, cancellation ----------------------------------------------


class Caller:
    """Hand-written ASGI ``receive``/``send`` for one websocket connection."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.inbox.put_nowait({"type": "websocket.connect"})
        self.sent: asyncio.Queue[Message] = asyncio.Queue()

    async def receive(self) -> Message:
        return await self.inbox.get()

    async def send(self, message: Message) -> None:
        await self.sent.put(message)

    async def next_sent(self) -> Message:
        return await asyncio.wait_for(self.sent.get(), 10)


def scope_for(path: str, extensions: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "websocket",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"gateway.test")],
        "subprotocols": [],
        "state": {},
        **({"extensions": extensions} if extensions is not None else {}),
    }


@pytest.mark.parametrize(
    ("target", "code", "reason"),
    [("/missing", 1008, "404 Not Found"), (None, 1011, "UPSTREAM_UNAVAILABLE")],
)
def test_without_the_extension_a_refusal_is_a_close(
    upstream: str, target: str | None, code: int, reason: str
) -> None:
    url = upstream + target if target else f"ws://127.0.0.1:{free_port()}/echo"

    async def run() -> tuple[int, Message]:
        caller = Caller()
        status = await proxy_websocket(
            scope_for("/x"), caller.receive, caller.send, url=url, headers=[], request_id="req_x"
        )
        return status, await caller.next_sent()

    status, message = asyncio.run(run())
    assert message == {"type": "websocket.close", "code": code, "reason": reason}
    assert status == (404 if target else 502)


def test_an_upstream_that_never_answers_is_504() -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"ws://127.0.0.1:{silent.getsockname()[1]}/echo"

        async def run() -> tuple[int, Message, Message]:
            caller = Caller()
            status = await proxy_websocket(
                scope_for("/x", {"websocket.http.response": {}}),
                caller.receive,
                caller.send,
                url=url,
                headers=[],
                request_id="req_x",
                open_timeout=0.5,
            )
            return status, await caller.next_sent(), await caller.next_sent()

        status, start, body = asyncio.run(run())
    assert status == start["status"] == 504
    assert json.loads(body["body"])["error"]["code"] == "UPSTREAM_TIMEOUT"


def test_cancelling_the_relay_closes_the_upstream_going_away(upstream: str, events: Events) -> None:
    drain(events)

    async def run() -> None:
        caller = Caller()
        task = asyncio.ensure_future(
            proxy_websocket(
                scope_for("/echo", {"websocket.http.response": {}}),
                caller.receive,
                caller.send,
                url=upstream + "/echo",
                headers=[],
                request_id="req_x",
            )
        )
        accepted = await caller.next_sent()
        assert accepted["type"] == "websocket.accept"
        caller.inbox.put_nowait({"type": "websocket.receive", "text": "one"})
        assert await caller.next_sent() == {"type": "websocket.send", "text": "one"}
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert next_event(events, "disconnect")[0] == 1001


# -- through the product: `[upstream] url` with a key ------------------------------------------


def test_tollhouse_proxies_websockets_after_its_checks(tmp_path: Any) -> None:
    """A full Tollhouse in front of a WebSocket upstream: the handshake is authenticated
    and counted, then frames flow both ways and the upstream learns who called."""
    import httpx

    from tollhouse import Tollhouse

    async def echo(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        org = dict(scope["headers"]).get(b"x-tollhouse-org", b"").decode()
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": f"{org}:{message.get('text')}"})

    db = tmp_path / "t.db"

    key = sqlite_key(db)
    with serve_in_thread(echo, ws="websockets-sansio") as upstream:
        config = tmp_path / "tollhouse.toml"
        config.write_text(
            f'[upstream]\nurl = "{upstream}"\n[storage]\ndatabase_url = "sqlite:///{db}"\n'
            '[[buckets]]\nname = "sockets"\nlimit = 2\nwindow = "3650d"\n'
            'routes = ["GET /ws"]\n'
        )
        with serve_in_thread(Tollhouse(config=config), ws="websockets-sansio") as url:
            ws_url = url.replace("http://", "ws://") + "/ws"

            async def talk() -> list[str]:
                async with connect(ws_url, additional_headers={"X-API-Key": key}) as ws:
                    await ws.send("hello")
                    first = str(await ws.recv())
                    await ws.send("again")
                    return [first, str(await ws.recv())]

            assert asyncio.run(talk()) == ["acme:hello", "acme:again"]

            async def refused(headers: dict[str, str]) -> int:
                with pytest.raises(InvalidStatus) as caught:
                    async with connect(ws_url, additional_headers=headers):
                        pass
                return caught.value.response.status_code

            assert asyncio.run(refused({})) == 401
            assert asyncio.run(talk())[0] == "acme:hello"  # the second of two
            assert asyncio.run(refused({"X-API-Key": key})) == 429
            assert httpx.get(url + "/healthz").status_code == 200
