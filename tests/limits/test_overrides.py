"""Limit overrides per environment, on SQLite and PostgreSQL: the store (environment kept,
a key's override refused one, audit details), the cache's precedence (the key's > the
org's for the caller's environment > the org's for every environment > the policy), and
schema step 18 carrying the rows of the old layout."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from sqlalchemy import Connection, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.storage.support import database_url, run_with
from tollhouse.errors import NotFound
from tollhouse.limits.overrides import (
    OverrideCache,
    OverrideStore,
    build_snapshot,
    check_limit_name,
    limit_overrides,
)
from tollhouse.policy.load import load_policy
from tollhouse.schema import LATEST, MIGRATIONS, migrate
from tollhouse.security.audit import audit_log

__all__ = ["database_url"]

KEY = "key_" + "a" * 16


def test_precedence_key_then_environment_then_every_environment(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        store = OverrideStore(engine)
        changes: list[int] = []
        cache = OverrideCache(store, on_change=lambda: changes.append(1))
        assert await cache.refresh() is True
        assert cache.limit("acme", "SANDBOX", KEY, "b", 100) == 100  # the policy

        await store.set("acme", "b", 50)  # every environment
        assert await cache.refresh() is True
        assert cache.limit("acme", "SANDBOX", KEY, "b", 100) == 50
        assert cache.limit("acme", "PRODUCTION", KEY, "b", 100) == 50

        await store.set("acme", "b", 7, environment="SANDBOX")
        await cache.refresh()
        assert cache.limit("acme", "SANDBOX", KEY, "b", 100) == 7  # environment > every
        assert cache.limit("acme", "PRODUCTION", KEY, "b", 100) == 50

        await store.set("acme", "b", 3, KEY)
        await cache.refresh()
        assert cache.limit("acme", "SANDBOX", KEY, "b", 100) == 3  # key > environment
        assert cache.limit("acme", "SANDBOX", "key_" + "b" * 16, "b", 100) == 7

        # Nothing leaks to another org or bucket.
        assert cache.limit("globex", "SANDBOX", KEY, "b", 100) == 100
        assert cache.limit("acme", "SANDBOX", KEY, "other", 100) == 100

        # Without the org's override for every environment, the other environment gets
        # the policy's limit: a sandbox-only override never reaches production.
        assert await store.clear("acme", "b") is True
        await cache.refresh()
        assert cache.limit("acme", "PRODUCTION", "key_" + "b" * 16, "b", 100) == 100
        assert cache.limit("acme", "SANDBOX", "key_" + "b" * 16, "b", 100) == 7
        assert await store.clear("acme", "b", environment="SANDBOX") is True
        assert await store.clear("acme", "b", environment="SANDBOX") is False
        await cache.refresh()
        assert cache.limit("acme", "SANDBOX", "key_" + "b" * 16, "b", 100) == 100
        assert await cache.refresh() is False  # unchanged: no new snapshot
        assert len(changes) == 6

    run_with(database_url, go)


def test_snapshot_resolves_every_environment_at_build_time() -> None:
    from datetime import UTC, datetime

    from tollhouse.limits.overrides import Override

    now = datetime.now(UTC)
    snap = build_snapshot(
        [
            Override("acme", None, "b", 9, now, "PRODUCTION"),
            Override("acme", None, "b", 50, now),
            Override("acme", KEY, "b", 3, now),
        ]
    )
    assert snap == {
        ("acme", "PRODUCTION", "", "b"): 9,
        ("acme", "SANDBOX", "", "b"): 50,
        ("acme", "", KEY, "b"): 3,
    }


def test_store_keeps_the_environment_and_refuses_one_with_a_key(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        store = OverrideStore(engine)
        made = await store.set("acme", "b", 7, environment="SANDBOX", actor="ops")
        assert made.environment == "SANDBOX" and made.key_id is None
        await store.set("acme", "b", 8, environment="PRODUCTION")
        await store.set("acme", "b", 9)
        with pytest.raises(ValueError, match="key's override takes no environment"):
            await store.set("acme", "b", 1, KEY, environment="SANDBOX")
        with pytest.raises(ValueError, match="SANDBOX or PRODUCTION"):
            await store.set("acme", "b", 1, environment="staging")
        with pytest.raises(ValueError, match="key's override takes no environment"):
            await store.clear("acme", "b", KEY, environment="SANDBOX")
        listed = [(o.environment, o.limit) for o in await store.list("acme")]
        assert listed == [(None, 9), ("PRODUCTION", 8), ("SANDBOX", 7)]
        assert await store.clear("acme", "b", environment="SANDBOX", actor="ops") is True
        assert [(o.environment, o.limit) for o in await store.list("acme")] == [
            (None, 9),
            ("PRODUCTION", 8),
        ]
        async with engine.connect() as conn:
            a = audit_log.c
            rows = (
                await conn.execute(select(a.action, a.target_id, a.details).order_by(a.at))
            ).all()
        assert [(r.action, r.target_id) for r in rows] == [
            ("limit.set", "b"),
            ("limit.cleared", "b"),
        ]
        details: list[Any] = [orjson.loads(r.details) for r in rows]
        assert [d["environment"] for d in details] == ["SANDBOX", "SANDBOX"]

    run_with(database_url, go)


OLD_LAYOUT = (
    "CREATE TABLE limit_overrides (org_id VARCHAR(64) NOT NULL, key_id VARCHAR(40) NOT NULL,"
    ' bucket VARCHAR(64) NOT NULL, "limit" INTEGER NOT NULL,'
    " updated_at TIMESTAMP WITH TIME ZONE NOT NULL, PRIMARY KEY (org_id, key_id, bucket))"
)


def test_step_18_keeps_existing_overrides_for_every_environment(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        assert await migrate(engine, MIGRATIONS[:17]) == (0, 17)
        async with engine.begin() as conn:
            # Back to the layout before step 18 (the runner made the table of today).
            await conn.execute(text("DROP TABLE limit_overrides"))
            await conn.execute(text(OLD_LAYOUT))
            for key, limit in (("", 50), (KEY, 3)):
                await conn.execute(
                    text(
                        'INSERT INTO limit_overrides (org_id, key_id, bucket, "limit", updated_at)'
                        " VALUES ('acme', :key, 'b', :limit, '2026-01-02 03:04:05+00:00')"
                    ),
                    {"key": key, "limit": limit},
                )

        def shape(c: Connection) -> tuple[set[str], list[str]]:
            found = inspect(c)
            columns = {col["name"] for col in found.get_columns("limit_overrides")}
            pk = found.get_pk_constraint("limit_overrides")["constrained_columns"]
            return columns, list(pk)

        async with engine.connect() as conn:
            columns, pk = await conn.run_sync(shape)
        assert "environment" not in columns and pk == ["org_id", "key_id", "bucket"]
        assert await migrate(engine) == (17, LATEST)
        assert await migrate(engine) == (LATEST, LATEST)
        async with engine.connect() as conn:
            columns, pk = await conn.run_sync(shape)
        assert "environment" in columns
        assert pk == ["org_id", "environment", "key_id", "bucket"]

        store = OverrideStore(engine)
        kept = [(o.key_id, o.environment, o.limit) for o in await store.list("acme")]
        assert kept == [(None, None, 50), (KEY, None, 3)]
        # The old rows apply to every environment; a new one for one environment sits
        # beside the org's (the new primary key), and a row without an environment takes
        # the column's default.
        cache = OverrideCache(store)
        await store.set("acme", "b", 7, environment="SANDBOX")
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    'INSERT INTO limit_overrides (org_id, key_id, bucket, "limit", updated_at)'
                    " VALUES ('globex', '', 'b', 11, '2026-01-02 03:04:05+00:00')"
                )
            )
        await cache.refresh()
        assert cache.limit("acme", "SANDBOX", "key_" + "c" * 16, "b", 100) == 7
        assert cache.limit("acme", "PRODUCTION", "key_" + "c" * 16, "b", 100) == 50
        assert cache.limit("acme", "PRODUCTION", KEY, "b", 100) == 3
        assert cache.limit("globex", "PRODUCTION", KEY, "b", 100) == 11
        async with engine.connect() as conn:
            o = limit_overrides.c
            envs = (await conn.execute(select(o.environment).where(o.org_id == "globex"))).all()
        assert envs == [("",)]

    run_with(database_url, go, schema=False)


def test_step_18_creates_the_table_on_a_new_database(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        assert await migrate(engine) == (0, LATEST)
        await OverrideStore(engine).set("acme", "b", 7, environment="PRODUCTION")
        assert [o.environment for o in await OverrideStore(engine).list()] == ["PRODUCTION"]

    run_with(database_url, go, schema=False)


def test_an_override_names_a_bucket_or_a_pool() -> None:
    policy = load_policy(None)
    [pool] = policy.pools
    check_limit_name(policy.buckets, policy.pools, pool.name)
    check_limit_name(policy.buckets, policy.pools, policy.buckets[0].name)
    with pytest.raises(NotFound) as info:
        check_limit_name(policy.buckets, policy.pools, "nothing")
    message = str(info.value)
    assert "no bucket or pool 'nothing'" in message
    assert f"its pools: {pool.name}." in message
    assert all(b.name in message for b in policy.buckets)
