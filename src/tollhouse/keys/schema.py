"""Tables of orgs and API keys, on the shared :data:`tollhouse.storage.schema.metadata`.

Every keys table name lives here; :mod:`tollhouse.schema` creates them (step 1, the
``expires_at`` column of step 5, :func:`tollhouse.security.audit.migrate_security`, and
step 11's org name and suspension, key ``last_used_at`` and ``meta`` and the admin tokens,
:func:`tollhouse.security.audit.migrate_admin`).
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, ForeignKey, Index, String, Table, Text

from tollhouse.storage.schema import metadata

orgs = Table(
    "orgs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Step 11: a name for people, the suspension (its keys are refused with 403) and when
    # either last changed (the key cache's poll re-reads the org's keys after it).
    Column("name", String(200), nullable=False, server_default=""),
    Column("suspended_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=True),
    Index("ix_orgs_updated_at", "updated_at"),
    Index("ix_orgs_created", "created_at", "id"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(64), ForeignKey("orgs.id"), nullable=False),
    Column("environment", String(16), nullable=False),
    Column("role", String(16), nullable=False),
    Column("name", String(200), nullable=False),
    Column("prefix", String(24), nullable=False),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    # Set on the old key by `keys rotate`: refused from then on (migration 5).
    Column("expires_at", DateTime(timezone=True), nullable=True),
    # Step 11: when the key last made a call (written with the usage flush, not per
    # request), and free-form JSON given at creation.
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    Column("meta", Text, nullable=True),
    Index("ix_api_keys_org", "org_id"),
    Index("ix_api_keys_revoked_at", "revoked_at"),
    Index("ix_api_keys_expires_at", "expires_at"),
)

#: Tokens of the provider API (``/v1/admin/*``): stored hashed like keys, never an org's.
admin_tokens = Table(
    "admin_tokens",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("prefix", String(24), nullable=False),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)
