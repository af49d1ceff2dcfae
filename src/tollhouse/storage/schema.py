"""Tables (SQLAlchemy Core) and the shared ``metadata`` every table module registers on.

The keys tables live here; usage tables in :mod:`tollhouse.metering.schema`. Each table
name is spelled once, in its table module. :func:`create_schema` runs the migrations of
:mod:`tollhouse.storage.migrations`.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)
from sqlalchemy.ext.asyncio import AsyncEngine

metadata = MetaData()

#: Schema version :func:`create_schema` brings a database to: the last step of
#: :data:`tollhouse.storage.migrations.MIGRATIONS` (a test keeps the two equal).
SCHEMA_VERSION = 6

schema_info = Table(
    "tollhouse_schema",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
)

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


async def create_schema(engine: AsyncEngine) -> None:
    """Create missing tables and apply pending migrations (idempotent, safe to run from
    several processes at once), recording the schema version.

    Raises:
        StorageError: the database could not be reached or a migration failed.
    """
    # Imported here: the migration steps import the table modules, which import this one.
    from tollhouse.storage.migrations import migrate

    await migrate(engine)
