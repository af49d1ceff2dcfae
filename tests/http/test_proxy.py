"""ReverseProxy against a real upstream, both served by uvicorn on loopback, driven by httpx."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import logging
import random
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.conftest import serve_in_thread as serve
from tollhouse.errors import ConfigError
from tollhouse.http import proxy as proxy_module
from tollhouse.http.proxy import ReverseProxy
from tollhouse.keys.model import Identity

REQUEST_ID = "req_test0123456789"
IDENTITY = Identity(
    key_id="key_abc", org="acme", environment="SANDBOX", role="backend", tenant="t-9"
)
WAIT = 10.0  # upper bound for cross-thread events; a healthy run never gets near it


# -- servers ---------------------------------------------------------------------------------


class Events:
    """Thread-safe named events, created on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}

    def __getitem__(self, name: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(name, threading.Event())


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class Upstream:
    """A small raw-ASGI upstream: echo, streaming, slow, custom status, gzip and broken."""

    def __init__(self) -> None:
        self.disconnected = Events()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        path: str = scope["path"]
        if path == "/slow":
            await read_body(receive)
            try:
                await asyncio.wait_for(wait_for_disconnect(receive), float(query["delay"]))
            except TimeoutError:
                await respond(send, 200, b"slow done")
            else:
                self.disconnected[query["tag"]].set()
        elif path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for i in range(int(query["n"])):
                chunk = bytes([65 + i % 26]) * int(query["size"])
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            headers = [
                (b"x-custom", b"yes"),
                (b"set-cookie", b"a=1; Path=/"),
                (b"set-cookie", b"b=2; Path=/"),
                (b"connection", b"x-upstream-hop"),
                (b"x-upstream-hop", b"1"),
                (b"keep-alive", b"timeout=5"),
                (b"proxy-authenticate", b"Basic"),
                (b"trailer", b"x-never"),
                (b"upgrade", b"h2c"),
            ]
            body = b"" if status in (204, 304) else b"status %d" % status
            await respond(send, status, body, headers)
        elif path == "/gzip":
            body = gzip.compress(b"hello tollhouse " * 1000)
            await respond(send, 200, body, [(b"content-encoding", b"gzip")])
        elif path == "/broken":
            # Start a body and give up on it: uvicorn then drops the connection.
            headers = (
                [] if "length" not in query else [(b"content-length", query["length"].encode())]
            )
            start = {"type": "http.response.start", "status": 200, "headers": headers}
            await send(start)
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        else:
            body = await read_body(receive)
            echo = {
                "method": scope["method"],
                "raw_path": scope["raw_path"].decode("latin-1"),
                "query_string": scope["query_string"].decode("latin-1"),
                "headers": [
                    [n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]
                ],
                "body_length": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "body": body.decode("latin-1") if len(body) < 1000 else None,
            }
            await respond(
                send, 200, json.dumps(echo).encode(), [(b"content-type", b"application/json")]
            )


async def respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [*(headers or []), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Gateway:
    """Stands in for the real gateway: puts request id and identity in ``scope["state"]``.

    Paths under ``/public`` get no identity, like an unauthenticated route. ``returned``
    fires (by the request's ``tag`` query parameter) when the proxy's call has returned.
    """

    def __init__(self, proxy: ReverseProxy) -> None:
        self.proxy = proxy
        self.returned = Events()
        self.errors: list[BaseException] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.proxy(scope, receive, send)
            return
        state: dict[str, Any] = {"request_id": REQUEST_ID}
        if not scope["path"].startswith("/public"):
            state["identity"] = IDENTITY
        scope["state"] = state
        tag = parse_qs(scope["query_string"].decode()).get("tag", [""])[0]
        try:
            await self.proxy(scope, receive, send)
        except BaseException as exc:
            self.errors.append(exc)
            raise
        finally:
            self.returned[tag].set()


@contextmanager
def proxied(upstream_url: str, **options: Any) -> Iterator[tuple[str, Gateway]]:
    gateway = Gateway(ReverseProxy(upstream_url, **options))
    with serve(gateway) as url:
        yield url, gateway
    assert gateway.errors == []


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, Upstream]]:
    app = Upstream()
    with serve(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def upstream_url(upstream: tuple[str, Upstream]) -> str:
    return upstream[0]


@pytest.fixture(scope="module")
def proxy(upstream_url: str) -> Iterator[tuple[str, Gateway]]:
    with proxied(upstream_url) as served:
        yield served


@pytest.fixture
def client(proxy: tuple[str, Gateway]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy[0], timeout=WAIT) as client:
        yield client


def header_values(echo: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in echo["headers"] if key == name]


def assert_envelope(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["status"] == status
    assert error["code"] == code
    assert error["requestId"] == REQUEST_ID
    message: str = error["message"]
    return message


# -- forwarding ------------------------------------------------------------------------------


def test_method_path_query_and_body_are_forwarded(client: httpx.Client) -> None:
    # The query goes in the URL as written: httpx would group repeated params.
    response = client.request("PATCH", "/v1/items/a%2Fb/c%20d?x=1&y=%2F&x=2", content=b"hi")

    assert response.status_code == 200
    echo = response.json()
    assert echo["method"] == "PATCH"
    assert echo["raw_path"] == "/v1/items/a%2Fb/c%20d"
    assert echo["query_string"] == "x=1&y=%2F&x=2"
    assert echo["body"] == "hi"


def test_request_without_body_reaches_upstream_without_one(client: httpx.Client) -> None:
    echo = client.get("/v1/items").json()

    assert echo["method"] == "GET"
    assert echo["body_length"] == 0
    assert header_values(echo, "content-length") == []
    assert header_values(echo, "transfer-encoding") == []


def test_dot_segments_are_forwarded_verbatim(proxy: tuple[str, Gateway]) -> None:
    # httpx would normalise the path itself, so speak HTTP/1.1 over a bare socket.
    host, port = httpx.URL(proxy[0]).host, httpx.URL(proxy[0]).port
    assert port is not None
    with socket.create_connection((host, port), timeout=WAIT) as sock:
        sock.sendall(b"GET /v1/a/../b/./c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")

    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body)["raw_path"] == "/v1/a/../b/./c"


def test_request_headers(
    client: httpx.Client, proxy: tuple[str, Gateway], upstream_url: str
) -> None:
    sent = [
        ("x-multi", "1"),
        ("authorization", "Bearer sk_test_secret"),
        ("x-api-key", "sk_test_secret"),
        ("x-multi", "2"),
        ("x-tollhouse-org", "forged"),
        ("x-tollhouse-role", "root"),
        ("x-tenant-id", "t-9"),
        ("te", "trailers"),
        ("keep-alive", "timeout=5"),
        ("proxy-authorization", "Basic abc"),
        ("connection", "keep-alive, x-hop"),
        ("x-hop", "dropped"),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-proto", "gopher"),
        ("x-forwarded-host", "evil.example"),
        ("forwarded", "for=203.0.113.7;proto=https"),
        ("x-real-ip", "203.0.113.7"),
        ("x-request-id", "client-chosen"),
        ("x-last", "z"),
    ]
    echo = client.get("/v1/headers", headers=sent).json()
    names = [name for name, _ in echo["headers"]]

    for gone in ("authorization", "x-api-key", "te", "keep-alive", "proxy-authorization"):
        assert gone not in names
    assert "connection" not in names
    assert "x-hop" not in names
    assert header_values(echo, "x-multi") == ["1", "2"]
    assert [n for n in names if n in ("x-multi", "x-tenant-id", "x-last")] == [
        "x-multi",
        "x-multi",
        "x-tenant-id",
        "x-last",
    ]
    assert header_values(echo, "host") == [httpx.URL(upstream_url).netloc.decode()]
    # The caller is not a trusted proxy: its account of where the request came from is
    # replaced by the proxy's own.
    host = httpx.URL(proxy[0]).netloc.decode()
    assert header_values(echo, "x-forwarded-for") == ["127.0.0.1"]
    assert header_values(echo, "x-real-ip") == ["127.0.0.1"]
    assert header_values(echo, "x-forwarded-proto") == ["http"]
    assert header_values(echo, "x-forwarded-host") == [host]
    assert header_values(echo, "forwarded") == [f'for=127.0.0.1;proto=http;host="{host}"']
    assert header_values(echo, "x-request-id") == [REQUEST_ID]
    assert header_values(echo, "x-tenant-id") == ["t-9"]
    assert header_values(echo, "x-tollhouse-org") == ["acme"]
    assert header_values(echo, "x-tollhouse-environment") == ["SANDBOX"]
    assert header_values(echo, "x-tollhouse-key-id") == ["key_abc"]
    assert header_values(echo, "x-tollhouse-role") == ["backend"]


def test_each_caller_host_gets_its_own_forwarded_headers(client: httpx.Client) -> None:
    """The proxy's forwarded lines are kept per caller address, scheme and Host: each
    request gets those of its own Host, a long one included (never kept)."""
    long_host = "h" * 400 + ".example"
    for host in ("a.example", "b.example:8443", "a.example", long_host, "b.example:8443"):
        echo = client.get("/v1/headers", headers={"host": host}).json()
        assert header_values(echo, "x-forwarded-host") == [host]
        assert header_values(echo, "forwarded") == [f'for=127.0.0.1;proto=http;host="{host}"']
        assert header_values(echo, "x-forwarded-for") == ["127.0.0.1"]


def test_unauthenticated_route_gets_no_identity_headers(client: httpx.Client) -> None:
    echo = client.get("/public/docs", headers={"x-tollhouse-org": "forged"}).json()

    assert [n for n, _ in echo["headers"] if n.startswith("x-tollhouse-")] == []
    assert header_values(echo, "x-request-id") == [REQUEST_ID]


def test_large_request_body_is_streamed_intact(client: httpx.Client) -> None:
    body = random.Random(0).randbytes(5 * 1024 * 1024)

    echo = client.post("/v1/upload", content=body).json()

    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert header_values(echo, "content-length") == [str(len(body))]


def test_chunked_request_body_is_streamed_intact(client: httpx.Client) -> None:
    body = random.Random(1).randbytes(3 * 1024 * 1024 + 7)
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))

    echo = client.post("/v1/upload", content=chunks).json()

    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_streamed_response_is_intact(client: httpx.Client) -> None:
    expected = b"".join(bytes([65 + i % 26]) * 8192 for i in range(64))

    with client.stream("GET", "/stream", params={"n": 64, "size": 8192}) as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        received = b"".join(response.iter_raw())

    assert received == expected


