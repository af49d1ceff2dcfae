"""Tables of orgs and API keys, on the shared :data:`tollhouse.storage.schema.metadata`.

Every keys table name lives here; :mod:`tollhouse.schema` creates them (step 1, and the
``expires_at`` column of step 5, :func:`tollhouse.security.audit.migrate_security`).
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, ForeignKey, Index, String, Table

from tollhouse.storage.schema import metadata

orgs = Table(
    "orgs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
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
    Index("ix_api_keys_org", "org_id"),
    Index("ix_api_keys_revoked_at", "revoked_at"),
    Index("ix_api_keys_expires_at", "expires_at"),
)
