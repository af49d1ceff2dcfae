"""Request bodies have a deadline (``[limits] body_timeout`` plus ``body_timeout_per_mb``
per MiB declared): a body that stops arriving gets 408 in the error envelope and its
connection is closed, and on a route with an in-flight pool no slot is held while a body
trickles in — the slot is taken once the request is ready to run.

Real servers: `tollhouse serve` with the example upstream, and ``Tollhouse(app)``
in-process under uvicorn. No time is asserted: the policy sets a 1 s floor and the
tests wait for the answer.
"""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import Server, serve_in_thread, sqlite_key, start_server, stop_server
from tollhouse import Tollhouse
from tollhouse.http.asgi import Receive, Scope, Send
from tollhouse.policy.load import parse_policy

pytestmark = pytest.mark.integration

POLICY = """
[limits]
body_timeout = "1s"
body_timeout_per_mb = "20s"

[[pools]]
name = "ai_inflight"
limit = 1
routes = ["POST /v1/criteria/generate"]
lease = "120s"
"""
POSTING = {"jobId": "posting-1", "title": "Engineer", "description": "Python, PostgreSQL, APIs."}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    cwd = tmp_path_factory.mktemp("body-deadline")
    config = cwd / "policy.toml"
    config.write_text(POLICY)
    started = start_server(cwd, config)
    yield started
    stop_server(started)


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    return socket.create_connection((parts.hostname, parts.port), timeout=30)


def _stall(url: str, path: str, secret: str, length: int, sent: bytes) -> socket.socket:
    """A connection that sent the head and ``sent`` of a ``length``-byte body, then stops."""
    sock = _connect(url)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {secret}\r\n"
        f"X-Tenant-Id: acme\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
        + sent
    )
    return sock


def _answer(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """Status line, headers and body of the one answer, read until the server closes
    the connection (a recv of b"")."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return status, headers, body


def _assert_408(sock: socket.socket) -> None:
    status, headers, body = _answer(sock)
    assert status.startswith("HTTP/1.1 408 "), (status, body[:300])
    error = json.loads(body)["error"]
    assert error["code"] == "REQUEST_TIMEOUT"
    assert error["status"] == 408
    assert error["requestId"] == headers["x-request-id"]
    assert headers["connection"] == "close"


def _generate(server: Server, secret: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {secret}", "X-Tenant-Id": "acme"}
    return httpx.post(server.url + "/v1/criteria/generate", json=POSTING, headers=headers)


def test_a_trickling_body_holds_no_pool_slot(server: Server) -> None:
    """The pool has one slot. A request whose body is still coming (its deadline is
    about 20 s: 1 MB declared) does not hold it, so the org's next request runs."""
    secret = server.key("trickle-org")["key"]
    assert _generate(server, secret).status_code == 200  # the key is known to the server
    with _stall(server.url, "/v1/criteria/generate", secret, 1_000_000, b'{"jobId":') as stalled:
        answer = _generate(server, secret)
        assert answer.status_code == 200, answer.text
        status = httpx.get(
            server.url + "/v1/rate-limit/status", headers={"Authorization": f"Bearer {secret}"}
        )
        assert status.json()["ai_inflight"]["active"] == 0
        stalled.close()


def test_a_stalled_body_gets_408_and_the_pool_stays_free(server: Server) -> None:
    secret = server.key("stall-org")["key"]
    with _stall(server.url, "/v1/criteria/generate", secret, 100, b'{"jobId":') as stalled:
        _assert_408(stalled)
    assert _generate(server, secret).status_code == 200


@pytest.mark.parametrize("path", ["/v1/events", "/v1/score"])
def test_a_stalled_body_on_a_route_without_a_pool_gets_408(server: Server, path: str) -> None:
    secret = server.key("stall-org")["key"]
    with _stall(server.url, path, secret, 100, b"{") as stalled:
        _assert_408(stalled)


def test_a_body_that_arrives_in_time_in_pieces_is_served(server: Server) -> None:
    """Streamed without Content-Length, in several chunks: within the deadline, served."""
    secret = server.key("chunks-org")["key"]
    body = json.dumps(POSTING).encode()

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(body), 7):
            yield body[i : i + 7]

    answer = httpx.post(
        server.url + "/v1/criteria/generate",
        content=pieces(),
        headers={"Authorization": f"Bearer {secret}", "X-Tenant-Id": "acme"},
    )
    assert answer.status_code == 200, answer.text


def test_a_refusal_before_the_body_closes_the_connection(server: Server) -> None:
    """A bad key is refused before its body is read; the connection is then closed, not
    kept open draining a body trickled a byte at a time (each byte would put off the
    keep-alive timeout). No time is asserted: only that the close comes before the
    body's 150 bytes are all sent."""
    with _stall(server.url, "/v1/events", "sk_test_" + "x" * 32, 150, b"{") as sock:
        answer = b""
        for _ in range(150):
            readable, _, _ = select.select([sock], [], [], 0.25)
            if readable:
                chunk = sock.recv(65536)
                if not chunk:
                    break  # closed by the server
                answer += chunk
                continue
            try:
                sock.sendall(b" ")
            except OSError:  # closed while we were still sending
                break
        else:
            pytest.fail(f"still open after the whole body was trickled: {answer[:200]!r}")
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]


async def _echo(scope: Scope, receive: Receive, send: Send) -> None:
    """An in-process app that reads its whole body and answers its length."""
    if scope["type"] != "http":
        return
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = json.dumps({"received": size}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_in_process_under_another_server(tmp_path: Path) -> None:
    """``Tollhouse(app)`` under uvicorn (not `tollhouse serve`): the same deadline."""
    db = tmp_path / "t.db"
    secret = sqlite_key(db)
    config = tmp_path / "policy.toml"
    config.write_text(f'[storage]\ndatabase_url = "sqlite:///{db}"\n' + POLICY)
    with serve_in_thread(Tollhouse(_echo, config=config)) as url:
        with _stall(url, "/upload", secret, 100, b"0123456789") as stalled:
            _assert_408(stalled)
        whole = httpx.post(
            url + "/upload", content=b"x" * 100, headers={"Authorization": f"Bearer {secret}"}
        )
        assert whole.status_code == 200
        assert whole.json() == {"received": 100}


def test_the_deadline_grows_with_the_declared_length() -> None:
    limits = parse_policy(POLICY, "t.toml").limits
    assert limits.body_deadline(0) == 1.0
    assert limits.body_deadline(1_048_576) == 21.0
    assert limits.body_deadline(None) == 21.0  # streamed: as for max_body_bytes (1 MiB)
    default = parse_policy("", "t.toml").limits
    assert (default.body_timeout, default.body_timeout_per_mb) == (10.0, 5.0)
    with pytest.raises(Exception, match="body_timeout"):
        parse_policy('[limits]\nbody_timeout = "0s"\n', "t.toml")
