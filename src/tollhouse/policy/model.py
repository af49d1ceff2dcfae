"""The policy: typed, frozen objects loaded from the TOML file (docs/policy.md).

Everything here is plain data; :mod:`tollhouse.policy.load` builds it and
:mod:`tollhouse.policy.match` answers "which buckets and pools does this request hit".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: Where keys (and later usage and jobs) live when nothing says otherwise.
DEFAULT_DATABASE_URL = "sqlite:///.tollhouse/tollhouse.db"

Scope = Literal["org", "key", "tenant", "ip"]
Algorithm = Literal["fixed_window", "gcra"]
TenantRule = Literal["required", "optional"]
ErrorFormat = Literal["envelope", "detail"]
OriginalHeaders = Literal["auto", "original", "forwarded", "envoy"]


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where allowed requests go."""

    url: str | None = None
    """Base URL of an upstream HTTP API to reverse-proxy to."""
    app: str | None = None
    """``package.module:attr`` of an in-process ASGI app."""
    timeout: float = 30.0
    """Read timeout: seconds the upstream may stay silent while its answer is awaited (or
    not take the request body) before the caller gets a 504. Each wait, not the whole
    exchange: long streamed answers that keep sending are fine."""
    connect_timeout: float = 5.0
    """Seconds to wait for a connection to the upstream before answering 502."""
    total_timeout: float | None = None
    """Seconds the whole exchange may take (504, or the caller's connection cut once the
    answer has started); None: no limit, so streams (SSE, long polls) run as long as
    they keep sending."""
    pool_timeout: float = 10.0
    """Seconds a request may wait for a free upstream connection when all
    ``max_connections`` are busy, before a 504."""
    max_connections: int = 100
    """Most connections open to the upstream at once (per tollhouse process). The job
    handler's pool is never smaller than the jobs' concurrency caps."""
    keepalive_expiry: float = 4.0
    """Seconds an idle upstream connection is kept for reuse; keep it below the
    upstream's own keep-alive timeout."""
    preserve_host: bool = False
    """Send the caller's ``Host`` header upstream instead of the upstream's own."""
    forward_authorization: bool = False
    """When a caller's tollhouse key comes in ``X-API-Key``, pass the caller's own
    ``Authorization`` header to the upstream. Off: no credential leaves the gateway."""

    @property
    def is_example(self) -> bool:
        """True when neither url nor app is set: the bundled example upstream is used."""
        return self.url is None and self.app is None


@dataclass(frozen=True, slots=True)
class Proxy:
    """Which peers' forwarded headers are believed."""

    trusted_proxies: tuple[str, ...] = ()
    """Networks (CIDRs or single addresses) of proxies in front of tollhouse. From such a
    peer, ``X-Forwarded-For``/``-Proto`` give the client address and scheme that limits,
    metering and logs use, and forwarded headers are kept (and extended) upstream; from
    any other peer they are replaced."""


@dataclass(frozen=True, slots=True)
class ForwardAuth:
    """tollhouse as the decision service of a proxy in front of the API (nginx
    ``auth_request``, Envoy ``ext_authz``, Traefik ``ForwardAuth``, Caddy ``forward_auth``)."""

    access_log_listen: str = ""
    """``udp://HOST:PORT`` where the proxy's JSON access-log lines (syslog) are received, to
    join each decided call's upstream status and latency by request id and give its pool
    slots back; empty: not listened for (calls are metered with status unknown)."""
    log_wait: float = 60.0
    """Seconds a call decided with 200 waits for its access-log line before it is metered
    with status unknown (0)."""
    headers: OriginalHeaders = "auto"
    """Where the decision endpoint reads the original request: ``original``
    (``X-Original-Method`` + ``X-Original-URI``, nginx), ``forwarded``
    (``X-Forwarded-Method`` + ``X-Forwarded-Uri``, Traefik, Caddy), ``envoy`` (the path
    after the endpoint's own), each ignoring the others; ``auto``: whichever is present,
    and a 400 when more than one is (a caller added the one its proxy does not set)."""


@dataclass(frozen=True, slots=True)
class Storage:
    """Where state lives; URLs choose the backend by scheme."""

    database_url: str = DEFAULT_DATABASE_URL
    """Keys, orgs (and later usage and jobs): ``sqlite:///path`` or ``postgresql://…``."""
    redis_url: str = ""
    """Limits and pools; empty keeps them in process memory."""


