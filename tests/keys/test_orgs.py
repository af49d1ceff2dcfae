"""Orgs, admin tokens, key grants and last use in the domain layer, on SQLite and
PostgreSQL: what the provider API and the CLI share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.storage.support import database_url, run_with
from tollhouse.errors import Conflict, EnvironmentEscalation, NotFound, RoleEscalation
from tollhouse.keys.admin_tokens import ENV_TOKEN_ID, AdminTokenStore
from tollhouse.keys.grants import check_grant
from tollhouse.keys.hashing import hash_secret
from tollhouse.keys.last_used import KeyUse
from tollhouse.keys.orgs import FirstKey, OrgStore
from tollhouse.keys.schema import admin_tokens, api_keys, orgs
from tollhouse.keys.store import KeyStore
from tollhouse.metering.record import CallRecord
from tollhouse.schema import LATEST, MIGRATIONS, migrate
from tollhouse.security.audit import audit_log, read_log

__all__ = ["database_url"]


async def _audit_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return len((await conn.execute(select(audit_log.c.id))).all())


def test_an_org_and_its_first_key_are_made_together_or_not_at_all(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        store = OrgStore(engine)
        # The key fails inside the transaction, after the org's row was written.
        with pytest.raises(KeyError):
            await store.create("half", first_key=FirstKey("nope"), actor="t")
        assert await store.get("half") is None
        assert await _audit_count(engine) == 0
        org, key = await store.create(
            "whole", "Whole", actor="t", first_key=FirstKey("live", "root")
        )
        assert key is not None and key[1].startswith("sk_live_") and key[0].org == "whole"
        assert (org.name, org.suspended) == ("Whole", False)
        with pytest.raises(Conflict):
            await store.create("whole", actor="t")
        assert await _audit_count(engine) == 2  # org.created, key.created

    run_with(database_url, go)


def test_suspension_reaches_the_key_lookup_and_the_revocation_poll(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        orgs_ = OrgStore(engine)
        keys = KeyStore(engine)
        await orgs_.create("acme", actor="t")
        _, secret = await keys.create("acme", existing_org=True, actor="t")
        with pytest.raises(NotFound):
            await keys.create("ghost", existing_org=True, actor="t")
        before = datetime.now(UTC) - timedelta(seconds=1)
        assert await keys.revoked_since(before) == []
        unchanged = await orgs_.update("acme", suspended=False, actor="t")
        assert unchanged.updated_at is None  # nothing changed, nothing audited
        suspended = await orgs_.update("acme", suspended=True, actor="t")
        assert suspended.suspended and suspended.updated_at is not None
        found = await keys.by_hash(hash_secret(secret))
        assert found is not None and found[0].org_suspended
        assert await keys.revoked_since(before) == [hash_secret(secret)]
        back = await orgs_.update("acme", suspended=False, name="Acme", actor="t")
        assert not back.suspended and back.name == "Acme"
        found = await keys.by_hash(hash_secret(secret))
        assert found is not None and not found[0].org_suspended
        with pytest.raises(NotFound):
            await orgs_.update("ghost", suspended=True, actor="t")
        actions = [e.action for e in await read_log(engine, "acme")]
        assert actions == ["org.created", "key.created", "org.updated", "org.updated"]

    run_with(database_url, go)


def test_admin_tokens_are_stored_hashed_and_revocable(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        env = "adm_" + "e" * 40
        store = AdminTokenStore(engine, env)
        token, secret = await store.create("ops", actor="t")
        assert await store.identify(secret) == token.id
        assert await store.identify(env) == ENV_TOKEN_ID
        assert await store.identify("adm_" + "z" * 40) is None
        assert await store.identify("sk_test_" + "z" * 32) is None
        async with engine.connect() as conn:
            stored = (await conn.execute(select(admin_tokens.c.secret_hash))).scalar_one()
        assert stored == hash_secret(secret)
        revoked = await store.revoke(token.id, actor="t")
        assert revoked is not None and revoked.revoked_at is not None
        assert await store.identify(secret) is None
        assert await store.revoke("adt_missing", actor="t") is None
        assert [t.id for t in await store.list()] == [token.id]
        # Without TOLLHOUSE_ADMIN_TOKEN only stored tokens count.
        assert await AdminTokenStore(engine).identify(env) is None

    run_with(database_url, go)


def test_last_use_only_moves_forward(database_url: str) -> None:
    def call(key_id: str, at: float) -> CallRecord:
        return CallRecord(at, "acme", "SANDBOX", key_id, None, None, "GET", "/x", 200, 1.0, {}, "r")

    async def go(engine: AsyncEngine) -> None:
        record, _ = await KeyStore(engine).create("acme")
        use = KeyUse()
        now = datetime.now(UTC).timestamp()
        use.observe([call(record.id, now - 10), call(record.id, now), call("key_other", now)])
        assert await use.flush(engine) == 2
        assert await use.flush(engine) == 0
        use.observe([call(record.id, now - 100)])  # an older call, flushed late
        await use.flush(engine)
        got = await KeyStore(engine).get(record.id)
        assert got is not None and got.last_used_at is not None
        assert abs(got.last_used_at.timestamp() - now) < 0.001

    run_with(database_url, go)


def test_grants_never_escalate() -> None:
    check_grant("manager", "PRODUCTION", "manager", "SANDBOX")
    check_grant("root", "SANDBOX", "member", "SANDBOX")
    with pytest.raises(RoleEscalation, match="manager key cannot create a root key"):
        check_grant("manager", "PRODUCTION", "root", "PRODUCTION")
    with pytest.raises(EnvironmentEscalation, match="SANDBOX key cannot create a PRODUCTION"):
        check_grant("root", "SANDBOX", "root", "PRODUCTION")


def test_step_11_carries_a_database_of_the_old_layout(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        assert await migrate(engine, MIGRATIONS[:10]) == (0, 10)
        record, secret = await KeyStore(engine).create("old", actor="t")
        async with engine.begin() as conn:
            # Back to the layout before step 11.
            await conn.execute(text("DROP INDEX ix_orgs_updated_at"))
            await conn.execute(text("DROP INDEX ix_orgs_created"))
            await conn.execute(text("DROP INDEX ix_audit_log_at"))
            for table, column in (
                ("orgs", "name"),
                ("orgs", "suspended_at"),
                ("orgs", "updated_at"),
                ("api_keys", "last_used_at"),
                ("api_keys", "meta"),
                ("audit_log", "address"),
            ):
                await conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
            await conn.execute(text("DROP TABLE admin_tokens"))
        assert await migrate(engine) == (10, LATEST)

        def columns(c: Connection) -> dict[str, set[str]]:
            found = inspect(c)
            return {
                t: {col["name"] for col in found.get_columns(t)}
                for t in (orgs.name, api_keys.name, audit_log.name, admin_tokens.name)
            }

        async with engine.connect() as conn:
            have = await conn.run_sync(columns)
        assert {"name", "suspended_at", "updated_at"} <= have["orgs"]
        assert {"last_used_at", "meta"} <= have["api_keys"]
        assert "address" in have["audit_log"]
        found = await KeyStore(engine).by_hash(hash_secret(secret))
        assert found is not None and found[0].id == record.id and not found[0].org_suspended
        org = await OrgStore(engine).get("old")
        assert org is not None and org.name == ""

    run_with(database_url, go, schema=False)
