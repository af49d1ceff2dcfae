"""WebSocket handshakes through `Tollhouse(app)`: authenticated and limited like requests.

A real uvicorn serves ``Tollhouse`` around a Starlette app with WebSocket routes; the
caller is the ``websockets`` client. Refusals come back as HTTP responses through the
``websocket.http.response`` extension (uvicorn offers it); the ``websocket.close`` 1008
fallback for servers without it is checked by calling the gateway directly with a
hand-written scope.
"""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import WebSocketRoute
from starlette.types import ASGIApp
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Response

from tests.conftest import serve_in_thread
from tollhouse import Tollhouse
from tollhouse.http.gateway import Gateway, Message
from tollhouse.keys.cache import KeyCache
from tollhouse.keys.model import Identity
from tollhouse.keys.store import KeyStore
from tollhouse.limits import MemoryStore
from tollhouse.limits.naming import pool_key
from tollhouse.limits.store import PoolCheck
from tollhouse.metering.record import CallRecord
from tollhouse.policy.load import parse_policy
from tollhouse.schema import create_schema
from tollhouse.storage.engine import make_engine

POLICY = """
[[buckets]]
name = "ws_small"
limit = 2
window = "3650d"
routes = ["GET /ws/limited"]

[[pools]]
name = "ws_streams"
limit = 1
lease = "600s"
routes = ["GET /ws/pooled*"]

[[access]]
routes = ["GET /ws/admin"]
roles = ["root"]

[[access]]
routes = ["GET /ws/tenant"]
tenant = "required"

[[endpoint_groups]]
key = "STREAMS"
description = "websocket streams"
routes = ["GET /ws/*"]
"""

#: uvicorn's WebSocket implementation, the one ``auto`` (``tollhouse serve``) picks; it offers
#: the websocket.http.response extension. (``websockets``, on the library's legacy API, offers
#: it too but is deprecated by uvicorn and warns; wsproto is not installed here.)
WS = "websockets-sansio"

Events = queue.Queue[tuple[str, str, Any]]


def inner_app(events: Events) -> ASGIApp:
    """``/ws/{name}``: accepts (the ``chat.v2`` subprotocol when offered), echoes text and
    bytes; ``close-me`` closes with 4001 "bye", ``boom`` fails. ``/ws/fail-early`` fails
    before the handshake, ``/ws/deny`` refuses it with a 403. Reports on ``events``."""

    async def stream(websocket: WebSocket) -> None:
        name = websocket.path_params["name"]
        if name == "fail-early":
            raise RuntimeError("inner failure before the handshake")
        if name == "deny":
            await websocket.send_denial_response(PlainTextResponse("not today", status_code=403))
            return
        chosen = "chat.v2" if "chat.v2" in websocket.scope["subprotocols"] else None
        await websocket.accept(subprotocol=chosen)
        events.put(("open", name, websocket.scope["state"]["identity"].org))
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                events.put(("disconnect", name, message.get("code")))
                return
            text = message.get("text")
            if text == "close-me":
                await websocket.close(4001, "bye")
                events.put(("closed", name, None))
                return
            if text == "boom":
                raise RuntimeError("inner failure")
            if text is not None:
                await websocket.send_text(text)
            else:
                await websocket.send_bytes(message["bytes"])

    return Starlette(routes=[WebSocketRoute("/ws/{name}", stream)])


class ListMeter:
    """A meter keeping what it is given."""

    def __init__(self) -> None:
        self.calls: list[CallRecord] = []

    def record(self, call: CallRecord) -> None:
        self.calls.append(call)


@dataclass
class Served:
    url: str
    keys: dict[str, str]
    """Secrets by name: one org per test, plus a member key."""
    events: Events
    meter: ListMeter

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[name]}"}

    def next(self, kind: str, name: str) -> Any:
        """The next event ``kind`` of the route ``name`` (others before it dropped)."""
        while True:
            got, which, value = self.events.get(timeout=10)
            if (got, which) == (kind, name):
                return value


