"""Fixtures for the jobs tests: a fresh database per test on SQLite and PostgreSQL, a
fake clock, and a runner for async test bodies."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests import services
from tollhouse.jobs.schema import create_job_schema
from tollhouse.storage.engine import make_engine

T = TypeVar("T")
_names = itertools.count()


class FakeClock:
    """An injected clock: time moves only when a test says so."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 3, 7, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run an async test body (the suite has no asyncio plugin)."""
    return asyncio.run(coro)


@asynccontextmanager
async def database(url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on ``url`` with the jobs tables, disposed afterwards."""
    engine = make_engine(url)
    try:
        await create_job_schema(engine)
        yield engine
    finally:
        await engine.dispose()


def new_pg_database(server: services.PostgresServer, prefix: str = "jobs") -> str:
    return server.create_database(f"{prefix}_{os.getpid()}_{next(_names)}")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture
def pg_url(postgres_service: services.PostgresServer) -> str:
    return new_pg_database(postgres_service)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh database URL, once per engine."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
