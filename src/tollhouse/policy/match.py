"""Route matching: which buckets, pools, endpoint group and access rule a request hits.

Patterns are ``METHOD /path`` where a segment ``{name}`` matches any one segment and a
trailing ``*`` matches any rest of the path (``/v1/score*`` matches ``/v1/score`` and
``/v1/score/batch``; ``/v1/score/*`` does not match ``/v1/score``).

When several exact patterns (no ``*``) match, only the most specific counts — a literal
segment beats a parameter — so ``POST /v1/criteria/generate`` is not also counted as
``POST /v1/criteria/{jobId}``. Prefix patterns always count: they are how a policy says
"everything under here".

Paths are matched as given: the gateway gives canonical ones (:mod:`tollhouse.policy.paths`).
Patterns are read the same way: empty segments are dropped and, with
``[routing] trailing_slash = "ignore"``, so is the trailing ``/`` of an exact pattern
(``/v1/x/`` is ``/v1/x``; ``/v1/x/*`` keeps its meaning, "under ``/v1/x``").

With ``[routing] case_sensitive = false`` literal segments match in any case (Unicode case
folding), and the answer says how the path is spelled canonically: each segment matched by
a literal of the most specific matching pattern is written as that pattern writes it (a
prefix pattern's partial segment too, when it is plain ASCII); parameter segments and a
prefix pattern's rest keep the caller's spelling. Every case spelling of a path gets the
same buckets, pools and rules, so a path no pattern matches is left as it is.

Answers are cached per ``(method, path)`` in a bounded dict, so the hot path is one dict
lookup for paths seen before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tollhouse.memo import remember
from tollhouse.policy.load import parse_route
from tollhouse.policy.model import (
    AccessRule,
    AsyncRoute,
    Bucket,
    EndpointGroup,
    Label,
    Policy,
    Pool,
    Routing,
)

#: Distinct (method, path) answers kept; the cache is emptied when it fills up.
CACHE_SIZE = 8192
#: Characters written as themselves in a raw path (RFC 3986 unreserved).
_PLAIN = re.compile(r"[A-Za-z0-9._~-]*")


@dataclass(frozen=True, slots=True)
class _Pattern:
    methods: frozenset[str]
    literal: str
    segments: tuple[str, ...]
    """What request segments are compared with (literals case-folded when matching
    case-insensitively)."""
    spelled: tuple[str, ...]
    """The segments as the policy writes them."""
    prefix: bool
    """True for a trailing-``*`` pattern; the last segment is then a string prefix."""
    rank: tuple[int, ...]
    """Specificity: 1 per literal segment, 0 per parameter; compared lexicographically."""

    def matches(self, method: str, parts: list[str]) -> bool:
        methods = self.methods
        if (
            "*" not in methods
            and method not in methods
            and not (method == "HEAD" and "GET" in methods)
        ):
            return False
        segs = self.segments
        if self.prefix:
            n = len(segs) - 1
            if len(parts) < len(segs):
                return False
            if not parts[n].startswith(segs[n]):
                return False
        else:
            n = len(segs)
            if len(parts) != n:
                return False
        for i in range(n):
            s = segs[i]
            if s[0:1] != "{" and s != parts[i]:
                return False
        return True

    def spellings(self, parts: list[str]) -> tuple[tuple[int, str, bool], ...]:
        """``(index, text, whole)`` of the segments of a matched path (``parts``) that
        this pattern spells otherwise (see :func:`tollhouse.policy.paths.respell`)."""
        out: list[tuple[int, str, bool]] = []
        spelled = self.spelled
        n = len(spelled) - 1 if self.prefix else len(spelled)
        for i in range(n):
            s = spelled[i]
            if s[0:1] != "{" and parts[i] != s:
                out.append((i, s, True))
        if self.prefix and spelled[n]:
            s = spelled[n]
            head = parts[n][: len(s)]
            if (
                head != s
                and head.casefold() == s.casefold()
                and _PLAIN.fullmatch(head)
                and _PLAIN.fullmatch(s)
            ):
                out.append((n, s, False))
        return tuple(out)


def _compile(pattern: str, routing: Routing) -> _Pattern:
    methods, path = parse_route(pattern)
    prefix = path.endswith("*")
    body = path[:-1] if prefix else path
    written = body.split("/")[1:]
    # Read like a canonical path: no empty segments; no trailing "/" unless strict.
    spelled = [s for s in (written[:-1] if prefix else written) if s]
    if prefix:
        spelled.append(written[-1])  # the string prefix; "" for "/x/*"
    elif written[-1] == "" and (routing.trailing_slash == "strict" or not spelled):
        spelled.append("")  # "/x/" (strict) or "/" itself
    if routing.case_sensitive:
        segments = tuple(spelled)
    else:
        segments = tuple(s if s.startswith("{") else s.casefold() for s in spelled)
    rank = tuple(0 if s.startswith("{") else 1 for s in spelled)
    return _Pattern(methods, path, segments, tuple(spelled), prefix, rank)


@dataclass(slots=True, eq=False)
class RouteMatch:
    """Everything the gateway needs to know about one (method, path).

    Compared and hashed by identity: the gateway caches what it builds per match
    (:class:`tollhouse.http.checks.CheckCache`).
    """

    template: str | None
    """The most specific matching pattern's path, e.g. ``/v1/score/{scoringJobId}``."""
    buckets: tuple[Bucket, ...]
    pools: tuple[Pool, ...]
    endpoint_group: EndpointGroup | None
    roles: frozenset[str] | None
    """Roles allowed (intersection of the matching access rules); None: any role."""
    tenant_required: bool
    path_labels: dict[str, str] = field(default_factory=dict)
    """Labels read from this path's parameters (fixed for a given path)."""
    header_labels: tuple[tuple[str, bytes], ...] = ()
    """(label, lower-case header name) to read per request."""
    query_labels: tuple[tuple[str, str], ...] = ()
    """(label, query parameter) to read per request."""
    async_route: AsyncRoute | None = None
    """The async (job) route this request is, if any."""
    error_format: str = "envelope"
    """The most specific matching access rule's error format."""
    ip_scoped: bool = False
    """True when a bucket counts per client IP (its checks cannot be cached per key)."""
    respelled: str | None = None
    """The canonical spelling of this path when it differs from the path matched (only
    when matching case-insensitively): what the request is forwarded as."""
    spellings: tuple[tuple[int, str, bool], ...] = ()
    """The segments respelled, for :func:`tollhouse.policy.paths.respell` on the raw path."""

    def __post_init__(self) -> None:
        self.ip_scoped = any(b.scope == "ip" for b in self.buckets)


