"""The policy: typed, frozen objects loaded from the TOML file (DESIGN §3.2).

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


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where allowed requests go."""

    url: str | None = None
    """Base URL of an upstream HTTP API to reverse-proxy to."""
    app: str | None = None
    """``package.module:attr`` of an in-process ASGI app."""
    timeout: float = 30.0
    """Seconds to wait for the upstream's response before answering 504."""
    connect_timeout: float = 5.0
    """Seconds to wait for a connection to the upstream before answering 502."""

    @property
    def is_example(self) -> bool:
        """True when neither url nor app is set: the bundled example upstream is used."""
        return self.url is None and self.app is None


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
    """Fixed windows (the seeds' semantics) or GCRA (smooth)."""
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
    """A named group of routes that usage is reported under (seed 001 ENDPOINTS)."""

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
    """How the gateway's errors look on these routes: ``envelope`` (seed 004's
    ``{"error": {...}}``, the default) or ``detail`` (``{"detail": "..."}``, seed 003)."""


LabelSource = Literal["path", "header", "query"]


@dataclass(frozen=True, slots=True)
class Label:
    """A usage label read from each request of some routes (seed 001's DBS, SCENARIOS…)."""

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
    """A route answered with 202 and run as a job (seed 004)."""

    route: str
    concurrency: int = 500
    handler: str = "upstream"


@dataclass(frozen=True, slots=True)
class Limits:
    """Request-size limits enforced by the gateway before anything else."""

    max_body_bytes: int = 1_048_576
    """Largest request body accepted; larger ones get 413."""
    max_header_bytes: int = 16_384
    """Largest request head (request line + headers) `tollhouse serve` accepts; larger
    ones get 431 and the connection is closed."""


@dataclass(frozen=True, slots=True)
class Security:
    """Outbound-request safety (webhook targets)."""

    allow_private_targets: bool = False
    """Let webhook URLs reach loopback, link-local and private addresses (local
    development only); ``TOLLHOUSE_ALLOW_PRIVATE_TARGETS=1`` does the same."""


@dataclass(frozen=True, slots=True)
class Policy:
    """The whole policy of one tollhouse deployment."""

    source: str
    """The file it was read from, or ``<built-in>``."""
    upstream: Upstream = field(default_factory=Upstream)
    storage: Storage = field(default_factory=Storage)
    limits: Limits = field(default_factory=Limits)
    security: Security = field(default_factory=Security)
    buckets: tuple[Bucket, ...] = ()
    pools: tuple[Pool, ...] = ()
    endpoint_groups: tuple[EndpointGroup, ...] = ()
    access: tuple[AccessRule, ...] = ()
    labels: tuple[Label, ...] = ()
    async_routes: tuple[AsyncRoute, ...] = ()

    def bucket(self, name: str) -> Bucket | None:
        """The bucket called ``name``, or None."""
        for b in self.buckets:
            if b.name == name:
                return b
        return None
