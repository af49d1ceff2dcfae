"""The route table: every path tollhouse answers itself, in one piece.

Each :class:`Endpoint` names a path template (Starlette's syntax: ``{name}`` is one
segment, ``{name:path}`` the rest), its methods, the ASGI app answering it, the group
it belongs to (what ``[platform] disable`` turns off), who answers it (for
``tollhouse routes``) and whether it needs a key. :class:`RouteTable` matches a request
against all of them with Starlette's semantics, by construction:

* ``HEAD`` goes wherever ``GET`` does (RFC 9110);
* a path some endpoint answers, with a method none of them takes, is a 405 whose
  ``Allow`` lists every method of every endpoint on that path — and a path with a literal
  endpoint (``/v1/score/batch``) is not taken by a template (``/v1/score/{id}``) for
  another method, while two literal endpoints of one path (``POST /v1/score``, ``GET
  /v1/score``) each take their own;
* a path no endpoint answers is not the table's: it goes on to the upstream.

The gateway asks the table only for paths under one of its :attr:`RouteTable.prefixes`
(one ``startswith`` per request), so traffic to the upstream never runs a pattern.
:class:`TableApp` serves a table as a plain ASGI app (a 404 in the envelope, or a
fallback app, for the rest), for the jobs and platform routes used on their own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.routing import compile_path

from tollhouse.errors import MethodNotAllowed, NotFound
from tollhouse.http.answers import send_error, with_request_id
from tollhouse.http.asgi import ASGIApp, Receive, Scope, Send
from tollhouse.http.context import request_id_of

__all__ = ["GROUPS", "Endpoint", "Resolved", "RouteTable", "TableApp"]

#: Groups of tollhouse's own routes that ``[platform] disable`` may turn off (their paths
#: then go to the upstream). The policy's async routes (group ``jobs``) are turned off by
#: removing them from the policy; the operations endpoints (``ops``) move to their own
#: listener with ``tollhouse serve --ops-port``.
GROUPS: tuple[str, ...] = (
    "events",
    "call-counts",
    "analytics",
    "queue",
    "webhooks",
    "keys",
    "rate-limit-status",
    "openapi",
    "dashboard",
    "forward-auth",
    "admin",
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One path (template) tollhouse answers itself."""

    path: str
    """Starlette path template, e.g. ``/v1/analytics/{metric}``."""
    methods: tuple[str, ...]
    """Upper-case methods; ``HEAD`` is added wherever ``GET`` is."""
    app: ASGIApp
    """Answers the request (``scope["path_params"]`` holds the template's values)."""
    group: str
    """One of :data:`GROUPS`, ``jobs`` or ``ops``."""
    answers: str
    """Who answers, for ``tollhouse routes``: ``gateway``, ``platform``, ``jobs``,
    ``ops`` or ``dashboard``."""
    keyless: bool = False
    """Answered without a key, a bucket or metering (health, metrics, dashboard files,
    the OpenAPI document)."""
    error_format: str = "envelope"
    """How the table's own 405 is worded here: the envelope or ``{"detail": …}``."""
    documented: bool = True
    """Listed in the OpenAPI document (False for a second spelling of a path)."""

    @property
    def allowed(self) -> frozenset[str]:
        """The methods this endpoint takes, ``HEAD`` included wherever ``GET`` is."""
        methods = set(self.methods)
        if "GET" in methods:
            methods.add("HEAD")
        return frozenset(methods)


@dataclass(frozen=True, slots=True)
class Resolved:
    """What the table says about one request."""

    endpoint: Endpoint | None
    """The endpoint answering it, or None (405 when :attr:`allow` is set)."""
    params: dict[str, Any] = field(default_factory=dict)
    allow: str | None = None
    """For a 405: the ``Allow`` header (every method the path takes)."""
    refused: Endpoint | None = None
    """For a 405: an endpoint on the path (its error format and group)."""


@dataclass(frozen=True, slots=True)
class _Compiled:
    regex: re.Pattern[str]
    convertors: dict[str, Any]
    endpoint: Endpoint
    allowed: frozenset[str]
    literal: bool


_NO_MATCH = Resolved(None)


