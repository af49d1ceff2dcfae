"""Request limits against a real `tollhouse serve`: header size (431), slow clients
trickling headers (408, connection closed), bodies over the limit with and without
Content-Length (413), and JSON nested 10 000 deep (400/422 with a message, never 500)."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import Server
from tollhouse.policy.load import parse_policy
from tollhouse.security.server import DEFAULT_MAX_HEADER_BYTES, HEADER_TIMEOUT

pytestmark = pytest.mark.integration


def _connect(server: Server) -> socket.socket:
    parts = urlsplit(server.url)
    assert parts.hostname and parts.port
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (a recv of b"")."""
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def test_an_oversized_header_block_gets_431_and_is_closed(default_server: Server) -> None:
    lines = [b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000) for i in range(64)]
    filler = b"".join(lines)
    assert len(filler) > DEFAULT_MAX_HEADER_BYTES
    with _connect(default_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + filler + b"\r\n")
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    # Under the limit, the same request is served.
    with _connect(default_server) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            + b"".join(lines[:8])
            + b"\r\n"
        )
        assert _read_all(sock).startswith(b"HTTP/1.1 200 ")


def test_a_slow_loris_client_is_cut_off(default_server: Server) -> None:
    """Headers sent one byte at a time never complete; the server closes the connection
    (it does not wait for ever). No time is asserted: only that the close happens."""
    with _connect(default_server) as sock:
        answer = _trickle_head(sock, f"still open after {len(SLOW_HEAD)} bytes")
    assert answer.startswith(b"HTTP/1.1 408 ") or answer == b"(reset)", answer[:200]


#: A head that never ends, for the server's head deadline to cut off.
SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"z" * 10_000


def _trickle_head(sock: socket.socket, never_cut: str) -> bytes:
    """Send :data:`SLOW_HEAD` a byte at a time until the server answers or closes; what
    it answered (``b"(reset)"`` for a reset). Fails with ``never_cut`` if it never does."""
    for byte in SLOW_HEAD:
        try:
            sock.sendall(bytes([byte]))
        except OSError:  # closed by the server while we were still sending
            break
        readable, _, _ = select.select([sock], [], [], 0.25)
        if readable:
            break
    else:
        pytest.fail(f"{never_cut} ({HEADER_TIMEOUT}+ s)")
    try:
        return _read_all(sock)
    except ConnectionResetError:
        return b"(reset)"


def _read_answer(sock: socket.socket) -> bytes:
    """One answer with a ``Content-Length`` off a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, body
        body += chunk
    return head


def test_a_reused_connection_keeps_its_deadlines(default_server: Server) -> None:
    """The head deadline and the keep-alive timeout hold on a connection that has
    answered requests: several answers on one connection, then a head trickled in is
    cut off (408), and on another, an idle connection is closed by the server."""
    request = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    with _connect(default_server) as sock:
        for _ in range(3):
            sock.sendall(request)
            assert _read_answer(sock).startswith(b"HTTP/1.1 200 ")
        # Then nothing: the server closes the idle connection (the socket's own timeout,
        # 30 s, fails the test if it never does).
        assert _read_all(sock) == b""
    with _connect(default_server) as sock:
        for _ in range(3):
            sock.sendall(request)
            assert _read_answer(sock).startswith(b"HTTP/1.1 200 ")
        answer = _trickle_head(sock, "a slow head on a reused connection was never cut off")
    assert answer.startswith(b"HTTP/1.1 408 ") or answer == b"(reset)", answer[:200]


@pytest.fixture(scope="module")
def auth(default_server: Server) -> dict[str, str]:
    key = default_server.key("limits-org", "root")
    return {"Authorization": f"Bearer {key['key']}", "X-Tenant-Id": "acme"}


def test_a_streamed_body_without_length_over_the_limit_gets_413(
    default_server: Server, auth: dict[str, str]
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(1100):
            yield b"x" * 1024  # 1.1 MB > the 1 MiB default, no Content-Length

    for path in ("/v1/events", "/v1/score", "/v1/criteria/generate"):
        r = httpx.post(default_server.url + path, content=chunks(), headers=auth, timeout=30)
        assert r.status_code == 413, (path, r.status_code, r.text[:200])
        assert r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
        assert "1048576" in r.json()["error"]["message"]


DEEP: dict[str, bytes] = {
    "array": b"[" * 10_000 + b"]" * 10_000,
    "object": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "inside a valid field": b'{"jobId":"j","title":"t","description":'
    + b"[" * 10_000
    + b"]" * 10_000
    + b"}",
}
BODY_ROUTES = [
    ("POST", "/v1/score"),
    ("POST", "/v1/score/batch"),
    ("POST", "/v1/criteria/generate"),
    ("POST", "/v1/criteria/questions"),
    ("POST", "/v1/events"),
    ("POST", "/v1/criteria/job-deep"),
    ("PATCH", "/v1/jobs/job-deep/criteria"),
]


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
@pytest.mark.parametrize("shape", sorted(DEEP))
def test_deeply_nested_json_is_a_clear_client_error(
    default_server: Server, auth: dict[str, str], method: str, path: str, shape: str
) -> None:
    for _ in range(10):
        r = httpx.request(
            method,
            default_server.url + path,
            content=DEEP[shape],
            headers={**auth, "Content-Type": "application/json"},
            timeout=30,
        )
        if r.status_code != 429:
            break
        # One key runs every case: a route's per-second bucket (2/s for batches) can be
        # spent by the neighbouring cases. Wait as told and try again.
        time.sleep(float(r.headers["retry-after"]))
    assert r.status_code in (400, 422), (path, r.status_code, r.text[:300])
    body: Any = r.json()
    message = body["error"]["message"] if "error" in body else str(body.get("detail"))
    assert message and "Traceback" not in r.text and "RecursionError" not in r.text


def test_the_header_limit_is_a_policy_setting() -> None:
    policy = parse_policy("[limits]\nmax_header_bytes = 32768\n", "t.toml")
    assert policy.limits.max_header_bytes == 32768
    assert parse_policy("", "t.toml").limits.max_header_bytes == DEFAULT_MAX_HEADER_BYTES
    with pytest.raises(Exception, match="max_header_bytes"):
        parse_policy("[limits]\nmax_header_bytes = 0\n", "t.toml")