KEY_NAMES = ("plain", "limited", "pooled", "pooled2", "admin", "tenant", "meter", "app")


def make_keys(db: Path) -> dict[str, str]:
    async def go() -> dict[str, str]:
        engine = make_engine(f"sqlite:///{db}")
        await create_schema(engine)
        store = KeyStore(engine)
        keys = {}
        for name in KEY_NAMES:
            _, keys[name] = await store.create(f"ws-{name}", "test", "root")
        _, keys["member"] = await store.create("ws-member", "test", "member")
        await engine.dispose()
        return keys

    return asyncio.run(go())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("ws")
    config = tmp / "tollhouse.toml"
    config.write_text(f'[storage]\ndatabase_url = "sqlite:///{tmp}/t.db"\n' + POLICY)
    keys = make_keys(tmp / "t.db")
    events: Events = queue.Queue()
    app = Tollhouse(inner_app(events), config=config)
    meter = ListMeter()
    app.gateway.meter = meter
    with serve_in_thread(app, ws=WS) as url:
        yield Served(url.replace("http://", "ws://"), keys, events, meter)


def refused(url: str, headers: dict[str, str] | None = None) -> Response:
    """The HTTP response of a refused handshake."""

    async def go() -> Response:
        with pytest.raises(InvalidStatus) as exc:
            async with connect(url, additional_headers=headers or {}):
                pass
        return exc.value.response

    return asyncio.run(go())


def envelope(response: Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.body
    assert response.headers["content-type"] == "application/json"
    err: dict[str, Any] = json.loads(response.body)["error"]
    assert err["code"] == code and err["status"] == status
    assert err["requestId"].startswith("req_")
    assert response.headers["x-request-id"] == err["requestId"]
    return err


# ---- refusals --------------------------------------------------------------------------


def test_no_key_is_401(served: Served) -> None:
    err = envelope(refused(served.url + "/ws/plain"), 401, "UNAUTHORIZED")
    assert "No API key" in err["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer sk_test_" + "A" * 32},
        {"X-API-Key": "sk_live_" + "B" * 32},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
)
def test_bad_key_is_401(served: Served, headers: dict[str, str]) -> None:
    envelope(refused(served.url + "/ws/plain", headers), 401, "UNAUTHORIZED")


def test_role_rule_is_403(served: Served) -> None:
    err = envelope(refused(served.url + "/ws/admin", served.auth("member")), 403, "FORBIDDEN")
    assert "GET /ws/admin" in err["message"]

    async def admitted() -> None:
        async with connect(served.url + "/ws/admin", additional_headers=served.auth("admin")):
            pass

    asyncio.run(admitted())


def test_tenant_rule_is_400(served: Served) -> None:
    envelope(refused(served.url + "/ws/tenant", served.auth("tenant")), 400, "TENANT_REQUIRED")
    headers = {**served.auth("tenant"), "X-Tenant-Id": "t1"}

    async def admitted() -> None:
        async with connect(served.url + "/ws/tenant", additional_headers=headers):
            pass

    asyncio.run(admitted())


def test_bucket_counts_handshakes(served: Served) -> None:
    async def open_two() -> list[str]:
        remaining = []
        for _ in range(2):
            async with connect(
                served.url + "/ws/limited", additional_headers=served.auth("limited")
            ) as ws:
                assert ws.response is not None
                headers = ws.response.headers
                assert headers["x-ratelimit-limit"] == "2"
                assert headers["x-request-id"].startswith("req_")
                remaining.append(headers["x-ratelimit-remaining"])
        return remaining

    assert asyncio.run(open_two()) == ["1", "0"]
    third = refused(served.url + "/ws/limited", served.auth("limited"))
    envelope(third, 429, "RATE_LIMITED")
    assert int(third.headers["retry-after"]) >= 1
    assert third.headers["x-ratelimit-remaining"] == "0"
    # Metered like requests: each handshake once, the refused one with its status.
    statuses = [c.status for c in served.meter.calls if c.org == "ws-limited"]
    assert statuses == [101, 101, 429]


