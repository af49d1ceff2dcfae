"""Fixtures of the fault tests: their own PostgreSQL cluster (restarted by one of them, so
it is not the session's shared one) and a fresh database per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests import services


@pytest.fixture(scope="package")
def pg_cluster() -> Iterator[services.PostgresServer]:
    with services.postgres_server() as server:
        yield server


@pytest.fixture
def pg_database(pg_cluster: services.PostgresServer) -> str:
    """The URL of an empty database on the fault tests' cluster."""
    return pg_cluster.create_database("faults_" + uuid.uuid4().hex[:10])
