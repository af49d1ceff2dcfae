"""A minimal HTTP/1.1 upstream on raw asyncio protocols: the fastest thing Python can serve.

The proxy benchmarks put tollhouse (or nginx) in front of it, so the figures measure the
proxy, not the upstream. Every request gets ``200`` with a small JSON body, keep-alive,
whatever its method or path; request bodies are read and dropped.

Run it on its own: ``python benchmarks/raw_upstream.py --port 9100`` (uvloop when present).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

import httptools

BODY = b'{"ok":true,"service":"raw-upstream"}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


class RawUpstream(asyncio.Protocol):
    """Answers every complete request with :data:`RESPONSE`."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_complete(self) -> None:
        assert self.transport is not None
        self.transport.write(RESPONSE)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(RawUpstream, host, port, backlog=2048)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