@dataclass(frozen=True, slots=True)
class Bucket:
    """A named rate limit: at most ``limit`` cost units per ``window`` per scope."""

    name: str
    """Machine name; the category id and the ``buckets`` key in the status endpoint."""
    display_name: str
    """Human-readable name shown in the status endpoint's categories."""
    limit: int
    """Cost units allowed per window."""
    window: float
    """Window length in seconds."""
    routes: tuple[str, ...]
    """Route patterns (``METHOD /path/{param}`` with an optional trailing ``*``) it applies to."""
    endpoints: tuple[str, ...]
    """Endpoint patterns shown to callers in the status endpoint (defaults to ``routes``)."""
    scope: Scope = "org"
    """What one counter is kept per: org+environment, key, tenant, or client IP."""
    algorithm: Algorithm = "fixed_window"
    """Fixed windows (the API shapes' semantics, docs/api-shapes.md) or GCRA (smooth)."""
    cost: int = 1
    """Cost units one request takes."""
    shadow: bool = False
    """Count would-be denials (reported by the status endpoint) but deny nothing: for
    rolling out a new limit safely."""

    @property
    def window_seconds(self) -> int:
        """The window as whole seconds, as the status endpoint reports it."""
        return max(1, round(self.window))


@dataclass(frozen=True, slots=True)
class Pool:
    """A cap on requests in flight at once, per org+environment."""

    name: str
    """Machine name; a top-level object of that name in the status endpoint."""
    limit: int
    """Slots: at most this many requests of the pool's routes run at once."""
    routes: tuple[str, ...]
    """Route patterns whose requests hold a slot for their whole life."""
    lease: float = 300.0
    """Seconds after which a slot whose holder vanished is reclaimed."""


@dataclass(frozen=True, slots=True)
class EndpointGroup:
    """A named group of routes that usage is reported under (the call-counts shape's
    ENDPOINTS)."""

    key: str
    description: str
    routes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AccessRule:
    """Who may call a set of routes, and whether they must name a tenant."""

    routes: tuple[str, ...]
    """Route patterns the rule applies to."""
    roles: frozenset[str] | None = None
    """Roles allowed; None allows every role."""
    tenant: TenantRule = "optional"
    """``required``: requests must carry ``X-Tenant-Id``."""
    error_format: ErrorFormat | None = None
    """How the gateway's errors look on these routes: ``envelope`` (the error envelope
    ``{"error": {...}}``, the default) or ``detail`` (``{"detail": "..."}``, as the metrics
    catalogue shape answers; docs/api-shapes.md)."""


LabelSource = Literal["path", "header", "query"]


@dataclass(frozen=True, slots=True)
class Label:
    """A usage label read from each request of some routes (the call-counts shape's DBS,
    SCENARIOS…)."""

    name: str
    """The label's name in call records, e.g. ``db``, ``scenario``, ``reco_type``."""
    source: LabelSource
    """Where the value comes from: a path parameter, a request header or a query parameter."""
    key: str
    """The path parameter, header or query parameter name."""
    routes: tuple[str, ...]
    """Route patterns the label is read on."""


@dataclass(frozen=True, slots=True)
class AsyncRoute:
    """A route answered with 202 and run as a job (the scoring API shape)."""

    route: str
    concurrency: int = 500
    handler: str = "upstream"
    validator: str = "object"
    """What a submitted body must be: ``object`` (any JSON object) or ``score`` (the
    scoring API shape's score request, checked as the bundled example checks it)."""
    id_field: str = "applicationId"
    """The body field (a non-empty string) naming what a job is for, looked up by
    ``GET <route>/application/{id}``; empty: jobs are found by job id only."""


#: The validators an async route may name (``[[async_routes]] validator``).
ASYNC_VALIDATORS: tuple[str, ...] = ("object", "score")

