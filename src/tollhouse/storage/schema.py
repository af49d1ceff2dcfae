"""The shared ``metadata`` every table module registers on, and the runner's version row.

Generic on purpose: storage knows no domain. Each domain defines its own tables on
:data:`metadata` (``tollhouse.keys.schema``, ``tollhouse.metering.schema``,
``tollhouse.jobs.schema``…), and :mod:`tollhouse.schema`, above them all, lists the
versioned steps that create them and exposes :func:`tollhouse.schema.create_schema`.
"""

from __future__ import annotations

from sqlalchemy import Column, Integer, MetaData, Table

metadata = MetaData()

#: The runner's single row (``id = 1``): the version the database's schema is at.
schema_info = Table(
    "tollhouse_schema",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
)
