"""CORS for the gateway: browser apps on other origins calling the API behind tollhouse.

Built once from the policy's ``[cors]`` table (:class:`tollhouse.policy.model.Cors`); the
gateway holds one only when some origin is allowed, so with CORS off a request costs one
attribute check. With CORS on, a request costs one scan of its headers for ``Origin``,
and its answer gets a tuple of headers built here at start for each listed origin (only
``"*"`` with credentials reflects an origin not known in advance, as the request's own
bytes):

* a **preflight** (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is
  answered by the gateway itself, before auth and limits: 204 with the preflight headers
  when the origin, the method and every requested header are allowed, else 403
  ``FORBIDDEN`` saying which was not (:meth:`CorsHeaders.preflight`);
* **every other answer** — the upstream's and the gateway's own errors alike — passes
  through :meth:`CorsHeaders.wrap`: the upstream's own CORS headers
  (:data:`RESPONSE_HEADERS`) are dropped (the policy's are the only ones a browser
  sees), then ``Vary: Origin`` and, for an allowed origin, ``Access-Control-Allow-Origin``,
  ``-Allow-Credentials`` and ``-Expose-Headers`` are added.

The semantics are Starlette's ``CORSMiddleware``'s: the matching origin is reflected
(with ``Vary: Origin``) unless any origin is allowed without credentials, when the answer
says ``*``; the CORS-safelisted request headers are always allowed; ``"*"`` in
``allow_headers`` allows whatever a preflight asks for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from tollhouse.policy.model import Cors

Header = tuple[bytes, bytes]
Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]

ORIGIN = b"origin"
REQUEST_METHOD = b"access-control-request-method"
REQUEST_HEADERS = b"access-control-request-headers"
ALLOW_ORIGIN = b"access-control-allow-origin"
#: The CORS response headers (the Fetch standard's); an upstream's own are dropped.
RESPONSE_HEADERS = frozenset(
    {
        ALLOW_ORIGIN,
        b"access-control-allow-credentials",
        b"access-control-allow-methods",
        b"access-control-allow-headers",
        b"access-control-expose-headers",
        b"access-control-max-age",
        b"access-control-allow-private-network",
    }
)
VARY_ORIGIN: Header = (b"vary", b"Origin")
VARY_PREFLIGHT: Header = (
    b"vary",
    b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
)
#: Request headers a browser may always send (the Fetch standard's CORS-safelisted ones).
_SAFELISTED_NAMES = ("Accept", "Accept-Language", "Content-Language", "Content-Type")
SAFELISTED_HEADERS = frozenset(h.lower() for h in _SAFELISTED_NAMES)
_VARY_ONLY: tuple[Header, ...] = (VARY_ORIGIN,)


def find_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case) in ASGI ``headers``, or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


class CorsHeaders:
    """The ``[cors]`` policy, compiled into the header tuples of every answer.

    Args:
        cors: the policy's ``[cors]`` table; ``allow_origins`` must not be empty.
    """

    __slots__ = (
        "allow_headers",
        "allowed",
        "any_header",
        "any_origin",
        "by_origin",
        "methods",
        "methods_text",
        "origins",
        "preflight_headers",
        "reflect",
    )

    def __init__(self, cors: Cors) -> None:
        if not cors.allow_origins:
            raise ValueError("CORS needs at least one allowed origin")
        self.any_origin = cors.allow_origins == ("*",)
        self.origins = frozenset(o.encode("latin-1") for o in cors.allow_origins)
        #: Reflect the caller's origin (a list of origins, or "*" with credentials), or
        #: answer "*" to every origin.
        self.reflect = not self.any_origin or cors.allow_credentials
        self.methods = frozenset(m.encode("ascii") for m in cors.allow_methods)
        self.methods_text = ", ".join(cors.allow_methods)
        self.any_header = cors.allow_headers == ("*",)
        self.allow_headers = SAFELISTED_HEADERS | {h.lower() for h in cors.allow_headers}

        common: list[Header] = []
        if cors.allow_credentials:
            common.append((b"access-control-allow-credentials", b"true"))
        if not self.reflect:
            common.append((ALLOW_ORIGIN, b"*"))
        #: Added to every answer to an allowed origin (with the origin, when reflected).
        self.allowed: tuple[Header, ...] = (*common, VARY_ORIGIN)
        if cors.expose_headers:
            self.allowed = (
                (b"access-control-expose-headers", ", ".join(cors.expose_headers).encode()),
                *self.allowed,
            )
        preflight = [
            *common,
            (b"access-control-allow-methods", self.methods_text.encode()),
            (b"access-control-max-age", str(int(cors.max_age)).encode()),
            VARY_PREFLIGHT,
        ]
        if not self.any_header:
            # The safelisted ones too: a JSON body makes browsers ask for Content-Type.
            names = list(cors.allow_headers)
            given = {n.lower() for n in names}
            names += [h for h in _SAFELISTED_NAMES if h.lower() not in given]
            preflight.append((b"access-control-allow-headers", ", ".join(names).encode()))
        #: A successful preflight's headers (with the origin, when reflected).
        self.preflight_headers: tuple[Header, ...] = tuple(preflight)
        #: Every answer's CORS headers per listed origin, built here once.
        self.by_origin = {o: (*self.allowed, (ALLOW_ORIGIN, o)) for o in self.origins - {b"*"}}

    def allows(self, origin: bytes) -> bool:
        """Whether ``origin`` (the ``Origin`` header's bytes) may call."""
        return self.any_origin or origin in self.origins

    def response_headers(self, origin: bytes | None) -> tuple[Header, ...]:
        """The CORS headers of an answer to a request with ``Origin: origin``."""
        if origin is None:
            return _VARY_ONLY
        if not self.any_origin:
            # A listed origin's tuple is ready; any other gets Vary alone (the answer
            # varies by Origin) and no permission.
            return self.by_origin.get(origin, _VARY_ONLY)
        if self.reflect:  # "*" with credentials: the origin is reflected, whatever it is
            return (*self.allowed, (ALLOW_ORIGIN, origin))
        return self.allowed

    def wrap(self, send: Send, origin: bytes | None) -> Send:
        """``send`` putting the policy's CORS headers on the answer in place of any
        ``Access-Control-*`` header the app set."""
        extra = self.response_headers(origin)

        async def cors_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                # dict() looks for CORS headers among the pairs faster than a loop (and
                # there are usually none). The gateway sends lists; anything else is copied.
                headers = message.get("headers", ())
                if not isinstance(headers, list):
                    headers = list(headers)
                if not RESPONSE_HEADERS.isdisjoint(dict(headers)):
                    headers = [h for h in headers if h[0] not in RESPONSE_HEADERS]
                message["headers"] = [*headers, *extra]
            await send(message)

        return cors_send

    def preflight(
        self, origin: bytes, method: bytes, requested: bytes | None
    ) -> tuple[list[Header], str | None]:
        """The answer to a preflight: its CORS headers, and what is not allowed (None: it
        all is, answer 204; else answer 403 with that message).

        Args:
            origin: the ``Origin`` header.
            method: the ``Access-Control-Request-Method`` header.
            requested: the ``Access-Control-Request-Headers`` header, if sent.
        """
        if not (self.any_origin or origin in self.origins):
            shown = origin.decode("latin-1")
            return [VARY_PREFLIGHT], (
                f"Cross-origin requests from {shown!r} are not allowed: the origin is not "
                "in the [cors] allow_origins of this API."
            )
        headers = list(self.preflight_headers)
        if self.reflect:
            headers.append((ALLOW_ORIGIN, origin))
        if method not in self.methods:
            return headers, (
                f"Cross-origin {method.decode('latin-1')!r} requests are not allowed; "
                f"allowed methods: {self.methods_text}."
            )
        if requested is not None:
            if self.any_header:
                headers.append((b"access-control-allow-headers", requested))
            else:
                refused = [
                    name
                    for part in requested.decode("latin-1").split(",")
                    if (name := part.strip().lower()) and name not in self.allow_headers
                ]
                if refused:
                    return headers, (
                        f"Cross-origin requests may not send {', '.join(refused)}; see the "
                        "Access-Control-Allow-Headers of this answer for the headers allowed."
                    )
        return headers, None
