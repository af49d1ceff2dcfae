"""Key rotation: a new secret for the same org/env/role/name; the old key works until the
overlap ends, then is refused — in the cache (clock-injected) and through a running serve."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from typer.testing import CliRunner

from tests.conftest import Server
from tollhouse.cli.main import app as cli_app
from tollhouse.keys.cache import MISS, KeyCache, Refusal
from tollhouse.keys.store import KeyStore
from tollhouse.schema import create_schema
from tollhouse.storage.engine import make_engine

T = TypeVar("T")


def with_store(tmp_path: Path, fn: Callable[[KeyStore], Awaitable[T]]) -> T:
    async def go() -> T:
        engine = make_engine(f"sqlite:///{tmp_path}/keys.db")
        try:
            await create_schema(engine)
            return await fn(KeyStore(engine))
        finally:
            await engine.dispose()

    return asyncio.run(go())


class Clocks:
    """A monotonic clock and a wall clock that move together, only when told."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = datetime.now(UTC)

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += timedelta(seconds=seconds)


def test_rotate_keeps_the_identity_and_sets_the_old_expiry(tmp_path: Path) -> None:
    async def go(store: KeyStore) -> None:
        old, old_secret = await store.create("acme", "live", "backend", "ci")
        rotated = await store.rotate(old.id, timedelta(hours=24))
        assert rotated is not None
        new, secret, before = rotated
        assert secret != old_secret and secret.startswith("sk_live_")
        assert (new.org, new.environment, new.role, new.name) == (
            "acme",
            "PRODUCTION",
            "backend",
            "ci",
        )
        assert new.id != old.id and before.id == old.id
        assert before.revoked_at is None and before.expires_at is not None
        assert timedelta(hours=23) < before.expires_at - new.created_at <= timedelta(hours=24)
        # Rotating with overlap 0 revokes at once; a revoked key cannot be rotated again.
        again = await store.rotate(new.id, timedelta(0))
        assert again is not None and again[2].revoked_at is not None
        with pytest.raises(ValueError, match="revoked or expired"):
            await store.rotate(new.id, timedelta(hours=1))
        assert await store.rotate("key_missing", timedelta(hours=1)) is None
        # A second rotation of the old key never extends its deadline.
        third = await store.rotate(old.id, timedelta(days=30))
        assert third is not None and third[2].expires_at == before.expires_at

    with_store(tmp_path, go)


def test_cache_refuses_the_old_key_once_the_overlap_ends(tmp_path: Path) -> None:
    async def go(store: KeyStore) -> None:
        clocks = Clocks()
        cache = KeyCache(store, ttl=3600, clock=lambda: clocks.mono, wall_clock=lambda: clocks.wall)
        old, old_secret = await store.create("acme")
        # Cached before the rotation: the revocation poll evicts it when the overlap ends.
        assert await cache.authenticate(old_secret) is not None
        rotated = await store.rotate(old.id, timedelta(minutes=10))
        assert rotated is not None
        new_secret = rotated[1]
        fresh = KeyCache(store, ttl=3600, clock=lambda: clocks.mono, wall_clock=lambda: clocks.wall)
        assert await fresh.authenticate(old_secret) is not None  # cached with its expiry
        assert await cache.poll_revocations() == 0
        clocks.advance(9 * 60)
        assert cache.cached(old_secret.encode()) not in (None, MISS)
        assert await fresh.authenticate(old_secret) is not None
        clocks.advance(61)
        # No SQL needed to know the fresh entry ended; the lookup after it refuses the key.
        assert fresh.cached(old_secret.encode()) is MISS
        # Refused as expired (401 KEY_EXPIRED), not as unknown.
        assert await fresh.authenticate(old_secret) == Refusal(True, "acme")
        assert await cache.poll_revocations() == 1
        assert await cache.authenticate(old_secret) == Refusal(True, "acme")
        assert await cache.authenticate(new_secret) is not None
        assert await fresh.authenticate(new_secret) is not None

    with_store(tmp_path, go)


def test_cache_entry_ends_with_the_key_without_a_query(tmp_path: Path) -> None:
    async def go(store: KeyStore) -> None:
        clocks = Clocks()
        old, old_secret = await store.create("acme")
        await store.rotate(old.id, timedelta(minutes=5))
        cache = KeyCache(store, ttl=3600, clock=lambda: clocks.mono, wall_clock=lambda: clocks.wall)
        assert await cache.authenticate(old_secret) is not None
        assert cache.cached(old_secret.encode()) is not MISS
        clocks.advance(5 * 60 + 1)
        assert cache.cached(old_secret.encode()) is MISS

    with_store(tmp_path, go)


