"""The shared ``metadata`` every table module registers on, and the runner's version row.

Generic on purpose: storage knows no domain. Each domain defines its own tables on
:data:`metadata` (``tollhouse.keys.schema``, ``tollhouse.metering.schema``,
``tollhouse.jobs.schema``…), and :mod:`tollhouse.schema`, above them all, lists the
versioned steps that create them and exposes :func:`tollhouse.schema.create_schema`.
"""

from __future__ import annotations

from sqlalchemy import Column, Integer, MetaData, Table
from sqlalchemy.ext.asyncio import AsyncEngine

metadata = MetaData()

#: The runner's single row (``id = 1``): the version the database's schema is at.
schema_info = Table(
    "tollhouse_schema",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
)


async def create_schema(engine: AsyncEngine) -> None:
    """Deprecated spelling of :func:`tollhouse.schema.create_schema`; use that one.

    Raises:
        StorageError: the database could not be reached or a migration failed.
    """
    # TODO: delete once tollhouse/http/app.py and tests/http/ import create_schema from
    # tollhouse.schema (the CORS work has those files open). Until then this is the one
    # upward import left in storage/: the import-cycle test allows exactly this edge.
    from tollhouse.schema import create_schema as create

    await create(engine)