class RouteTable:
    """Every endpoint tollhouse answers itself, matched with Starlette's semantics.

    Args:
        endpoints: most specific first where templates overlap (the first full match
            answers).
        prefix: ``[platform] prefix``: mounted under it are the endpoints whose path
            does not come from the policy (``mounted`` below).
        disable: groups turned off (their paths go to the upstream).
        unprefixed: groups that keep their paths whatever the prefix (the policy's
            async routes, the operations endpoints).
    """

    def __init__(
        self,
        endpoints: Iterable[Endpoint],
        *,
        prefix: str = "",
        disable: Iterable[str] = (),
        unprefixed: Iterable[str] = ("jobs", "ops"),
    ) -> None:
        off = frozenset(disable)
        keep = frozenset(unprefixed)
        kept: list[Endpoint] = []
        for e in endpoints:
            if e.group in off:
                continue
            if prefix and e.group not in keep:
                e = replace(e, path=prefix + e.path)
            kept.append(e)
        self.endpoints: tuple[Endpoint, ...] = tuple(kept)
        self._compiled: list[_Compiled] = []
        for e in self.endpoints:
            regex, _, convertors = compile_path(e.path)
            self._compiled.append(_Compiled(regex, convertors, e, e.allowed, "{" not in e.path))
        #: The literal beginnings of every path (up to its first parameter): a request
        #: path starting with none of them is not the table's.
        starts = sorted({e.path.split("{", 1)[0] for e in self.endpoints})
        self.prefixes: tuple[str, ...] = tuple(
            p for p in starts if not any(p != q and p.startswith(q) for q in starts)
        )

    def owns(self, path: str) -> bool:
        """True when ``path`` may be one of the table's (one ``startswith``)."""
        return path.startswith(self.prefixes)

    def resolve(self, method: str, path: str) -> Resolved:
        """The endpoint answering ``method path``, a 405, or no match (the upstream's)."""
        partial: _Compiled | None = None
        allow: set[str] = set()
        for c in self._compiled:
            m = c.regex.match(path)
            if m is None:
                continue
            if method in c.allowed and not (
                partial is not None and partial.literal and not c.literal
            ):
                params = {k: c.convertors[k].convert(v) for k, v in m.groupdict().items()}
                return Resolved(c.endpoint, params)
            if partial is None:
                partial = c
            allow |= c.allowed
        if partial is None:
            return _NO_MATCH
        # A literal path is not a template's value: its own methods are all it takes
        # (GET /v1/score/batch is not the job "batch"; its Allow is POST alone).
        literal = {
            m for c in self._compiled if c.literal and c.regex.match(path) for m in c.allowed
        }
        if literal:
            allow = literal
        return Resolved(None, allow=", ".join(sorted(allow)), refused=partial.endpoint)

    def rows(self) -> list[tuple[str, str, str, bool]]:
        """``(path, methods, who answers, needs a key)`` per endpoint, in table order."""
        return [
            (e.path, ", ".join(sorted(e.allowed)), e.answers, not e.keyless) for e in self.endpoints
        ]


def method_not_allowed(method: str, path: str, allow: str) -> MethodNotAllowed:
    """The 405 for ``method path``, with its ``Allow``."""
    return MethodNotAllowed(
        f"{method} {path} is not allowed; allowed: {allow}", headers={"Allow": allow}
    )


class TableApp:
    """Raw ASGI: a table's endpoints; the rest to ``fallback``, or a 404 envelope.

    For the jobs or platform routes served on their own (tests, an app embedding them);
    behind the gateway the table is consulted by the gateway itself.
    """

    def __init__(self, table: RouteTable, fallback: ASGIApp | None = None) -> None:
        self.table = table
        self.fallback = fallback

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """The table's endpoints."""
        return self.table.endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if self.fallback is not None:
                await self.fallback(scope, receive, send)
            return
        method: str = scope["method"]
        path: str = scope["path"]
        found = self.table.resolve(method, path) if self.table.owns(path) else _NO_MATCH
        if found.endpoint is not None:
            scope["path_params"] = found.params
            await found.endpoint.app(scope, receive, with_request_id(send, request_id_of(scope)))
            return
        if found.allow is None and self.fallback is not None:
            await self.fallback(scope, receive, send)
            return
        request_id = request_id_of(scope)
        if found.allow is not None:
            assert found.refused is not None
            error = method_not_allowed(method, path, found.allow)
            await send_error(send, error, request_id, found.refused.error_format)
            return
        await send_error(send, NotFound(f"no route matches {method} {path}"), request_id)