def _status(server: Server, secret: str) -> int:
    r = httpx.get(
        server.url + "/v1/rate-limit/status",
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    return r.status_code


def _works(server: Server, secret: str) -> bool:
    # 429 (the status endpoint's own 2 req/s bucket) also means the key was accepted.
    code = _status(server, secret)
    assert code in (200, 401, 429), code
    return code != 401


def _until_refused(server: Server, secret: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not _works(server, secret):
            return
        time.sleep(0.2)
    raise AssertionError("the old key was still accepted")


def _cli(server: Server, *args: str, code: int = 0) -> str:
    """The CLI in-process (no interpreter start per call) on the server's database."""
    db = f"sqlite:///{server.cwd}/.tollhouse/tollhouse.db"
    result = CliRunner().invoke(cli_app, [*args, "--database-url", db])
    assert result.exit_code == code, result.output
    return result.output if code else result.stdout


@pytest.mark.integration
def test_rotate_through_a_running_server(default_server: Server) -> None:
    created = json.loads(
        _cli(
            default_server, "keys", "create", "--org", "rotation-org", "--role", "manager", "--json"
        )
    )
    data = json.loads(
        _cli(default_server, "keys", "rotate", created["id"], "--overlap", "24h", "--json")
    )
    assert set(data) >= {
        "id",
        "key",
        "org",
        "environment",
        "role",
        "name",
        "replaces",
        "oldKeyExpiresAt",
    }
    assert data["replaces"] == created["id"] and data["org"] == "rotation-org"
    assert data["role"] == "manager" and data["environment"] == "test"
    assert data["key"].startswith("sk_test_") and data["key"] != created["key"]
    assert datetime.fromisoformat(data["oldKeyExpiresAt"]) > datetime.now(UTC) + timedelta(hours=23)
    # Both work during the overlap.
    assert _works(default_server, created["key"]) and _works(default_server, data["key"])
    # A short overlap: the replaced key stops working once it ends, the new one goes on.
    short = json.loads(
        _cli(default_server, "keys", "rotate", data["id"], "--overlap", "2s", "--json")
    )
    _until_refused(default_server, data["key"])
    assert _works(default_server, short["key"])
    assert _works(default_server, created["key"])  # its own 24 h overlap is still running
    # --overlap 0 revokes at once (refused within the revocation poll).
    last = json.loads(
        _cli(default_server, "keys", "rotate", short["id"], "--overlap", "0", "--json")
    )
    _until_refused(default_server, short["key"], within=10)
    assert _works(default_server, last["key"])
    listed = {
        k["id"]: k
        for k in json.loads(_cli(default_server, "keys", "list", "--org", "rotation-org", "--json"))
    }
    assert listed[short["id"]]["revoked_at"] is not None
    assert listed[created["id"]]["expires_at"] == data["oldKeyExpiresAt"]
    assert "revoked or expired" in _cli(default_server, "keys", "rotate", short["id"], code=1)
    typo = _cli(default_server, "keys", "rotate", last["id"], "--overlap", "soon", code=2)
    assert "--overlap" in typo


def test_a_database_without_key_expiry_is_migrated(tmp_path: Path) -> None:
    """api_keys made before rotation existed (no expires_at) gain the column; keys stay."""

    async def go() -> None:
        engine = make_engine(f"sqlite:///{tmp_path}/old.db")
        try:
            async with engine.begin() as conn:
                await conn.exec_driver_sql(
                    "CREATE TABLE tollhouse_schema (id INTEGER PRIMARY KEY, version INTEGER)"
                )
                await conn.exec_driver_sql("INSERT INTO tollhouse_schema VALUES (1, 1)")
                await conn.exec_driver_sql(
                    "CREATE TABLE orgs (id VARCHAR(64) PRIMARY KEY, created_at DATETIME)"
                )
                await conn.exec_driver_sql(
                    "CREATE TABLE api_keys (id VARCHAR(40) PRIMARY KEY, org_id VARCHAR(64), "
                    "environment VARCHAR(16), role VARCHAR(16), name VARCHAR(200), "
                    "prefix VARCHAR(24), secret_hash VARCHAR(64) UNIQUE, created_at DATETIME, "
                    "revoked_at DATETIME)"
                )
                await conn.exec_driver_sql(
                    "INSERT INTO orgs VALUES ('acme', '2026-01-01 00:00:00.000000')"
                )
                await conn.exec_driver_sql(
                    "INSERT INTO api_keys VALUES ('key_old', 'acme', 'SANDBOX', 'root', 'old', "
                    f"'sk_test_old0', '{'0' * 64}', '2026-01-01 00:00:00.000000', NULL)"
                )
            await create_schema(engine)
            store = KeyStore(engine)
            rotated = await store.rotate("key_old", timedelta(hours=1))
            assert rotated is not None and rotated[2].expires_at is not None
            assert {k.id for k in await store.list_keys("acme")} == {"key_old", rotated[0].id}
        finally:
            await engine.dispose()

    asyncio.run(go())