def test_app_failing_or_refusing_the_handshake(served: Served) -> None:
    failed = refused(served.url + "/ws/fail-early", served.auth("app"))
    err = envelope(failed, 500, "INTERNAL")
    assert "inner failure" not in err["message"]
    denied = refused(served.url + "/ws/deny", served.auth("app"))
    assert (denied.status_code, denied.body) == (403, b"not today")
    assert denied.headers["x-request-id"].startswith("req_")  # the gateway's, on the app's answer


# ---- pools: a slot for the connection's life --------------------------------------------


def test_pool_slot_is_held_until_the_client_closes(served: Served) -> None:
    url, headers = served.url + "/ws/pooled-held", served.auth("pooled")

    async def while_open() -> Response:
        async with connect(url, additional_headers=headers) as first:
            await first.send("still here")
            assert await first.recv() == "still here"
            with pytest.raises(InvalidStatus) as second:
                async with connect(url, additional_headers=headers):
                    pass
            await first.close(4002, "done")
            return second.value.response

    second = asyncio.run(while_open())
    envelope(second, 429, "CONCURRENCY_LIMITED")
    assert int(second.headers["retry-after"]) >= 1
    # The gateway gives the slot back before the app even sees the disconnect.
    assert served.next("disconnect", "pooled-held") == 4002
    asyncio.run(_echo_once(url, headers))


def test_pool_slot_is_released_when_the_app_closes_or_fails(served: Served) -> None:
    url, headers = served.url + "/ws/pooled-app", served.auth("pooled2")

    async def closed_by(text: str) -> tuple[int, str]:
        async with connect(url, additional_headers=headers) as ws:
            await ws.send(text)
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None
            return closed.value.rcvd.code, closed.value.rcvd.reason

    # The slot is released before the close frame is sent: the next handshake gets it.
    assert asyncio.run(closed_by("close-me")) == (4001, "bye")
    assert asyncio.run(closed_by("boom")) == (1011, "INTERNAL")
    asyncio.run(_echo_once(url, headers))


async def _echo_once(url: str, headers: dict[str, str]) -> None:
    async with connect(url, additional_headers=headers) as ws:
        await ws.send("again")
        assert await ws.recv() == "again"


# ---- admitted connections ---------------------------------------------------------------


def test_frames_subprotocol_identity_and_metering(served: Served) -> None:
    before = len(served.meter.calls)

    async def talk() -> ClientConnection:
        async with connect(
            served.url + "/ws/meter",
            additional_headers=served.auth("meter"),
            subprotocols=["chat.v1", "chat.v2"],  # type: ignore[list-item]
        ) as ws:
            assert ws.subprotocol == "chat.v2"
            await ws.send("text frame")
            assert await ws.recv() == "text frame"
            await ws.send(b"\x00bytes frame")
            assert await ws.recv() == b"\x00bytes frame"
            return ws

    ws = asyncio.run(talk())
    assert served.next("open", "meter") == "ws-meter"  # the app sees the caller's identity
    assert ws.response is not None
    assert "x-ratelimit-limit" not in ws.response.headers  # no bucket on this route
    calls = [c for c in served.meter.calls[before:] if c.org == "ws-meter"]
    assert [(c.method, c.route, c.endpoint_group, c.status) for c in calls] == [
        ("GET", "/ws/*", "STREAMS", 101)
    ]


# ---- the gateway called directly: no extension, a caller leaving, lifespan --------------


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


def ws_scope(path: str, headers: list[tuple[bytes, bytes]], extensions: bool) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "websocket",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"gateway.test"), *headers],
        "subprotocols": [],
        "client": ("127.0.0.1", 50000),
    }
    if extensions:
        scope["extensions"] = {"websocket.http.response": {}}
    return scope


async def idle_app(scope: Any, receive: Any, send: Any) -> None:
    """Accepts, then never reads nor sends (until cancelled)."""
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    await asyncio.Event().wait()