@pytest.mark.parametrize("status", [201, 204, 404, 418, 503])
def test_status_and_headers_pass_through(client: httpx.Client, status: int) -> None:
    response = client.get(f"/status/{status}")

    assert response.status_code == status
    assert response.headers["x-custom"] == "yes"
    assert response.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
    for gone in ("x-upstream-hop", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
        assert gone not in response.headers
    assert response.content == (b"" if status == 204 else b"status %d" % status)


def test_compressed_body_is_forwarded_raw(client: httpx.Client) -> None:
    response = client.get("/gzip")

    assert response.headers["content-encoding"] == "gzip"
    assert int(response.headers["content-length"]) == response.num_bytes_downloaded
    assert response.text == "hello tollhouse " * 1000


def test_head_keeps_the_upstream_content_length(client: httpx.Client) -> None:
    response = client.head("/gzip")

    assert response.status_code == 200
    assert int(response.headers["content-length"]) > 0
    assert response.content == b""


def test_base_url_path_prefix(upstream_url: str) -> None:
    with proxied(upstream_url + "/api/") as (url, _), httpx.Client(base_url=url) as client:
        echo = client.get("/v1/x%2Fy", params={"q": "1"}).json()

    assert echo["raw_path"] == "/api/v1/x%2Fy"
    assert echo["query_string"] == "q=1"


def test_upstream_credentials_from_url_replace_the_callers(upstream_url: str) -> None:
    with_credentials = upstream_url.replace("http://", "http://svc:s3cret@")
    with proxied(with_credentials) as (url, _), httpx.Client(base_url=url) as client:
        echo = client.get("/v1/x", headers={"authorization": "Bearer sk_test_secret"}).json()

    expected = "Basic " + base64.b64encode(b"svc:s3cret").decode()
    assert header_values(echo, "authorization") == [expected]
    assert header_values(echo, "host") == [httpx.URL(upstream_url).netloc.decode()]


# -- limits and failures ---------------------------------------------------------------------


def test_upstream_down_is_a_502_envelope(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tollhouse.http.proxy")
    with socket.socket() as probe:  # a loopback port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with proxied(f"http://127.0.0.1:{port}") as (url, _), httpx.Client(base_url=url) as client:
        response = client.post("/v1/score", json={"a": 1})

    message = assert_envelope(response, 502, "UPSTREAM_UNAVAILABLE")
    assert "could not be reached" in message
    # The caller learns what happened, never where the upstream is; the log says where.
    assert str(port) not in response.text
    assert "127.0.0.1" not in response.text
    logged = [r for r in caplog.records if r.name == "tollhouse.http.proxy"]
    assert logged[-1].__dict__["upstream"] == f"http://127.0.0.1:{port}"
    assert logged[-1].__dict__["request_id"] == REQUEST_ID


def test_slow_upstream_is_a_504_envelope(upstream: tuple[str, Upstream]) -> None:
    upstream_url, app = upstream
    with proxied(upstream_url, timeout=0.3) as (url, _), httpx.Client(base_url=url) as client:
        response = client.get("/slow", params={"delay": 30, "tag": "timeout"})

    message = assert_envelope(response, 504, "UPSTREAM_TIMEOUT")
    assert "0.3 s" in message
    assert upstream_url.rsplit(":", 1)[1] not in response.text
    assert app.disconnected["timeout"].wait(WAIT)  # and the upstream was let go


def test_client_disconnect_cancels_the_upstream_call(
    upstream: tuple[str, Upstream], proxy: tuple[str, Gateway]
) -> None:
    url, gateway = proxy
    with httpx.Client(base_url=url, timeout=0.5) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/slow", params={"delay": 30, "tag": "gone"}, content=b"payload")

    assert gateway.returned["gone"].wait(WAIT), "the proxy kept waiting on the upstream"
    assert upstream[1].disconnected["gone"].wait(WAIT), "the upstream call was not cancelled"
    assert gateway.errors == []


def test_callers_leaving_one_after_another_each_cancel_their_upstream_call(
    upstream: tuple[str, Upstream], proxy: tuple[str, Gateway]
) -> None:
    # The disconnect watches of a proxy share one timer: each caller's watch must start
    # in its turn, with quick requests finishing (and their watches stopping) in between.
    url, gateway = proxy

    def leave_after(tag: str, seconds: float) -> None:
        with (
            httpx.Client(base_url=url, timeout=seconds) as client,
            pytest.raises(httpx.ReadTimeout),
        ):
            client.get("/slow", params={"delay": 30, "tag": tag})

    callers = [
        threading.Thread(target=leave_after, args=(f"turn-{i}", 0.7 + 0.3 * i)) for i in range(3)
    ]
    for i, caller in enumerate(callers):
        caller.start()
        with httpx.Client(base_url=url, timeout=WAIT) as client:
            assert client.get("/echo", params={"n": i}).status_code == 200
    for caller in callers:
        caller.join(WAIT)
    for i in range(3):
        tag = f"turn-{i}"
        assert gateway.returned[tag].wait(WAIT), f"the proxy kept waiting on {tag}"
        assert upstream[1].disconnected[tag].wait(WAIT), f"{tag}'s upstream call went on"
    assert gateway.errors == []


def test_client_disconnect_while_sending_its_body(
    upstream: tuple[str, Upstream], proxy: tuple[str, Gateway]
) -> None:
    url, gateway = proxy
    proxy_url = httpx.URL(url)
    assert proxy_url.port is not None
    with socket.create_connection((proxy_url.host, proxy_url.port), timeout=WAIT) as sock:
        sock.sendall(
            b"POST /slow?delay=30&tag=mid-body HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 1000000\r\n\r\n" + b"x" * 100_000
        )
    # The socket is closed with most of the body unsent.

    assert gateway.returned["mid-body"].wait(WAIT), "the proxy kept waiting for the body"
    assert upstream[1].disconnected["mid-body"].wait(WAIT), "the upstream call was not cancelled"
    assert gateway.errors == []


def test_upstream_failing_mid_stream_cuts_the_callers_connection(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tollhouse.http.proxy")

    # The chunked answer started, then the upstream died: the caller must not see a clean
    # last chunk after "partial", which would pass a short body off as complete.
    with client.stream("GET", "/broken") as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
            response.read()
    records = [r for r in caplog.records if r.name == "tollhouse.http.proxy"]
    assert records
    assert records[-1].levelno == logging.WARNING
    assert records[-1].__dict__["request_id"] == REQUEST_ID


def test_upstream_failing_short_of_its_content_length_is_not_passed_off_as_complete(
    client: httpx.Client,
) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/broken", params={"length": "100"})


def test_body_over_the_limit_is_a_413(upstream_url: str) -> None:
    with proxied(upstream_url, max_body_size=1024) as (url, _), httpx.Client(base_url=url) as c:
        declared = c.post("/v1/upload", content=b"x" * 2048)
        streamed = c.post("/v1/upload", content=iter([b"x" * 1000, b"x" * 1000]))
        small = c.post("/v1/upload", content=iter([b"x" * 500, b"x" * 500]))

    assert_envelope(declared, 413, "PAYLOAD_TOO_LARGE")
    assert_envelope(streamed, 413, "PAYLOAD_TOO_LARGE")
    assert small.json()["body_length"] == 1000


# -- ASGI edges, called directly -------------------------------------------------------------


def call(app: ASGIApp, scope: Scope, incoming: list[Message]) -> list[Message]:
    """Run one ASGI call to completion; return what the app sent."""
    sent: list[Message] = []

    async def receive() -> Message:
        if incoming:
            return incoming.pop(0)
        await asyncio.Event().wait()  # like a server with nothing more to say
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    async def run() -> None:
        await app(scope, receive, send)

    asyncio.run(run())
    return sent


def http_scope(**overrides: Any) -> Scope:
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": [(b"host", b"gateway")],
        "client": ("127.0.0.1", 5000),
        "state": {"request_id": REQUEST_ID},
    }
    scope.update(overrides)
    return scope


def test_non_path_request_target_is_refused() -> None:
    proxy = ReverseProxy("http://127.0.0.1:9")

    sent = call(proxy, http_scope(raw_path=b"@evil.example/x", path="@evil.example/x"), [])

    assert sent[0]["status"] == 400
    body = json.loads(sent[1]["body"])
    assert body["error"]["code"] == "BAD_REQUEST"
    assert body["error"]["requestId"] == REQUEST_ID


def test_path_is_used_when_the_server_gives_no_raw_path(upstream_url: str) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        proxy = ReverseProxy(upstream_url)
        try:
            await proxy(scope, receive, send)
        finally:
            await proxy.aclose()

    scope = http_scope(path="/v1/a b/é", query_string=b"q=1")
    del scope["raw_path"]
    sent = call(app, scope, [{"type": "http.request", "body": b""}])

    assert sent[0]["status"] == 200
    echo = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert echo["raw_path"] == "/v1/a%20b/%C3%A9"
    assert echo["query_string"] == "q=1"


def test_lifespan_is_answered() -> None:
    proxy = ReverseProxy("http://127.0.0.1:9")
    incoming: list[Message] = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    sent = call(proxy, {"type": "lifespan"}, incoming)

    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]


@pytest.mark.parametrize(
    ("url", "options", "hint"),
    [
        ("ftp://files.internal", {}, "http:// or https://"),
        ("127.0.0.1:9000", {}, "http:// or https://"),
        ("http://", {}, "no host"),
        ("http://h:port", {}, "not a valid URL"),
        ("http://h:9000/api?x=1", {}, "query string"),
        ("http://h:9000", {"timeout": 0}, "timeout must be greater than 0"),
        ("http://h:9000", {"max_connections": 0}, "max_connections"),
        ("http://h:9000", {"max_body_size": -1}, "max_body_size"),
    ],
)
def test_bad_configuration_is_refused_at_start(
    url: str, options: dict[str, Any], hint: str
) -> None:
    with pytest.raises(ConfigError, match=hint.replace("?", r"\?")):
        ReverseProxy(url, **options)


def test_a_flood_of_hosts_keeps_the_forwarded_memo_bounded(
    upstream_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Distinct ``Host`` values fill the proxy's memo of forwarded lines only up to its
    bound (lowered here), and every request still gets the lines of its own ``Host``."""
    monkeypatch.setattr(proxy_module, "_FORWARDED_MEMO", 8)
    with proxied(upstream_url) as (url, gateway), httpx.Client(base_url=url, timeout=WAIT) as c:
        sizes = []
        for i in range(30):
            host = f"tenant-{i % 20}.example"
            echo = c.get("/v1/headers", headers={"host": host}).json()
            assert header_values(echo, "x-forwarded-host") == [host]
            sizes.append(len(gateway.proxy._forwarded_memo))
    assert max(sizes) == 8
