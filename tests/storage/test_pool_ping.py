"""PostgreSQL connections in the pool: a connection idle past
:data:`~tollhouse.storage.engine.PING_AFTER_IDLE_SECONDS` is pinged at checkout and
replaced when its session is gone; one used a moment ago goes out unpinged, and if its
session died meanwhile the statement fails once and the pool is renewed.

Sessions are killed with ``pg_terminate_backend`` from another engine (what a server
restart does to every pooled connection); the idle threshold is set to 0 or to an hour
instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import itertools
import os

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests import services
from tollhouse.storage import engine as engine_module
from tollhouse.storage.engine import make_engine

pytestmark = pytest.mark.postgres

_names = itertools.count()


@pytest.fixture
def pg_url(postgres_service: services.PostgresServer) -> str:
    return postgres_service.create_database(f"ping_{os.getpid()}_{next(_names)}")


async def _pid(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def _pool_one_and_kill_it(engine: AsyncEngine, url: str) -> int:
    """Use a connection (it goes back to the pool), then end its session from another
    engine, as a server restart would; returns the killed session's pid."""
    pid = await _pid(engine)
    killer = make_engine(url)
    try:
        async with killer.connect() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            await conn.commit()
    finally:
        await killer.dispose()
    return pid


def test_an_idle_connection_is_pinged_and_replaced(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_SECONDS", 0.0)

    async def go() -> None:
        engine = make_engine(pg_url)
        try:
            first = await _pool_one_and_kill_it(engine, pg_url)
            # Checked out again: the ping finds the session gone, the pool replaces it
            # and the statement runs on a new session, with no error.
            second = await _pid(engine)
            assert second != first
        finally:
            await engine.dispose()

    asyncio.run(go())


def test_a_connection_in_use_a_moment_ago_goes_out_unpinged(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_SECONDS", 3600.0)

    async def go() -> None:
        engine = make_engine(pg_url)
        try:
            first = await _pool_one_and_kill_it(engine, pg_url)
            # Not pinged (the counter-test of the one above): the dead session is handed
            # out and the statement fails, as a disconnect the pool reacts to.
            with pytest.raises(DBAPIError) as caught:
                await _pid(engine)
            assert caught.value.connection_invalidated
            # The pool was renewed: the next checkout opens a new session.
            assert await _pid(engine) != first
        finally:
            await engine.dispose()

    asyncio.run(go())
