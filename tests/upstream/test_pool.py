"""tollhouse.upstream against raw asyncio servers that answer byte for byte as scripted.

Each test runs a tiny server on loopback whose answers are exact bytes (so framing edge
cases — interim 1xx answers, HEAD with a length, read-until-close bodies, a chunked body
cut short — are what the client really meets), and checks what the pool makes of them:
the answer, the error class, and whether the connection was kept or closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

import httptools
import pytest

from tollhouse.errors import ConfigError
from tollhouse.upstream import (
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamPool,
    UpstreamPoolTimeout,
    UpstreamProtocolError,
    UpstreamReadTimeout,
    parse_origin,
)

#: What the scripted server does with one complete request: (method, target, body,
#: writer) → None. It writes whatever bytes it likes, or closes.
Script = Callable[[bytes, bytes, bytes, asyncio.StreamWriter], Awaitable[None]]

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
WAIT = 10.0


class Requests:
    """What the server received: one (method, target, headers, body) per request, and
    how many connections it accepted."""

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, bytes, dict[bytes, bytes], bytes]] = []
        self.connections = 0
        self.arrived = asyncio.Condition()

    async def until(self, count: int) -> None:
        """Wait until the server has received ``count`` requests."""
        async with self.arrived:
            await self.arrived.wait_for(lambda: len(self.seen) >= count)


class _Parser:
    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[tuple[UpstreamPool, Requests]]:
    """A server running ``script`` for every request, and a pool of 4 to it."""
    requests = Requests()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.connections += 1
        try:
            while True:
                target = _Parser()
                parser = httptools.HttpRequestParser(target)
                while not target.done:
                    data = await reader.read(65536)
                    if not data:
                        return
                    parser.feed_data(data)
                method = parser.get_method()
                requests.seen.append((method, target.url, target.headers, target.body))
                async with requests.arrived:
                    requests.arrived.notify_all()
                await script(method, target.url, target.body, writer)
                if writer.is_closing():
                    return
        except (ConnectionError, httptools.HttpParserError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(
        parse_origin(f"http://127.0.0.1:{port}"),
        max_connections=4,
        read_timeout=2.0,
        pool_timeout=0.5,
    )
    try:
        yield pool, requests
    finally:
        await pool.aclose()
        server.close()
        await server.wait_closed()


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), WAIT * 3))


HOST = [(b"host", b"upstream")]


# -- the common path -------------------------------------------------------------------------


def test_keep_alive_connections_are_reused() -> None:
    async def script(method: bytes, target: bytes, body: bytes, w: asyncio.StreamWriter) -> None:
        w.write(OK)

    async def body() -> None:
        async with scripted(script) as (pool, requests):
            for _ in range(5):
                response = await pool.request(b"GET", b"/x", HOST)
                assert (response.status, await response.read()) == (200, b"ok")
            assert requests.connections == 1
            assert pool.idle_connections == 1

    run(body)


def test_requests_in_flight_together_each_get_their_own_answer() -> None:
    async def script(method: bytes, target: bytes, body: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(target), target))

    async def body() -> None:
        async with scripted(script) as (pool, requests):
            targets = [b"/a", b"/bb", b"/ccc", b"/dddd"]
            # Started in one turn: written together at its end, on new connections, then
            # on the same connections taken from the pool (the first of those alone in
            # flight when it is written, the others not).
            for _ in range(3):
                sent = [pool.request(b"GET", target, HOST) for target in targets]
                responses = await asyncio.gather(*sent)
                assert [await response.read() for response in responses] == targets
            assert requests.connections == 4
            assert sorted(t for _, t, _, _ in requests.seen) == sorted(targets * 3)
            # A lone request afterwards is answered as before.
            assert await (await pool.request(b"GET", b"/e", HOST)).read() == b"/e"

    run(body)


def test_request_bytes_on_the_wire() -> None:
    async def script(method: bytes, target: bytes, body: bytes, w: asyncio.StreamWriter) -> None:
        w.write(OK)

    async def chunks() -> AsyncIterator[bytes]:
        yield b"hello "
        yield b""
        yield b"world"

    async def body() -> None:
        async with scripted(script) as (pool, requests):
            await (await pool.request(b"POST", b"/a%2Fb?q=1", HOST, b"payload")).read()
            await (await pool.request(b"POST", b"/empty", HOST)).read()
            await (await pool.request(b"PUT", b"/stream", HOST, chunks())).read()
            known = [*HOST, (b"content-length", b"11")]
            await (await pool.request(b"PUT", b"/known", known, chunks())).read()
        (m1, t1, h1, b1), (_, _, h2, b2), (_, _, h3, b3), (_, _, h4, b4) = requests.seen
        assert (m1, t1, b1) == (b"POST", b"/a%2Fb?q=1", b"payload")  # target as given
        assert h1[b"content-length"] == b"7"
        assert h2[b"content-length"] == b"0" and b2 == b""
        assert h3[b"transfer-encoding"] == b"chunked" and b3 == b"hello world"
        assert h4[b"content-length"] == b"11" and b4 == b"hello world"

    run(body)


def test_interim_answers_are_skipped_and_head_has_no_body() -> None:
    async def script(method: bytes, target: bytes, body: bytes, w: asyncio.StreamWriter) -> None:
        if method == b"HEAD":
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
        else:
            w.write(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n" + OK)

    async def body() -> None:
        async with scripted(script) as (pool, requests):
            early = await pool.request(b"GET", b"/", HOST)
            assert early.status == 200 and early.headers == [(b"content-length", b"2")]
            assert await early.read() == b"ok"
            head = await pool.request(b"HEAD", b"/", HOST)
            assert head.status == 200 and await head.read() == b""
            # The HEAD answer's Content-Length did not make the connection wait for a body.
            again = await pool.request(b"GET", b"/", HOST)
            assert await again.read() == b"ok"
            assert requests.connections == 1

    run(body)


def test_one_connection_reads_answers_of_every_framing_in_turn() -> None:
    # Each answer is parsed by the connection's one parser, reused from answer to answer:
    # what one framing leaves behind must not leak into the next answer.
    answers = {
        b"/length": OK,
        b"/chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"/no-content": b"HTTP/1.1 204 No Content\r\n\r\n",
        b"/not-modified": b"HTTP/1.1 304 Not Modified\r\ncontent-length: 99\r\n\r\n",
        b"/empty": b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    }

    async def script(method: bytes, target: bytes, body: bytes, w: asyncio.StreamWriter) -> None:
        if method == b"HEAD":
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
        elif target == b"/early":
            # The interim answer on its own, the final one after it.
            w.write(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n")
            await w.drain()
            await asyncio.sleep(0.05)
            w.write(OK)
        else:
            w.write(answers[target])

    expected = {
        b"/length": (200, b"ok"),
        b"/chunked": (200, b"ok"),
        b"/no-content": (204, b""),
        b"/not-modified": (304, b""),
        b"/empty": (200, b""),
        b"/early": (200, b"ok"),
    }

    async def body() -> None:
        async with scripted(script) as (pool, requests):
            for _ in range(2):
                for target, answer in expected.items():
                    response = await pool.request(b"GET", target, HOST)
                    assert (response.status, await response.read()) == answer, target
                head = await pool.request(b"HEAD", b"/length", HOST)
                assert (head.status, await head.read()) == (200, b"")
            assert requests.connections == 1

    run(body)


def test_a_header_block_and_a_declared_length() -> None:
    async def script(method: bytes, target: bytes, body: bytes, w: asyncio.StreamWriter) -> None:
        w.write(OK)

    async def chunks() -> AsyncIterator[bytes]:
        yield b"hello "
        yield b"world"

    async def body() -> None:
        async with scripted(script) as (pool, requests):
            block = b"host: upstream\r\nx-one: 1\r\n"
            await (await pool.request(b"GET", b"/block", block)).read()
            await (await pool.request(b"PUT", b"/known", block, chunks(), length=11)).read()
            await (await pool.request(b"PATCH", b"/none", block)).read()
        (m1, t1, h1, b1), (_, _, h2, b2), (_, _, h3, b3) = requests.seen
        assert (m1, t1, b1) == (b"GET", b"/block", b"")
        assert h1 == {b"host": b"upstream", b"x-one": b"1"}
        assert h2[b"content-length"] == b"11" and b2 == b"hello world"
        assert b"transfer-encoding" not in h2
        assert h3[b"content-length"] == b"0" and b3 == b""

    run(body)


def test_bytes_after_an_answer_close_its_connection() -> None:
    async def script(method: bytes, target: bytes, body: bytes, w: asyncio.StreamWriter) -> None:
        if target == b"/partial":
            # A complete answer and, in the same write, the start of another nobody asked for.
            w.write(OK + b"HTTP/1.1 200 OK\r\ncontent-len")
        elif target == b"/garbage":
            w.write(OK + b"NOT HTTP")
        else:
            w.write(OK)

    async def body() -> None:
        async with scripted(script) as (pool, requests):
            for target in (b"/partial", b"/garbage"):
                response = await pool.request(b"GET", target, HOST)
                assert (response.status, await response.read()) == (200, b"ok")
                # The next request is not answered by what was left over: a new connection.
                again = await pool.request(b"GET", b"/x", HOST)
                assert (again.status, again.headers, await again.read()) == (
                    200,
                    [(b"content-length", b"2")],
                    b"ok",
                )
            assert requests.connections == 3

    run(body)


def test_read_until_close_body() -> None:
    async def script(method: bytes, target: bytes, body: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        await w.drain()
        w.close()

    async def body() -> None:
        async with scripted(script) as (pool, _):
            response = await pool.request(b"GET", b"/", HOST)
            assert await response.read() == b"all of it"
            assert pool.open_connections == 0  # not kept: the upstream closed it

    run(body)


def test_large_body_streams_with_back_pressure() -> None:
    size = 8 * 1024 * 1024

    async def script(method: bytes, target: bytes, body: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            w.write(b"x" * 65536)
            await w.drain()

    async def body() -> None:
        async with scripted(script) as (pool, _):
            response = await pool.request(b"GET", b"/big", HOST)
            received = 0
            buffered_max = 0
            while chunk := await response.next_chunk():
                received += len(chunk)
                conn = response._conn
                if conn is not None:
                    buffered_max = max(buffered_max, conn.buffered)
                await asyncio.sleep(0)  # a slow reader
            assert received == size
            # The socket was paused: never more than the high-water mark plus one read.
            assert buffered_max < 1024 * 1024

    run(body)


# -- failures ------------------------------------------------------------------------------


def test_a_chunked_body_cut_short_is_an_error() -> None:
    async def script(method: bytes, target: bytes, body: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await w.drain()
        w.close()

    async def body() -> None:
        async with scripted(script) as (pool, _):
            response = await pool.request(b"GET", b"/", HOST)
            assert await response.next_chunk() == b"hello"
            with pytest.raises(UpstreamDisconnected):
                await response.next_chunk()
            assert pool.open_connections == 0

    run(body)


def test_a_short_content_length_body_is_an_error() -> None:
    async def script(method: bytes, target: bytes, body: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")
        await w.drain()
        w.close()

    async def body() -> None:
        async with scripted(script) as (pool, _):
            response = await pool.request(b"GET", b"/", HOST)
            with pytest.raises(UpstreamDisconnected):
                await response.read()

    run(body)


def test_garbage_is_a_protocol_error_and_silence_a_read_timeout() -> None:
    async def script(method: bytes, target: bytes, body: bytes, w: asyncio.StreamWriter) -> None:
        if target == b"/garbage":
            w.write(b"NOT HTTP AT ALL\r\n\r\n")
        elif target == b"/stall":
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nfive!")
            await asyncio.sleep(WAIT)
        else:
            await asyncio.sleep(WAIT)

    async def body() -> None:
        async with scripted(script) as (pool, _):
            with pytest.raises(UpstreamProtocolError):
                await pool.request(b"GET", b"/garbage", HOST)
            with pytest.raises(UpstreamReadTimeout):
                await pool.request(b"GET", b"/silent", HOST, read_timeout=0.2)
            stalled = await pool.request(b"GET", b"/stall", HOST, read_timeout=0.2)
            assert await stalled.next_chunk() == b"five!"
            with pytest.raises(UpstreamReadTimeout):
                await stalled.next_chunk()
            assert pool.open_connections == 0  # every failed connection was closed

    run(body)


def test_the_read_timeout_counts_from_the_latest_progress() -> None:
    async def script(method: bytes, target: bytes, body: bytes, w: asyncio.StreamWriter) -> None:
        if target == b"/trickle":
            # Longer in all than the read timeout, never silent for as long as it.
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n")
            for _ in range(8):
                await w.drain()
                await asyncio.sleep(0.25)
                w.write(b"x")
        elif target == b"/silent":
            await asyncio.sleep(WAIT)
        else:
            w.write(OK)

    async def body() -> None:
        async with scripted(script) as (pool, requests):
            trickle = await pool.request(b"GET", b"/trickle", HOST, read_timeout=1.0)
            assert await trickle.read() == b"x" * 8
            # The connection's timer was armed for a long timeout; a shorter one on the
            # same connection still applies (long before the test's own guard).
            await (await pool.request(b"GET", b"/x", HOST, read_timeout=WAIT)).read()
            async with asyncio.timeout(WAIT / 2):
                with pytest.raises(UpstreamReadTimeout):
                    await pool.request(b"GET", b"/silent", HOST, read_timeout=0.2)
            assert requests.connections == 1

    run(body)


def test_refused_connection_and_bad_urls() -> None:
    async def body() -> None:
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        pool = UpstreamPool(parse_origin(f"http://127.0.0.1:{port}"))
        with pytest.raises(UpstreamConnectError):
            await pool.request(b"GET", b"/", HOST)
        assert pool.open_connections == 0
        await pool.aclose()

    run(body)
    for bad in ("ftp://x", "http://", "http://h/x?q=1", "http://h:99999"):
        with pytest.raises(ConfigError):
            parse_origin(bad)
    origin = parse_origin("https://user:pw@api.internal/v2/")
    assert (origin.port, origin.prefix, origin.authority) == (443, b"/v2", b"api.internal")
    assert origin.userinfo == "user:pw"
    assert parse_origin("http://[::1]:8080").authority == b"[::1]:8080"


def test_a_stale_keep_alive_connection_is_retried_for_idempotent_methods_only() -> None:
    async def script(method: bytes, target: bytes, body: bytes, w: asyncio.StreamWriter) -> None:
        w.write(OK)
        await w.drain()
        if target == b"/then-close":
            # Answer, then close without saying so: the pool keeps a connection that is
            # already gone, as happens when an upstream's idle timeout fires.
            w.close()

    async def body() -> None:
        async with scripted(script) as (pool, requests):
            await (await pool.request(b"GET", b"/then-close", HOST)).read()
            await asyncio.sleep(0.05)  # the close reaches the pool's connection
            again = await pool.request(b"GET", b"/x", HOST)
            assert await again.read() == b"ok"
            assert requests.connections == 2
            await (await pool.request(b"POST", b"/then-close", HOST, b"1")).read()
            # A POST on a dead pooled connection is not sent twice: it may have been
            # taken. (Whether the pool sees the close first is a race; either way the
            # POST reaches the server at most once.)
            with suppress(UpstreamDisconnected):
                await (await pool.request(b"POST", b"/once", HOST, b"2")).read()
            assert [t for _, t, _, _ in requests.seen].count(b"/once") <= 1

    run(body)


def test_pool_limit_and_pool_timeout() -> None:
    release = asyncio.Event()

    async def script(method: bytes, target: bytes, body: bytes, w: asyncio.StreamWriter) -> None:
        if target == b"/hold":
            await release.wait()
        w.write(OK)

    async def body() -> None:
        async with scripted(script) as (pool, requests):
            held = [asyncio.ensure_future(pool.request(b"GET", b"/hold", HOST)) for _ in range(4)]
            await requests.until(4)
            with pytest.raises(UpstreamPoolTimeout):
                await pool.request(b"GET", b"/fifth", HOST)
            waiting = asyncio.ensure_future(pool.request(b"GET", b"/sixth", HOST))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            release.set()
            for task in held:
                await (await task).read()
            assert await (await waiting).read() == b"ok"
            assert requests.connections == 4  # the waiter got a freed connection

    run(body)


def test_a_cancelled_request_closes_its_connection() -> None:
    async def script(method: bytes, target: bytes, body: bytes, w: asyncio.StreamWriter) -> None:
        if target == b"/slow":
            await asyncio.sleep(WAIT)
        w.write(OK)

    async def body() -> None:
        async with scripted(script) as (pool, requests):
            task = asyncio.ensure_future(pool.request(b"GET", b"/slow", HOST))
            await requests.until(1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool.open_connections == 0
            # An answer not read to the end does not go back to the pool either.
            partial = await pool.request(b"GET", b"/", HOST)
            partial.close()
            assert await (await pool.request(b"GET", b"/", HOST)).read() == b"ok"

    run(body)
