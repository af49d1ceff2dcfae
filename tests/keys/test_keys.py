"""Keys in SQLite: hashed at rest, looked up through the cache, revocation polled."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tests import services
from tollhouse.keys import cache as cache_module
from tollhouse.keys.cache import MISS, KeyCache
from tollhouse.keys.hashing import environment_of, hash_secret
from tollhouse.keys.store import KeyStore
from tollhouse.schema import create_schema
from tollhouse.storage.engine import make_engine

T = TypeVar("T")


def with_store(tmp_path: Path, fn: Callable[[KeyStore], Awaitable[T]], url: str | None = None) -> T:
    async def go() -> T:
        engine = make_engine(url or f"sqlite:///{tmp_path}/keys.db")
        try:
            await create_schema(engine)
            return await fn(KeyStore(engine))
        finally:
            await engine.dispose()

    return asyncio.run(go())


def database_url(engine_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh database of the kind a test is parametrised over."""
    if engine_kind == "sqlite":
        return f"sqlite:///{tmp_path}/keys.db"
    pg: services.PostgresServer = request.getfixturevalue("postgres_service")
    return pg.create_database(f"keys_{secrets.token_hex(4)}")


def test_secret_is_stored_only_as_a_hash(tmp_path: Path) -> None:
    record, secret = with_store(tmp_path, lambda s: s.create("acme", "live", "root", "ci"))
    assert secret.startswith("sk_live_") and environment_of(secret) == "PRODUCTION"
    assert record.environment == "PRODUCTION" and record.role == "root"
    raw = (tmp_path / "keys.db").read_bytes()
    wal = tmp_path / "keys.db-wal"
    if wal.exists():
        raw += wal.read_bytes()
    assert secret.encode() not in raw
    with sqlite3.connect(tmp_path / "keys.db") as db:
        (stored,) = db.execute("select secret_hash from api_keys").fetchone()
    assert stored == hash_secret(secret)


def test_create_list_revoke(tmp_path: Path) -> None:
    async def go(store: KeyStore) -> None:
        a, _ = await store.create("acme", "test", "member", "one")
        b, _ = await store.create("other", "test", "manager", "two")
        assert {k.id for k in await store.list_keys()} == {a.id, b.id}
        assert [k.id for k in await store.list_keys("acme")] == [a.id]
        revoked = await store.revoke(a.id)
        assert revoked is not None and revoked.revoked_at is not None
        again = await store.revoke(a.id)
        assert again is not None and again.revoked_at == revoked.revoked_at
        assert await store.revoke("key_missing") is None

    with_store(tmp_path, go)


def test_cache_authenticates_and_honours_revocation(tmp_path: Path) -> None:
    async def go(store: KeyStore) -> None:
        record, secret = await store.create("acme", "test", "backend")
        cache = KeyCache(store, ttl=3600)
        ident = await cache.authenticate(secret)
        assert ident is not None
        assert (ident.org, ident.environment, ident.role, ident.key_id) == (
            "acme",
            "SANDBOX",
            "backend",
            record.id,
        )
        assert ident.org_scope == "acme:SANDBOX"
        assert await cache.authenticate("sk_test_" + "x" * 32) is None
        assert await cache.authenticate("not-a-key") is None
        await store.revoke(record.id)
        # Still cached until the revocation poll runs; one poll evicts it.
        assert await cache.authenticate(secret) is not None
        assert await cache.poll_revocations() == 1
        assert await cache.authenticate(secret) is None

    with_store(tmp_path, go)


@pytest.mark.parametrize(
    "engine_kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_hot_path_hashes_a_key_once_and_still_honours_revocation(
    tmp_path: Path, request: pytest.FixtureRequest, engine_kind: str
) -> None:
    """``cached`` remembers each secret's digest, never its identity: a revoked key is
    refused on its next request all the same."""

    async def go(store: KeyStore) -> None:
        record, secret = await store.create("acme", "test", "backend")
        raw = secret.encode()
        cache = KeyCache(store, ttl=3600)
        assert cache.cached(raw) is MISS  # its digest remembered, nothing else
        ident = await cache.authenticate(raw)
        assert ident is not None and ident.key_id == record.id
        assert cache.cached(raw) == ident
        assert cache.cached(bytes(raw)) == ident  # a new bytes object, as per request
        await store.revoke(record.id)
        assert cache.cached(raw) == ident  # until the poll runs
        assert await cache.poll_revocations() == 1
        assert cache.cached(raw) is MISS  # the remembered digest admits nothing
        assert await cache.authenticate(raw) is None
        assert cache.cached(raw) is None
        assert cache.cached(b"not-a-key") is None
        assert cache.cached(b"sk_test_" + b"x" * 31) is None
        assert cache.cached(b"sk_test_" + b"x" * 32) is MISS  # well formed, unknown

    with_store(tmp_path, go, database_url(engine_kind, tmp_path, request))


@pytest.mark.parametrize(
    "engine_kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_flood_of_distinct_bad_keys_keeps_the_cache_bounded(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    engine_kind: str,
) -> None:
    """Well-formed unknown secrets, each new, fill the digest memo and the entries only up
    to their bound (lowered here), and a real key is still answered after the flood."""
    monkeypatch.setattr(cache_module, "MAX_ENTRIES", 64)

    async def go(store: KeyStore) -> None:
        record, secret = await store.create("acme", "test", "backend")
        cache = KeyCache(store, ttl=3600)
        most = (0, 0)
        for i in range(150):
            bad = b"sk_test_" + b"%032d" % i
            assert cache.cached(bad) is MISS
            assert await cache.authenticate(bad) is None  # cached as a miss
            most = max(most[0], len(cache._digests)), max(most[1], len(cache._entries))
        assert most == (64, 64)
        ident = await cache.authenticate(secret)
        assert ident is not None and ident.key_id == record.id
        assert cache.cached(secret.encode()) == ident

    with_store(tmp_path, go, database_url(engine_kind, tmp_path, request))


def test_cache_coalesces_concurrent_misses(tmp_path: Path) -> None:
    async def go(store: KeyStore) -> None:
        _, secret = await store.create("acme")
        calls = 0
        original = store.by_hash

        async def counting(h: str):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            return await original(h)

        store.by_hash = counting  # type: ignore[method-assign]
        cache = KeyCache(store)
        results = await asyncio.gather(*(cache.authenticate(secret) for _ in range(50)))
        assert all(r is not None for r in results)
        assert calls == 1

    with_store(tmp_path, go)


def test_first_keys_of_a_new_org_created_at_once(tmp_path: Path) -> None:
    async def go(store: KeyStore) -> int:
        made = await asyncio.gather(*(store.create("fresh-org") for _ in range(10)))
        assert len({r.id for r, _ in made}) == 10
        return len(await store.list_keys("fresh-org"))

    assert with_store(tmp_path, go) == 10
