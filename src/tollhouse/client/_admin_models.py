"""Typed models of the provider API's answers (``/v1/admin/*``), and their parse layer.

As :mod:`tollhouse.client._models`: wire names in snake case, aware UTC datetimes, the
body kept in ``raw`` (out of ``repr`` and equality).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from tollhouse.client._models import WebhookEndpoint, webhook_endpoint_fields
from tollhouse.client._parse import Fields

T = TypeVar("T")


def _raw() -> Any:
    return field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Org:
    """An org.

    Attributes:
        id: the org's id.
        name: its name for people.
        created_at: when it was made.
        suspended: its keys are refused (403 ``ORG_SUSPENDED``).
        suspended_at: since when, or None.
        first_key: the key made with it, when the creation asked for one (secret included).
    """

    id: str
    name: str
    created_at: datetime
    suspended: bool
    suspended_at: datetime | None = None
    first_key: AdminKey | None = None
    raw: Mapping[str, Any] = _raw()


@dataclass(frozen=True, slots=True)
class AdminKey:
    """An API key as the provider API shows it.

    Attributes:
        id: ``key_…``.
        org: the org that owns it.
        environment: SANDBOX or PRODUCTION.
        role: root, manager, backend or member.
        name: its label.
        prefix: the first characters of the secret.
        status: ``active``, ``revoked`` or ``expired``.
        created_at: when it was made.
        expires_at: when it stops working, or None.
        revoked_at: when it was revoked, or None.
        last_used_at: when it last made a call, or None.
        meta: free-form JSON given at creation.
        key: the secret — only in the answer that made the key.
        replaces: for a rotation, the key replaced (as it is now).
    """

    id: str
    org: str
    environment: str
    role: str
    name: str
    prefix: str
    status: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    meta: dict[str, Any] | None = None
    key: str | None = field(default=None, repr=False)
    replaces: AdminKey | None = None
    raw: Mapping[str, Any] = _raw()


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing, newest first.

    Attributes:
        data: the items.
        has_more: whether a page follows.
        next_cursor: pass it as ``cursor`` for the next page (None after the last).
    """

    data: tuple[T, ...]
    has_more: bool
    next_cursor: str | None
    raw: Mapping[str, Any] = _raw()


@dataclass(frozen=True, slots=True)
class KeyOverride:
    """One key's override of a bucket."""

    key_id: str
    limit: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class EnvironmentOverride:
    """The org's override of a bucket for one environment alone."""

    environment: str
    limit: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class EnvironmentLimit:
    """The limit a key of one environment gets without a key override."""

    limit: int
    overridden: bool


