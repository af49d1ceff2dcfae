"""Tables (SQLAlchemy Core). Every table name lives here and nowhere else."""

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

#: Schema version written by :func:`create_schema`; bumped with each migration.
SCHEMA_VERSION = 1

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
    Index("ix_api_keys_org", "org_id"),
    Index("ix_api_keys_revoked_at", "revoked_at"),
)


async def create_schema(engine: AsyncEngine) -> None:
    """Create missing tables (idempotent) and record the schema version."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        row = (await conn.execute(schema_info.select())).first()
        if row is None:
            await conn.execute(schema_info.insert().values(id=1, version=SCHEMA_VERSION))
