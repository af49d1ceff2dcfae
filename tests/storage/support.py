"""Shared by the usage tests: a database URL on every engine, and an async runner.

``database_url`` is parametrised over SQLite (a file in ``tmp_path``) and PostgreSQL (a
fresh database in the session's cluster, marked ``postgres``). Tests create their engine
inside :func:`run_with` because async engines belong to the event loop that made them.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.schema import create_schema
from tollhouse.storage.engine import make_engine

T = TypeVar("T")

_seq = itertools.count()

ENGINES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def sqlite_url(tmp_path: Path, name: str = "usage") -> str:
    return f"sqlite:///{tmp_path}/{name}.db"


@contextmanager
def postgres_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database in the session's PostgreSQL cluster, dropped afterwards (each is
    a copy of template1: keeping dozens would fill the disk for nothing)."""
    service = request.getfixturevalue("postgres_service")
    name = f"usage_{os.getpid()}_{next(_seq)}"
    url: str = service.create_database(name)
    try:
        yield url
    finally:
        service._run(
            str(service.bindir / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(service.port),
            "-U",
            "postgres",
            "-c",
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
        )


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on each engine."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    with postgres_database(request) as url:
        yield url


def run_with(url: str, fn: Callable[[AsyncEngine], Awaitable[T]], *, schema: bool = True) -> T:
    """Open ``url`` (schema created), run ``fn(engine)`` to completion, close it."""

    async def go() -> T:
        engine = make_engine(url)
        try:
            if schema:
                await create_schema(engine)
            return await fn(engine)
        finally:
            await engine.dispose()

    return asyncio.run(go())
