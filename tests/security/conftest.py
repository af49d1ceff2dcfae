"""Fixtures of the security tests: a real ``tollhouse serve`` on each database engine."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests import services
from tests.conftest import ALLOW_PRIVATE_TARGETS, Server, start_server, stop_server


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """`tollhouse serve` with the built-in policy and the example upstream, on the embedded
    SQLite default (the session's ``default_server``) or on PostgreSQL (one per module);
    private webhook targets allowed (receivers run on loopback)."""
    if request.param == "sqlite":
        yield request.getfixturevalue("default_server")
        return
    pg: services.PostgresServer = request.getfixturevalue("postgres_service")
    url = pg.create_database(f"security_{secrets.token_hex(4)}")
    env = {**ALLOW_PRIVATE_TARGETS, "TOLLHOUSE_DATABASE_URL": url}
    started = start_server(tmp_path_factory.mktemp("security-pg"), env=env)
    yield started
    stop_server(started)