class Router:
    """Matches requests against every pattern of a policy."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.routing = policy.routing
        #: ``[routing] trailing_slash = "strict"``: canonical paths may end in ``/``.
        self.strict_slash = policy.routing.trailing_slash == "strict"
        self._fold = not policy.routing.case_sensitive
        self._targets: list[tuple[_Pattern, object]] = []
        for b in policy.buckets:
            self._add(b.routes, b)
        for p in policy.pools:
            self._add(p.routes, p)
        for g in policy.endpoint_groups:
            self._add(g.routes, g)
        for a in policy.access:
            self._add(a.routes, a)
        for label in policy.labels:
            self._add(label.routes, label)
        for ar in policy.async_routes:
            self._add((ar.route,), ar)
        self._cache: dict[tuple[str, str], RouteMatch] = {}

    def _add(self, routes: tuple[str, ...], target: object) -> None:
        for r in routes:
            self._targets.append((_compile(r, self.routing), target))

    def clear(self) -> None:
        """Forget every cached answer."""
        self._cache = {}

    def match(self, method: str, path: str) -> RouteMatch:
        """What ``method path`` (a canonical path) hits; cached."""
        key = (method, path)
        found = self._cache.get(key)
        if found is not None:
            return found
        return remember(self._cache, CACHE_SIZE, key, self._resolve(method, path))

    def _resolve(self, method: str, path: str) -> RouteMatch:
        parts = path.split("/")[1:]
        folded = [s.casefold() for s in parts] if self._fold else parts
        hits = [(p, t) for p, t in self._targets if p.matches(method, folded)]
        exact = [p.rank for p, _ in hits if not p.prefix]
        best = max(exact) if exact else None
        kept = [(p, t) for p, t in hits if p.prefix or p.rank == best]

        buckets: list[Bucket] = []
        pools: list[Pool] = []
        rules: list[AccessRule] = []
        for _, t in kept:
            if isinstance(t, Bucket) and t not in buckets:
                buckets.append(t)
            elif isinstance(t, Pool) and t not in pools:
                pools.append(t)
            elif isinstance(t, AccessRule) and t not in rules:
                rules.append(t)

        def specificity(p: _Pattern) -> tuple[int, int, tuple[int, ...]]:
            return (0 if p.prefix else 1, len(p.segments), p.rank)

        groups = [(p, t) for p, t in kept if isinstance(t, EndpointGroup)]
        group = max(groups, key=lambda pt: specificity(pt[0]))[1] if groups else None
        template: str | None = None
        respelled: str | None = None
        spellings: tuple[tuple[int, str, bool], ...] = ()
        if kept:
            top = max((p for p, _ in kept), key=specificity)
            template = top.literal
            if self._fold:
                spellings = top.spellings(parts)
                if spellings:
                    new = list(parts)
                    for i, text, whole in spellings:
                        new[i] = text if whole else text + parts[i][len(text) :]
                    respelled = "/" + "/".join(new)

        path_labels: dict[str, str] = {}
        header_labels: list[tuple[str, bytes]] = []
        query_labels: list[tuple[str, str]] = []
        async_route: AsyncRoute | None = None
        for p, t in kept:
            if isinstance(t, Label):
                if t.source == "path":
                    index = p.segments.index("{" + t.key + "}")
                    if index < len(parts):
                        path_labels[t.name] = parts[index]
                elif t.source == "header":
                    header_labels.append((t.name, t.key.encode("latin-1")))
                else:
                    query_labels.append((t.name, t.key))
            elif isinstance(t, AsyncRoute) and async_route is None:
                async_route = t

        formats = [
            (specificity(p), t.error_format)
            for p, t in kept
            if isinstance(t, AccessRule) and t.error_format is not None
        ]
        error_format = max(formats, key=lambda f: f[0])[1] if formats else "envelope"

        roles: frozenset[str] | None = None
        for r in rules:
            if r.roles is not None:
                roles = r.roles if roles is None else roles & r.roles
        return RouteMatch(
            template=template,
            buckets=tuple(buckets),
            pools=tuple(pools),
            endpoint_group=group if isinstance(group, EndpointGroup) else None,
            roles=roles,
            tenant_required=any(r.tenant == "required" for r in rules),
            path_labels=path_labels,
            header_labels=tuple(header_labels),
            query_labels=tuple(query_labels),
            async_route=async_route,
            error_format=error_format or "envelope",
            respelled=respelled,
            spellings=spellings,
        )
