"""An upstream that raises, naming the caller's API key in its error (tests that the
gateway logs the failure with the request id and without the key)."""

from __future__ import annotations

from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    headers = dict(scope["headers"])
    auth = headers.get(b"authorization", b"").decode()
    raise RuntimeError(f"upstream exploded while serving {auth}")