#: Groups of tollhouse's own routes that ``[platform] disable`` may turn off (their paths
#: then go to the upstream, :mod:`tollhouse.http.routes`).
PLATFORM_GROUPS: tuple[str, ...] = (
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
class Platform:
    """Where tollhouse's own API routes live (``tollhouse routes`` lists them)."""

    prefix: str = ""
    """Mount point of every tollhouse-owned API route and the dashboard, e.g.
    ``/_tollhouse`` (``/v1/events`` is then ``/_tollhouse/v1/events``); empty: none. The
    policy's async routes and the operations endpoints keep their paths; route patterns
    in the policy name paths as callers send them, the prefix included."""
    disable: tuple[str, ...] = ()
    """Groups of :data:`PLATFORM_GROUPS` turned off: their paths go to the upstream."""


StoreFailure = Literal["local", "deny", "allow"]


@dataclass(frozen=True, slots=True)
class FailedAuth:
    """How many failed authentications one client address may make (``[limits]
    failed_auth``); past them the address gets 429 without any key being looked up."""

    limit: int = 20
    """Failed authentications (a key that is not valid) per window; 0 turns the limit off."""
    window: float = 60.0
    """Window length in seconds (fixed, aligned to the epoch like a bucket's)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Request-size limits enforced by the gateway before anything else, and what limits
    do while their shared store is away."""

    max_body_bytes: int = 1_048_576
    """Largest request body accepted; larger ones get 413."""
    max_header_bytes: int = 16_384
    """Largest request head (request line + headers) `tollhouse serve` accepts; larger
    ones get 431 and the connection is closed."""
    on_store_failure: StoreFailure = "local"
    """While the shared limit store (Redis) cannot be asked: ``local`` admits only from
    the share of each limit this instance holds, ``deny`` refuses every limited request,
    ``allow`` admits every request (counted in Redis once it answers)."""
    body_timeout: float = 10.0
    """Seconds a request body may take to arrive, at least (the floor of its deadline);
    a body not received in time gets 408."""
    body_timeout_per_mb: float = 5.0
    """Seconds added to a body's deadline per MiB of its declared ``Content-Length`` (of
    ``max_body_bytes`` for a body streamed without one)."""
    failed_auth: FailedAuth = field(default_factory=FailedAuth)
    """Failed authentications allowed per client address."""

    def body_deadline(self, length: int | None) -> float:
        """Seconds a body of ``length`` bytes (None: not declared) may take to arrive."""
        size = self.max_body_bytes if length is None else length
        return self.body_timeout + self.body_timeout_per_mb * size / 1_048_576


@dataclass(frozen=True, slots=True)
class Security:
    """Outbound-request safety (webhook targets)."""

    allow_private_targets: bool = False
    """Let webhook URLs reach loopback, link-local and private addresses (local
    development only); ``TOLLHOUSE_ALLOW_PRIVATE_TARGETS=1`` does the same."""


TrailingSlash = Literal["strict", "ignore"]


@dataclass(frozen=True, slots=True)
class Routing:
    """How the gateway reads a request path before matching it (:mod:`tollhouse.policy.paths`).

    Whatever the settings, the gateway matches the policy on one canonical path and passes
    that very path on: no spelling of a path reaches the upstream without the buckets and
    access rules of its canonical form. Empty segments are always removed (``//v1//x`` is
    ``/v1/x``); encoded ``/``, backslashes and ``.``/``..`` segments are refused (400).
    """

    trailing_slash: TrailingSlash = "ignore"
    """``ignore`` (default): a trailing ``/`` is removed, so ``/v1/x/`` is matched and
    forwarded as ``/v1/x`` — safe in front of an upstream that treats both alike, and
    no spelling can miss a bucket. ``strict``: ``/v1/x/`` and ``/v1/x`` are different
    paths, each matched and forwarded with its own ending; choose it only when the
    upstream tells them apart too (e.g. routes that end in ``/``)."""
    case_sensitive: bool = False
    """``false`` (default): literal segments of route patterns match in any case, and a
    matched path is forwarded with those segments spelled as the most specific matching
    pattern writes them (parameter segments and a prefix pattern's rest keep the
    caller's bytes; a path matching no pattern is forwarded as sent). ``true``: match
    case-sensitively and forward in the caller's case; choose it only when the upstream
    is case-sensitive too."""


#: ``[cors] allow_methods`` when not given.
CORS_METHODS: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
#: ``[cors] allow_headers`` when not given: what a browser app needs to call the gateway.
CORS_ALLOW_HEADERS: tuple[str, ...] = (
    "Authorization",
    "X-API-Key",
    "Content-Type",
    "X-Tenant-Id",
    "Idempotency-Key",
    "X-Request-Id",
)
#: ``[cors] expose_headers`` when not given: the rate-limit headers, ``Retry-After`` and
#: the request id, which a browser hides from scripts unless they are exposed.
CORS_EXPOSE_HEADERS: tuple[str, ...] = (
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "RateLimit",
    "RateLimit-Policy",
    "Retry-After",
    "X-Request-Id",
)


@dataclass(frozen=True, slots=True)
class Cors:
    """Which browser apps on other origins may call the API (:mod:`tollhouse.http.cors`).

    Off (no header added, preflights passed on like any request) while
    ``allow_origins`` is empty.
    """

    allow_origins: tuple[str, ...] = ()
    """Origins (``scheme://host[:port]``, lower case, no default port) allowed to call, or
    ``("*",)`` for any origin."""
    allow_methods: tuple[str, ...] = CORS_METHODS
    """Methods a preflight may ask for (upper case)."""
    allow_headers: tuple[str, ...] = CORS_ALLOW_HEADERS
    """Request headers a preflight may ask for (the CORS-safelisted ones always may), or
    ``("*",)``: whatever the preflight asks for."""
    expose_headers: tuple[str, ...] = CORS_EXPOSE_HEADERS
    """Response headers scripts on an allowed origin may read."""
    allow_credentials: bool = False
    """Let browsers send cookies and HTTP authentication (``credentials: "include"``);
    never with ``"*"`` origins."""
    max_age: float = 600.0
    """Seconds a browser may cache a preflight's answer (0: not at all)."""

    @property
    def enabled(self) -> bool:
        """True when some origin is allowed."""
        return bool(self.allow_origins)


#: The fair-use signals a ``[[fair_use]]`` table may name (docs/analytics.md#fair-use).
FAIR_USE_SIGNALS: tuple[str, ...] = (
    "regeneration_loop",
    "criteria_without_scoring",
    "polling_instead_of_webhooks",
    "ignored_retry_after",
    "burst_submission",
)


@dataclass(frozen=True, slots=True)
class FairUseRule:
    """One ``[[fair_use]]`` table: a usage pattern watched for, and what a flag does.

    A table naming only ``signal`` gets the documented defaults of that signal
    (:data:`FAIR_USE_DEFAULTS`).
    """

    signal: str
    """One of :data:`FAIR_USE_SIGNALS`."""
    threshold: float
    """Flagged above it: generations of one job, polls per completed job, or a share."""
    window: float
    """Seconds the signal is judged over (the sliding window of ``regeneration_loop``,
    the day of ``burst_submission``, the span the scheduled pass looks back)."""
    action: str = "flag"
    """``flag`` (shown, and sent as an event) or ``throttle`` (also a bucket override
    for the org until the window ends)."""
    after: float = 0.0
    """``criteria_without_scoring``: how long after its criteria a job counts as never
    scored (T)."""
    routes: tuple[str, ...] = ()
    """The routes the signal reads (generations, polls, submissions, scores)."""
    bucket: str | None = None
    """``throttle``: the bucket overridden."""
    limit: int | None = None
    """``throttle``: the limit the override sets."""


#: Each signal's defaults: what a ``[[fair_use]]`` table leaves out (docs/policy.md).
FAIR_USE_DEFAULTS: dict[str, FairUseRule] = {
    "regeneration_loop": FairUseRule(
        "regeneration_loop",
        threshold=3,
        window=86400.0,
        routes=("POST /v1/criteria/generate", "POST /v1/criteria/questions"),
    ),
    "criteria_without_scoring": FairUseRule(
        "criteria_without_scoring",
        threshold=0.5,
        window=7 * 86400.0,
        after=7 * 86400.0,
        routes=("POST /v1/score",),
    ),
    "polling_instead_of_webhooks": FairUseRule(
        "polling_instead_of_webhooks",
        threshold=5,
        window=86400.0,
        # GET /v1/score?ids= (up to 100 jobs' status) is one poll, as it costs one.
        routes=(
            "GET /v1/score/{scoringJobId}",
            "GET /v1/score",
            "GET /v1/score/application/{applicationId}",
        ),
    ),
    "ignored_retry_after": FairUseRule("ignored_retry_after", threshold=0.2, window=86400.0),
    "burst_submission": FairUseRule(
        "burst_submission", threshold=0.1, window=86400.0, routes=("POST /v1/score",)
    ),
}


@dataclass(frozen=True, slots=True)
class Policy:
    """The whole policy of one tollhouse deployment."""

    source: str
    """The file it was read from, or ``<built-in>``."""
    upstream: Upstream = field(default_factory=Upstream)
    proxy: Proxy = field(default_factory=Proxy)
    forward_auth: ForwardAuth = field(default_factory=ForwardAuth)
    storage: Storage = field(default_factory=Storage)
    limits: Limits = field(default_factory=Limits)
    security: Security = field(default_factory=Security)
    routing: Routing = field(default_factory=Routing)
    cors: Cors = field(default_factory=Cors)
    platform: Platform = field(default_factory=Platform)
    buckets: tuple[Bucket, ...] = ()
    pools: tuple[Pool, ...] = ()
    endpoint_groups: tuple[EndpointGroup, ...] = ()
    access: tuple[AccessRule, ...] = ()
    labels: tuple[Label, ...] = ()
    async_routes: tuple[AsyncRoute, ...] = ()
    fair_use: tuple[FairUseRule, ...] = ()
    """The ``[[fair_use]]`` signals; none: nothing is watched."""

    def bucket(self, name: str) -> Bucket | None:
        """The bucket called ``name``, or None."""
        for b in self.buckets:
            if b.name == name:
                return b
        return None