@dataclass(frozen=True, slots=True)
class BucketLimit:
    """A bucket as one org gets it.

    Attributes:
        name: the bucket.
        display_name: its name for people.
        window_seconds: its window.
        scope: what one counter is kept per.
        policy_limit: the policy's limit.
        limit: the org's limit (its override for every environment, else the policy's;
            in an org's own answer, the caller's environment's limit).
        overridden: the org has that override.
        key_overrides: its keys' overrides.
        updated_at: when the org's override was set (None without one).
        shadow: a shadow bucket (counts, never denies).
        environment_overrides: the org's overrides for one environment alone (the
            provider's answer; empty in an org's own).
        by_environment: ``SANDBOX``/``PRODUCTION`` → the limit a key of that
            environment gets without a key override (the provider's answer; empty in an
            org's own).
    """

    name: str
    display_name: str
    window_seconds: int
    scope: str
    policy_limit: int
    limit: int
    overridden: bool
    key_overrides: tuple[KeyOverride, ...] = ()
    shadow: bool = False
    updated_at: datetime | None = None
    environment_overrides: tuple[EnvironmentOverride, ...] = ()
    by_environment: Mapping[str, EnvironmentLimit] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PoolLimit:
    """An in-flight pool as one org gets it: overridden as a bucket is.

    Attributes:
        name: the pool.
        limit: the org's limit, requests in flight at once (its override for every
            environment, else the policy's; in an org's own answer, the caller's
            environment's limit).
        policy_limit: the policy's limit.
        overridden: the org has that override.
        key_overrides: its keys' overrides.
        updated_at: when the org's override was set (None without one).
        environment_overrides: the org's overrides for one environment alone (the
            provider's answer; empty in an org's own).
        by_environment: ``SANDBOX``/``PRODUCTION`` → the limit a key of that
            environment gets without a key override (the provider's answer; empty in an
            org's own).
    """

    name: str
    limit: int
    policy_limit: int
    overridden: bool = False
    key_overrides: tuple[KeyOverride, ...] = ()
    updated_at: datetime | None = None
    environment_overrides: tuple[EnvironmentOverride, ...] = ()
    by_environment: Mapping[str, EnvironmentLimit] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OrgLimits:
    """An org's effective limits (``GET /v1/admin/orgs/{orgId}/limits``, and an org's own
    ``GET /v1/limits``).

    Attributes:
        environment: the caller's environment in an org's own answer (whose keys'
            overrides it lists); None in the provider's.
    """

    org: str
    buckets: tuple[BucketLimit, ...]
    pools: tuple[PoolLimit, ...]
    environment: str | None = None
    raw: Mapping[str, Any] = _raw()

    def bucket(self, name: str) -> BucketLimit:
        """The bucket called ``name``.

        Raises:
            KeyError: no such bucket.
        """
        for b in self.buckets:
            if b.name == name:
                return b
        raise KeyError(name)

    def pool(self, name: str) -> PoolLimit:
        """The pool called ``name``.

        Raises:
            KeyError: no such pool.
        """
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class LimitOverride:
    """An override as stored."""

    org: str
    bucket: str
    key_id: str | None
    limit: int
    updated_at: datetime
    environment: str | None = None
    """The environment it applies to alone; None: every environment (or a key's)."""
    raw: Mapping[str, Any] = _raw()


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited change (never a secret).

    Attributes:
        actor: the admin token id (``adt_…``), key id or ``cli:<user>`` that made it.
        address: the caller's address, for a change made over HTTP.
    """

    id: str
    at: datetime
    actor: str
    action: str
    org: str
    target_id: str
    details: dict[str, Any]
    address: str | None = None


# --- parsing -------------------------------------------------------------------------------


def _key(f: Fields) -> AdminKey:
    meta = f.mapping("meta") if f.has("meta") else None
    replaced = f.opt_obj("replaces")
    return AdminKey(
        id=f.text("id"),
        org=f.text("org"),
        environment=f.text("environment"),
        role=f.text("role"),
        name=f.text("name"),
        prefix=f.text("prefix"),
        status=f.text("status"),
        created_at=f.when("createdAt"),
        expires_at=f.opt_when("expiresAt"),
        revoked_at=f.opt_when("revokedAt"),
        last_used_at=f.opt_when("lastUsedAt"),
        meta=meta,
        key=f.opt_text("key"),
        replaces=_key(replaced) if replaced is not None else None,
        raw=f.data,
    )


def parse_key(f: Fields) -> AdminKey:
    return _key(f)


def parse_org(f: Fields) -> Org:
    first = f.opt_obj("firstKey")
    return Org(
        id=f.text("id"),
        name=f.text("name"),
        created_at=f.when("createdAt"),
        suspended=f.flag("suspended"),
        suspended_at=f.opt_when("suspendedAt"),
        first_key=_key(first) if first is not None else None,
        raw=f.data,
    )


def _entry(f: Fields) -> AuditEntry:
    return AuditEntry(
        id=f.text("id"),
        at=f.when("at"),
        actor=f.text("actor"),
        action=f.text("action"),
        org=f.text("org"),
        target_id=f.text("targetId"),
        details=f.mapping("details"),
        address=f.opt_text("address"),
    )


def page_parser(item: Callable[[Fields], T]) -> Callable[[Fields], Page[T]]:
    """The parser of a page of items parsed by ``item``."""

    def parse(f: Fields) -> Page[T]:
        return Page(
            data=tuple(item(x) for x in f.objects("data")),
            has_more=f.flag("hasMore"),
            next_cursor=f.opt_text("nextCursor"),
            raw=f.data,
        )

    return parse


parse_org_page = page_parser(parse_org)
parse_key_page = page_parser(_key)
parse_audit_page = page_parser(_entry)


def _override_time(bucket: Fields) -> datetime | None:
    found = bucket.opt_obj("override")
    return found.when("updatedAt") if found is not None else None


def _by_environment(bucket: Fields) -> dict[str, EnvironmentLimit]:
    found = bucket.opt_obj("byEnvironment")
    if found is None:
        return {}
    out = {}
    for env in ("SANDBOX", "PRODUCTION"):
        one = found.obj(env)
        out[env] = EnvironmentLimit(one.integer("limit"), one.flag("overridden"))
    return out


def _key_overrides(limited: Fields) -> tuple[KeyOverride, ...]:
    return tuple(
        KeyOverride(k.text("keyId"), k.integer("limit"), k.when("updatedAt"))
        for k in (limited.objects("keyOverrides") if limited.has("keyOverrides") else [])
    )


def _environment_overrides(limited: Fields) -> tuple[EnvironmentOverride, ...]:
    return tuple(
        EnvironmentOverride(e.text("environment"), e.integer("limit"), e.when("updatedAt"))
        for e in (
            limited.objects("environmentOverrides") if limited.has("environmentOverrides") else []
        )
    )


def _pool(p: Fields) -> PoolLimit:
    limit = p.integer("limit")
    return PoolLimit(
        name=p.text("name"),
        limit=limit,
        # A server from before pool overrides sends name and limit alone.
        policy_limit=p.integer("policyLimit") if p.has("policyLimit") else limit,
        overridden=p.flag("overridden", False),
        key_overrides=_key_overrides(p),
        updated_at=_override_time(p),
        environment_overrides=_environment_overrides(p),
        by_environment=_by_environment(p),
    )


def parse_limits(f: Fields) -> OrgLimits:
    return OrgLimits(
        org=f.text("org"),
        buckets=tuple(
            BucketLimit(
                name=b.text("name"),
                display_name=b.text("displayName"),
                window_seconds=b.integer("windowSeconds"),
                scope=b.text("scope"),
                policy_limit=b.integer("policyLimit"),
                limit=b.integer("limit"),
                overridden=b.flag("overridden"),
                key_overrides=_key_overrides(b),
                shadow=b.flag("shadow", False),
                updated_at=_override_time(b),
                environment_overrides=_environment_overrides(b),
                by_environment=_by_environment(b),
            )
            for b in f.objects("buckets")
        ),
        pools=tuple(_pool(p) for p in f.objects("pools")),
        environment=f.opt_text("environment"),
        raw=f.data,
    )


def parse_override(f: Fields) -> LimitOverride:
    return LimitOverride(
        org=f.text("org"),
        bucket=f.text("bucket"),
        key_id=f.opt_text("keyId"),
        limit=f.integer("limit"),
        updated_at=f.when("updatedAt"),
        environment=f.opt_text("environment"),
        raw=f.data,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminWebhookEndpoint(WebhookEndpoint):
    """An org's webhook endpoint as the provider API shows it (``admin.webhooks.endpoints``):
    a :class:`~tollhouse.client.WebhookEndpoint` with its org and when it was disabled.

    Attributes:
        id: ``we_…``.
        org: the org whose events it gets.
        url: where deliveries are sent.
        environment: ``SANDBOX`` or ``PRODUCTION``: whose events it gets.
        enabled: False once disabled (by the org, the provider, or a 410 from the receiver).
        disabled_at: since when, or None.
        disabled_reason: why it was disabled.
        event_types: the event types sent there; None sends every type.
        created_at: when it was registered.
        previous_secret_expires_at: after a secret rotation, until when the old secret
            signs too.
        secret: the ``whsec_…`` secret — only in the answer that made (or rotated) it.
        raw: the JSON object as received.
    """

    # Keyword-only: they follow the inherited fields that have defaults.
    org: str
    disabled_at: datetime | None


def parse_webhook_endpoint(f: Fields) -> AdminWebhookEndpoint:
    return AdminWebhookEndpoint(
        **webhook_endpoint_fields(f), org=f.text("org"), disabled_at=f.opt_when("disabledAt")
    )


def parse_webhook_endpoints(f: Fields) -> list[AdminWebhookEndpoint]:
    return [parse_webhook_endpoint(e) for e in f.objects("data")]
