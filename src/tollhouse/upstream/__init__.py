"""tollhouse's HTTP/1.1 client for upstreams: the reverse proxy's and the job handler's.

One :class:`UpstreamPool` per upstream origin keeps keep-alive connections and sends
requests on them; each :class:`UpstreamResponse` streams its body back. It is built on
asyncio protocols and ``httptools`` (llhttp, the parser uvicorn already uses), because the
general-purpose clients cost more per request than the rest of a proxy hop together:
``benchmarks/upstream_clients.py`` measures httpx, aiohttp and this client side by side,
and docs/gateway.md gives the figures.

What it does and does not do, on purpose:

* HTTP/1.1 only, one request at a time per connection (no pipelining), ``http`` and
  ``https`` (TLS verified against the system's certificates);
* the request target and headers are sent exactly as given: the caller (the proxy) owns
  what is forwarded;
* bodies stream both ways with back-pressure: a slow reader pauses the upstream socket, a
  slow upstream pauses the body being written;
* three timeouts, reported as distinct errors: ``connect`` (opening a connection),
  ``read`` (the upstream silent for that long while an answer is awaited; a caller that
  is slow to take the body does not count) and the pool wait; a ``total`` deadline is the
  caller's (it knows whether a long stream is expected);
* a response whose framing ends early (the upstream closed mid-body, or a chunked body
  without its last chunk) is an error, never a short body that looks complete;
* a request that is cancelled, or whose response is not read to the end, closes its
  connection rather than returning it to the pool.
"""

from __future__ import annotations

from tollhouse.upstream._errors import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamPoolTimeout,
    UpstreamProtocolError,
    UpstreamReadTimeout,
)
from tollhouse.upstream._pool import Origin, UpstreamPool, UpstreamResponse, parse_origin

__all__ = [
    "Origin",
    "UpstreamConnectError",
    "UpstreamConnectTimeout",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamPoolTimeout",
    "UpstreamProtocolError",
    "UpstreamReadTimeout",
    "UpstreamResponse",
    "parse_origin",
]