def direct(tmp_path: Path, body: Any) -> Any:
    """Run ``body(gateway, secret)`` on a Gateway around ``idle_app`` with a real key."""

    async def go() -> Any:
        engine = make_engine(f"sqlite:///{tmp_path}/d.db")
        await create_schema(engine)
        store = KeyStore(engine)
        _, secret = await store.create("ws-direct", "test", "root")
        gateway = Gateway(
            idle_app,
            policy=parse_policy(POLICY, "t"),
            limits=MemoryStore(),
            keys=KeyCache(store),
        )
        try:
            return await body(gateway, secret)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_without_the_extension_a_refusal_is_close_1008(tmp_path: Path) -> None:
    async def body(gateway: Gateway, secret: str) -> list[Message]:
        answers: list[Message] = []
        auth: list[tuple[bytes, bytes]] = [(b"x-api-key", secret.encode())]
        for path, headers in (
            ("/ws/plain", []),
            ("/ws/limited", auth),
            ("/ws/limited", auth),
            ("/ws/limited", auth),
        ):
            caller = Caller()
            task = asyncio.ensure_future(
                gateway(ws_scope(path, headers, False), caller.receive, caller.send)
            )
            answers.append(await caller.next_sent())
            task.cancel()  # an accepted connection stays open in the idle app
            await asyncio.wait((task,))
        return answers

    no_key, accepted_1, accepted_2, limited = direct(tmp_path, body)
    assert no_key == {"type": "websocket.close", "code": 1008, "reason": "UNAUTHORIZED"}
    assert accepted_1["type"] == accepted_2["type"] == "websocket.accept"
    assert limited == {"type": "websocket.close", "code": 1008, "reason": "RATE_LIMITED"}


def test_with_the_extension_the_refusal_is_the_envelope(tmp_path: Path) -> None:
    async def body(gateway: Gateway, secret: str) -> tuple[Message, Message]:
        caller = Caller()
        await gateway(ws_scope("/ws/plain", [], True), caller.receive, caller.send)
        return await caller.next_sent(), await caller.next_sent()

    start, end = direct(tmp_path, body)
    assert start["type"] == "websocket.http.response.start" and start["status"] == 401
    headers = dict(start["headers"])
    err = json.loads(end["body"])["error"]
    assert end["type"] == "websocket.http.response.body"
    assert err["code"] == "UNAUTHORIZED" and headers[b"x-request-id"] == err["requestId"].encode()
    assert headers[b"content-length"] == str(len(end["body"])).encode()


def test_slot_released_when_the_caller_leaves_an_app_that_is_not_reading(tmp_path: Path) -> None:
    async def body(gateway: Gateway, secret: str) -> tuple[int, int]:
        auth = [(b"x-api-key", secret.encode())]
        caller = Caller()
        task = asyncio.ensure_future(
            gateway(ws_scope("/ws/pooled", auth, True), caller.receive, caller.send)
        )
        assert (await caller.next_sent())["type"] == "websocket.accept"
        identity = gateway.keys.cached(secret.encode())
        assert isinstance(identity, Identity)
        (p,) = gateway.policy.pools
        pool = PoolCheck(pool_key(p, identity), p.name, p.limit, p.lease)
        _, held = await gateway.limits.peek((), (pool,), gateway.clock())
        caller.inbox.put_nowait({"type": "websocket.disconnect", "code": 1006})
        # The gateway reads the disconnect although the app does not: yield until it has.
        free = held
        for _ in range(100):
            _, free = await gateway.limits.peek((), (pool,), gateway.clock())
            if free[0].active == 0:
                break
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return held[0].active, free[0].active

    assert direct(tmp_path, body) == (1, 0)


def test_lifespan_still_passes_through(tmp_path: Path) -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    gateway = Gateway(app, policy=parse_policy(POLICY, "t"), limits=MemoryStore(), keys=None)  # type: ignore[arg-type]
    asyncio.run(gateway({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    assert seen == ["lifespan"]
