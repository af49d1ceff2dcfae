"""Header field sets the reverse proxy and the WebSocket relay share.

One place for which fields describe a connection rather than a message, and which ones
the gateway owns on an answer, so HTTP and WebSocket traffic through tollhouse follow the
same rules.
"""

from __future__ import annotations

from typing import Final

__all__ = ["HOP_BY_HOP_HEADERS", "RATE_LIMIT_HEADERS"]

#: Fields that describe one connection, not the message (RFC 9110 §7.6.1, plus the older
#: ``keep-alive``, ``proxy-*`` and ``trailer`` names): never forwarded, in either direction.
HOP_BY_HOP_HEADERS: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

#: Headers the gateway sets on every admitted answer of a route with buckets; an
#: upstream's own are dropped then (``scope["state"]["limited"]``), so the caller sees
#: one consistent set.
RATE_LIMIT_HEADERS: Final = frozenset(
    {
        b"x-ratelimit-limit",
        b"x-ratelimit-remaining",
        b"x-ratelimit-reset",
        b"ratelimit",
        b"ratelimit-policy",
    }
)
