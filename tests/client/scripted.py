"""A real HTTP server on loopback that answers from a script, for the clients' send loop.

The retry, backoff and error paths need answers a real tollhouse gives only rarely (a
503, a 502, a slow answer, a body that is not JSON); this ASGI app, served by uvicorn on
a loopback port, gives them on demand and records every request exactly as it arrived.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.types import Receive, Scope, Send


@dataclass(frozen=True)
class Seen:
    """A request as the server received it."""

    method: str
    raw_path: bytes
    query: bytes
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass(frozen=True)
class Answer:
    """What the server sends back: a status, a JSON body (or raw bytes), headers; after
    ``delay`` seconds (longer than the client's timeout: a read timeout)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def reply(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, body, headers or {})


def slow(seconds: float) -> Answer:
    """An answer that comes too late for a client with a shorter timeout."""
    return Answer(200, {}, delay=seconds)


Step = Answer | Callable[[Seen], Answer]


class Scripted:
    """The ASGI app: each request takes the next step of the script (the last repeats)."""

    def __init__(self) -> None:
        self._steps: list[Step] = []
        self._lock = threading.Lock()
        self.requests: list[Seen] = []
        self.in_flight = 0
        self.peak = 0  # the most requests in progress at once since the script started
        self._script = 0

    def play(self, *steps: Step) -> Scripted:
        """Start a new script; forget the requests of the previous one."""
        with self._lock:
            self._steps = list(steps)
            self.requests = []
            # Slow answers of an earlier script may still be in progress: not counted.
            self._script += 1
            self.in_flight = self.peak = 0
        return self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        seen = Seen(
            scope["method"],
            scope["raw_path"],
            scope["query_string"],
            {k.decode().lower(): v.decode() for k, v in scope["headers"]},
            b"".join(chunks),
        )
        with self._lock:
            self.requests.append(seen)
            if not self._steps:
                raise AssertionError("the script is empty")
            step = self._steps.pop(0) if len(self._steps) > 1 else self._steps[0]
            script = self._script
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            await self._answer(step(seen) if callable(step) else step, send)
        finally:
            with self._lock:
                if script == self._script:
                    self.in_flight -= 1

    async def _answer(self, answer: Answer, send: Send) -> None:
        if answer.delay:
            await asyncio.sleep(answer.delay)
        if isinstance(answer.body, bytes):
            content, kind = answer.body, "text/html"
        elif answer.body is None:
            content, kind = b"", "application/json"
        else:
            content, kind = orjson.dumps(answer.body), "application/json"
        headers = {"content-type": kind, **answer.headers}
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": content})


@contextmanager
def refusing_port() -> Iterator[tuple[socket.socket, str]]:
    """A loopback port that refuses connections until something listens on it.

    Yields the bound (not listening) socket and its base URL; :func:`serve_on` turns it
    into a server.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock, f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


class Late:
    """Starts serving an app on a refusing port when asked (from a client's sleep hook)."""

    def __init__(self, app: Scripted, sock: socket.socket) -> None:
        config = uvicorn.Config(app, log_level="warning", lifespan="on", ws="none")
        self._server = uvicorn.Server(config)
        self._sock = sock
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )

    def start(self) -> None:
        """Listen and serve; returns once connections are accepted."""
        self._thread.start()
        for _ in range(1000):
            if self._server.started or not self._thread.is_alive():
                break
            time.sleep(0.01)
        assert self._server.started, "uvicorn did not start"

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.should_exit = True
            self._thread.join(10)
