"""``tollhouse serve``'s transport writes the answer of the only request in flight when it
is complete, not at the end of the event loop's turn: what the app still does after its
last message (the gateway's metering, say) does not hold the answer back."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from tollhouse.security.server import LimitedHttpToolsProtocol

#: The longest the app holds the event loop waiting for the client (a failure's bound).
WAIT = 10.0


def test_a_complete_answer_leaves_before_the_app_returns() -> None:
    got_answer = threading.Event()
    seen: list[bool] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})
        # Still this turn of the event loop, which is held here until the client has the
        # answer: the answer must have been written already.
        seen.append(got_answer.wait(WAIT))

    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="off", log_level="warning",
        http=LimitedHttpToolsProtocol,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(1000):
            if server.started:
                break
            time.sleep(0.01)
        assert server.started
        port = server.servers[0].sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT * 2) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while not data.endswith(b"\r\n\r\nok"):
                chunk = sock.recv(4096)
                assert chunk, data
                data += chunk
            got_answer.set()
        for _ in range(int(WAIT * 200)):
            if seen:
                break
            time.sleep(0.01)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert seen == [True]
