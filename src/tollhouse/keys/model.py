"""What an API key is, once authenticated: the identity a request carries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

Environment = Literal["SANDBOX", "PRODUCTION"]
Role = Literal["root", "manager", "backend", "member"]

#: The environments a key, and everything it reads or writes, belongs to.
ENVIRONMENTS: tuple[Environment, ...] = get_args(Environment)

#: Roles in the order of privilege (the call-counts shape names them, docs/api-shapes.md).
ROLES: tuple[Role, ...] = ("root", "manager", "backend", "member")

#: Secret prefix → environment (docs/security.md, docs/api-shapes.md).
PREFIX_ENVIRONMENT: dict[str, Environment] = {"sk_test_": "SANDBOX", "sk_live_": "PRODUCTION"}
ENV_PREFIX: dict[str, str] = {"test": "sk_test_", "live": "sk_live_"}


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One stored API key (never its secret, only the secret's hash)."""

    id: str
    """Public id, ``key_…``; what `keys list` shows and `keys revoke` takes."""
    org: str
    """The org that owns the key."""
    environment: Environment
    """SANDBOX for ``sk_test_`` keys, PRODUCTION for ``sk_live_``."""
    role: Role
    """What the key may do (the call-counts shape's roles)."""
    name: str
    """Free text given at creation."""
    prefix: str
    """The first characters of the secret, for people to recognise a key."""
    created_at: datetime
    """When the key was created (UTC)."""
    revoked_at: datetime | None = None
    """When the key was revoked, or None while it is active."""
    expires_at: datetime | None = None
    """When the key stops working (given at creation, or set by ``keys rotate`` on the
    key it replaced), or None."""
    last_used_at: datetime | None = None
    """When the key last made a call (written with the usage flush), or None."""
    meta: dict[str, Any] | None = None
    """Free-form JSON given at creation (never a secret of tollhouse's)."""
    org_suspended: bool = False
    """The key's org is suspended (read with the key by the key cache's lookup)."""

    def active(self, now: datetime) -> bool:
        """Neither revoked nor expired at ``now``."""
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: the authenticated key plus the request's tenant header."""

    key_id: str
    org: str
    environment: Environment
    role: Role
    tenant: str | None = None
    org_scope: str = ""
    """``org:ENVIRONMENT``: what ``scope = "org"`` buckets count under (derived)."""

    def __post_init__(self) -> None:
        if not self.org_scope:
            object.__setattr__(self, "org_scope", f"{self.org}:{self.environment}")
