"""``AdminClient`` and ``AsyncAdminClient`` against a real server (SQLite and PostgreSQL):
the provider API's calls, typed models, typed errors; and the two clients' parity."""

from __future__ import annotations

import asyncio
import inspect
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.client.support import open_client
from tests.conftest import serve_in_thread
from tests.security.test_self_serve import Receiver
from tests.storage.support import database_url
from tollhouse.client import (
    AdminClient,
    AsyncAdminClient,
    AsyncWebhookDeliveriesAdmin,
    AsyncWebhookEndpointsAdmin,
    AsyncWebhooksAdmin,
    AuthenticationError,
    BadRequestError,
    Client,
    ClientError,
    FairUse,
    FairUseSignal,
    NotFoundError,
    OrgLimits,
    PermissionDeniedError,
    TollhouseAPIError,
    ValidationError,
    WebhookDeliveriesAdmin,
    WebhookEndpointsAdmin,
    WebhooksAdmin,
)
from tollhouse.http.app import Tollhouse
from tollhouse.policy.load import load_policy
from tollhouse.settings import load_settings

__all__ = ["database_url"]

TOKEN = "adm_" + "s" * 40
BUCKET = load_policy(None).buckets[0].name
POOL = load_policy(None).pools[0]


@pytest.fixture
def url(database_url: str) -> Iterator[str]:
    settings = load_settings(
        environ={
            "TOLLHOUSE_DATABASE_URL": database_url,
            "TOLLHOUSE_ADMIN_TOKEN": TOKEN,
            # The webhook tests' receiver listens on loopback.
            "TOLLHOUSE_ALLOW_PRIVATE_TARGETS": "1",
        }
    )
    with serve_in_thread(Tollhouse(settings=settings)) as base:
        yield base


@pytest.mark.integration
def test_sync_admin_client(url: str) -> None:
    with AdminClient(admin_token=TOKEN, base_url=url) as admin:
        org = admin.orgs.create(
            "acme", name="Acme", first_key={"environment": "SANDBOX", "role": "root"}
        )
        assert org.id == "acme" and not org.suspended and org.first_key is not None
        secret = org.first_key.key
        assert secret is not None and secret.startswith("sk_test_")
        with Client(api_key=secret, base_url=url) as c:
            assert c.rate_limit_status().buckets  # a live key
        key = admin.keys.create("acme", environment="PRODUCTION", name="ci", meta={"team": "x"})
        assert key.key is not None and key.meta == {"team": "x"} and key.status == "active"
        pages = list(admin.keys.iter("acme", limit=1))
        assert [k.id for p in pages for k in p.data] == [key.id, org.first_key.id]
        assert all(k.key is None for p in pages for k in p.data)

        override = admin.limits.set("acme", BUCKET, 42)
        assert (override.limit, override.key_id) == (42, None)
        admin.limits.set("acme", BUCKET, 7, key_id=key.id)
        limits = admin.limits.get("acme")
        bucket = limits.bucket(BUCKET)
        assert bucket.overridden and bucket.limit == 42 and bucket.updated_at is not None
        assert [(k.key_id, k.limit) for k in bucket.key_overrides] == [(key.id, 7)]
        admin.limits.clear("acme", BUCKET, key_id=key.id)
        assert admin.limits.get("acme").bucket(BUCKET).key_overrides == ()
        # The org's override for one environment alone.
        alone = admin.limits.set("acme", BUCKET, 5, environment="PRODUCTION")
        assert (alone.environment, alone.key_id, alone.limit) == ("PRODUCTION", None, 5)
        bucket = admin.limits.get("acme").bucket(BUCKET)
        assert bucket.limit == 42  # the org's for every environment, as before
        assert [(e.environment, e.limit) for e in bucket.environment_overrides] == [
            ("PRODUCTION", 5)
        ]
        assert {env: (e.limit, e.overridden) for env, e in bucket.by_environment.items()} == {
            "SANDBOX": (42, True),
            "PRODUCTION": (5, True),
        }
        with pytest.raises(ValidationError):  # a key's override has its key's environment
            admin.limits.set("acme", BUCKET, 5, key_id=key.id, environment="PRODUCTION")
        admin.limits.clear("acme", BUCKET, environment="PRODUCTION")
        assert admin.limits.get("acme").bucket(BUCKET).environment_overrides == ()
        # An in-flight pool is overridden as a bucket is.
        assert admin.limits.set("acme", POOL.name, 6, environment="SANDBOX").bucket == POOL.name
        admin.limits.set("acme", POOL.name, 2, key_id=key.id)
        pool = admin.limits.get("acme").pool(POOL.name)
        assert (pool.limit, pool.policy_limit, pool.overridden) == (POOL.limit, POOL.limit, False)
        assert [(e.environment, e.limit) for e in pool.environment_overrides] == [("SANDBOX", 6)]
        assert {env: (e.limit, e.overridden) for env, e in pool.by_environment.items()} == {
            "SANDBOX": (6, True),
            "PRODUCTION": (POOL.limit, False),
        }
        assert [(k.key_id, k.limit) for k in pool.key_overrides] == [(key.id, 2)]
        admin.limits.clear("acme", POOL.name, environment="SANDBOX")
        admin.limits.clear("acme", POOL.name, key_id=key.id)
        pool = admin.limits.get("acme").pool(POOL.name)
        assert (pool.environment_overrides, pool.key_overrides) == ((), ())
        with pytest.raises(NotFoundError) as unknown:
            admin.limits.set("acme", "nothing", 3)
        assert POOL.name in unknown.value.message and BUCKET in unknown.value.message

        rotated = admin.keys.rotate(key.id, overlap_seconds=60)
        assert rotated.replaces is not None and rotated.replaces.id == key.id
        assert rotated.replaces.expires_at is not None
        assert admin.keys.revoke(rotated.id).status == "revoked"

        assert admin.orgs.update("acme", suspended=True).suspended
        assert admin.orgs.get("acme").suspended_at is not None
        assert [o.id for p in admin.orgs.iter() for o in p.data] == ["acme"]
        actions = [e.action for p in admin.audit.iter(org="acme", limit=2) for e in p.data]
        assert actions[0] == "org.updated" and "key.rotated" in actions
        assert {e.actor for e in admin.audit.list(org="acme").data} == {"adt_env"}

        with pytest.raises(NotFoundError) as missing:
            admin.orgs.get("ghost")
        assert missing.value.code == "NOT_FOUND" and missing.value.request_id
        with pytest.raises(TollhouseAPIError) as taken:
            admin.orgs.create("acme")
        assert taken.value.status == 409 and taken.value.code == "CONFLICT"
    with AdminClient(admin_token="adm_" + "n" * 40, base_url=url) as stranger:
        with pytest.raises(AuthenticationError) as refused:
            stranger.orgs.list()
        assert refused.value.code == "ADMIN_TOKEN_REQUIRED"


@pytest.mark.integration
def test_async_admin_client(url: str) -> None:
    async def go() -> None:
        async with AsyncAdminClient(admin_token=TOKEN, base_url=url) as admin:
            org = await admin.orgs.create("async-org", first_key={"environment": "PRODUCTION"})
            assert org.first_key is not None and org.first_key.environment == "PRODUCTION"
            await admin.limits.set("async-org", BUCKET, 9)
            assert (await admin.limits.get("async-org")).bucket(BUCKET).limit == 9
            pages = [p async for p in admin.orgs.iter(limit=1)]
            assert [o.id for p in pages for o in p.data] == ["async-org"]
            seen = [e.action async for p in admin.audit.iter() for e in p.data]
            assert sorted(seen) == ["key.created", "limit.set", "org.created"]
            revoked = await admin.keys.revoke(org.first_key.id)
            assert revoked.revoked_at is not None
            await admin.limits.clear("async-org", BUCKET)
            assert not (await admin.limits.get("async-org")).bucket(BUCKET).overridden
            made = await admin.limits.set("async-org", BUCKET, 3, environment="SANDBOX")
            assert made.environment == "SANDBOX"
            found = (await admin.limits.get("async-org")).bucket(BUCKET)
            assert found.by_environment["SANDBOX"].limit == 3
            await admin.limits.clear("async-org", BUCKET, environment="SANDBOX")
            found = (await admin.limits.get("async-org")).bucket(BUCKET)
            assert found.environment_overrides == ()
            with pytest.raises(NotFoundError):
                await admin.keys.rotate("key_0000000000000000")

    asyncio.run(go())


def _loop(client: Any, job_id: str) -> None:
    """Criteria generated four times for one jobId: a regeneration loop (threshold 3)."""
    for _ in range(4):
        client.criteria.generate(job_id, "Backend Engineer", "Python and SQL, 5 years.")


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_fair_use_and_limits_seen_by_the_org_and_the_provider(url: str, kind: str) -> None:
    org_id = f"fair-{kind}"
    with AdminClient(admin_token=TOKEN, base_url=url) as admin:
        made = admin.orgs.create(org_id, first_key={"environment": "SANDBOX", "role": "root"})
        assert made.first_key is not None and made.first_key.key is not None
        admin.limits.set(org_id, BUCKET, 77)
        admin.limits.set(org_id, POOL.name, 9, environment="SANDBOX")
        root = made.first_key.key
    with open_client(kind, api_key=root, base_url=url, tenant_id="acme") as c:
        limits = c.limits.get()
        assert isinstance(limits, OrgLimits)
        assert (limits.org, limits.environment) == (org_id, "SANDBOX")
        bucket = limits.bucket(BUCKET)
        assert (bucket.limit, bucket.overridden) == (77, True) and bucket.policy_limit != 77
        assert {b.name for b in limits.buckets} == {b.name for b in load_policy(None).buckets}
        pool = limits.pool(POOL.name)
        assert (pool.limit, pool.policy_limit, pool.overridden) == (9, POOL.limit, True)
        assert pool.updated_at is not None and pool.by_environment == {}

        before = c.analytics.fair_use("24h").signal("regeneration_loop")
        assert (before.value, before.status) == (0, "ok")
        _loop(c, "job_loop")
        own = c.analytics.fair_use(time_range="24h")
    assert isinstance(own, FairUse) and own.org is None
    assert (own.time_range, own.environment) == ("24h", "SANDBOX")
    assert own.period_start < own.period_end
    loop = own.signal("regeneration_loop")
    assert isinstance(loop, FairUseSignal)
    assert (loop.value, loop.threshold, loop.status, loop.action) == (4, 3, "flagged", "flag")
    assert [(s.id, s.count) for s in loop.involved] == [("job_loop", 4)]
    assert loop.involved_count == 1 and isinstance(loop.detail, dict)
    assert loop.first_seen is not None and loop.last_seen is not None
    assert loop.first_seen <= loop.last_seen
    assert [s.signal for s in own.flagged] == ["regeneration_loop"]

    async def provider_async(environment: str) -> FairUse:
        async with AsyncAdminClient(admin_token=TOKEN, base_url=url) as admin:
            return await admin.orgs.fair_use(org_id, environment=environment, time_range="24h")

    def provider(environment: str) -> FairUse:
        if kind == "async":
            return asyncio.run(provider_async(environment))
        with AdminClient(admin_token=TOKEN, base_url=url) as admin:
            return admin.orgs.fair_use(org_id, environment=environment, time_range="24h")

    theirs = provider("SANDBOX")
    assert (theirs.org, theirs.environment) == (org_id, "SANDBOX")
    assert theirs.signals == own.signals  # the same answer as the org's own key reads
    other = provider("PRODUCTION").signal("regeneration_loop")
    assert (other.value, other.status) == (0, "ok")
    with AdminClient(admin_token=TOKEN, base_url=url) as admin:
        with pytest.raises(NotFoundError):
            admin.orgs.fair_use("no-such-org", environment="SANDBOX")
        with pytest.raises(BadRequestError):
            admin.orgs.fair_use(org_id, environment="STAGING")
    with open_client(kind, api_key=_member(url, org_id), base_url=url) as member:
        with pytest.raises(PermissionDeniedError):
            member.limits.get()
        assert member.analytics.fair_use().signal("regeneration_loop").flagged  # any role


def _member(url: str, org_id: str) -> str:
    with AdminClient(admin_token=TOKEN, base_url=url) as admin:
        key = admin.keys.create(org_id, environment="SANDBOX", role="member")
    assert key.key is not None
    return key.key


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, str]]:
    r = Receiver()
    with serve_in_thread(r) as base:  # type: ignore[arg-type]
        yield r, base


@pytest.mark.integration
def test_webhooks_of_an_org(url: str, receiver: tuple[Receiver, str]) -> None:
    rec, hook = receiver
    path = f"/sdk-{secrets.token_hex(4)}"
    with AdminClient(admin_token=TOKEN, base_url=url) as admin:
        admin.orgs.create("hooks")
        hooks = admin.webhooks
        made = hooks.endpoints.create(
            "hooks", hook + path, environment="SANDBOX", event_types=["score.failed"]
        )
        assert made.secret is not None and made.secret.startswith("whsec_")
        assert (made.org, made.environment, made.event_types) == (
            "hooks",
            "SANDBOX",
            ("score.failed",),
        )
        assert [e.id for e in hooks.endpoints.list("hooks", environment="SANDBOX")] == [made.id]
        assert hooks.endpoints.list("hooks", environment="PRODUCTION") == []
        ping = hooks.endpoints.test("hooks", made.id, environment="SANDBOX")
        assert ping.status == "delivered" and len(rec.at(path)) == 1
        again = hooks.deliveries.replay("hooks", ping.id, environment="SANDBOX")
        assert again.message_id == ping.message_id and len(rec.at(path)) == 2
        listed = hooks.deliveries.list("hooks", environment="SANDBOX")
        assert {d.id for d in listed} == {ping.id, again.id}
        rotated = hooks.endpoints.rotate_secret(
            "hooks", made.id, environment="SANDBOX", overlap_seconds=0
        )
        assert rotated.secret not in (None, made.secret)
        assert rotated.previous_secret_expires_at is None
        off = hooks.endpoints.update("hooks", made.id, environment="SANDBOX", enabled=False)
        assert not off.enabled and off.disabled_at is not None
        every = hooks.endpoints.update("hooks", made.id, environment="SANDBOX", every_event=True)
        assert every.event_types is None and not every.enabled
        with pytest.raises(NotFoundError):  # the other environment's: not found
            hooks.endpoints.delete("hooks", made.id, environment="PRODUCTION")
        assert hooks.endpoints.delete("hooks", made.id, environment="SANDBOX").id == made.id

    async def go() -> None:
        async with AsyncAdminClient(admin_token=TOKEN, base_url=url) as admin:
            made = await admin.webhooks.endpoints.create(
                "hooks", hook + path, environment="PRODUCTION"
            )
            ping = await admin.webhooks.endpoints.test("hooks", made.id, environment="PRODUCTION")
            assert ping.status == "delivered" and len(rec.at(path)) == 3
            replayed = await admin.webhooks.deliveries.replay(
                "hooks", ping.id, environment="PRODUCTION"
            )
            assert replayed.message_id == ping.message_id
            found = await admin.webhooks.deliveries.list("hooks", environment="PRODUCTION")
            assert {d.id for d in found} == {ping.id, replayed.id}
            await admin.webhooks.endpoints.update(
                "hooks", made.id, environment="PRODUCTION", enabled=False
            )
            rotated = await admin.webhooks.endpoints.rotate_secret(
                "hooks", made.id, environment="PRODUCTION"
            )
            assert rotated.previous_secret_expires_at is not None
            [listed] = await admin.webhooks.endpoints.list("hooks", environment="PRODUCTION")
            assert not listed.enabled and listed.secret is None
            await admin.webhooks.endpoints.delete("hooks", made.id, environment="PRODUCTION")
            assert await admin.webhooks.endpoints.list("hooks", environment="PRODUCTION") == []

    asyncio.run(go())


@pytest.mark.integration
def test_an_org_key_is_not_an_admin_token(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ClientError, match="not an admin token"):
        AdminClient(admin_token="sk_test_" + "x" * 32, base_url=url)
    monkeypatch.delenv("TOLLHOUSE_ADMIN_TOKEN", raising=False)
    with pytest.raises(ClientError, match="No admin token"):
        AdminClient(base_url=url)
    monkeypatch.setenv("TOLLHOUSE_ADMIN_TOKEN", TOKEN)
    with AdminClient(base_url=url) as admin:
        assert admin.orgs.list().data == ()
    # The server refuses an org key sent anyway (403 ADMIN_ONLY).
    with AdminClient(admin_token=TOKEN, base_url=url) as admin:
        org = admin.orgs.create("o", first_key={"environment": "SANDBOX", "role": "root"})
    assert org.first_key is not None and org.first_key.key is not None
    sneaky = AdminClient(admin_token=TOKEN, base_url=url)
    sneaky._client._core.api_key = org.first_key.key
    with pytest.raises(PermissionDeniedError) as refused:
        sneaky.orgs.list()
    assert refused.value.code == "ADMIN_ONLY"
    sneaky.close()


# --- parity ----------------------------------------------------------------------------------

PAIRS = [
    (AdminClient, AsyncAdminClient),
    *(
        (
            inspect.signature(getattr(AdminClient, name).fget).return_annotation,
            inspect.signature(getattr(AsyncAdminClient, name).fget).return_annotation,
        )
        for name in ("orgs", "keys", "limits", "audit", "webhooks")
    ),
    (WebhooksAdmin, AsyncWebhooksAdmin),
    (WebhookEndpointsAdmin, AsyncWebhookEndpointsAdmin),
    (WebhookDeliveriesAdmin, AsyncWebhookDeliveriesAdmin),
]
#: The namespace properties (not calls).
NAMESPACES = {"orgs", "keys", "limits", "audit", "webhooks", "endpoints", "deliveries"}


def _public(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_")}


def test_the_async_admin_client_mirrors_the_sync_one() -> None:
    import tollhouse.client as sdk

    for sync_name, async_name in PAIRS:
        sync = getattr(sdk, sync_name) if isinstance(sync_name, str) else sync_name
        twin = getattr(sdk, async_name) if isinstance(async_name, str) else async_name
        assert {"aclose" if n == "close" else n for n in _public(sync)} == _public(twin)
        for name in _public(sync) - {"close", "base_url", *NAMESPACES}:
            own, other = getattr(sync, name), getattr(twin, name)
            assert list(inspect.signature(own).parameters) == list(
                inspect.signature(other).parameters
            ), name
            if name == "iter":
                assert not inspect.iscoroutinefunction(other), name
            else:
                assert inspect.iscoroutinefunction(other), name
        for name in _public(sync) & NAMESPACES:
            own, other = inspect.getattr_static(sync, name), inspect.getattr_static(twin, name)
            assert isinstance(own, property) and isinstance(other, property), name
        assert list(inspect.signature(sync.__init__).parameters) == list(
            inspect.signature(twin.__init__).parameters
        )


def test_an_admin_endpoint_is_the_self_serve_one_with_its_org() -> None:
    from datetime import UTC, datetime

    from tollhouse.client import AdminWebhookEndpoint, WebhookEndpoint
    from tollhouse.client._admin_models import parse_webhook_endpoint as parse_admin
    from tollhouse.client._models import parse_webhook_endpoint as parse_own
    from tollhouse.client._parse import Fields

    body = {
        "id": "we_1",
        "org": "acme",
        "url": "https://hooks.example/in",
        "environment": "SANDBOX",
        "enabled": False,
        "disabledAt": "2026-01-02T03:04:05Z",
        "disabledReason": "the receiver answered 410 Gone",
        "eventTypes": ["score.completed"],
        "createdAt": "2026-01-01T00:00:00Z",
        "previousSecretExpiresAt": None,
    }
    admin, own = parse_admin(Fields(body)), parse_own(Fields(body))
    assert isinstance(admin, AdminWebhookEndpoint) and isinstance(admin, WebhookEndpoint)
    assert (admin.org, admin.disabled_at) == ("acme", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    common = ("id", "url", "environment", "enabled", "disabled_reason", "event_types")
    assert [getattr(admin, n) for n in common] == [getattr(own, n) for n in common]
    # Equality ignores raw, never the class.
    assert admin == parse_admin(Fields({**body, "newField": 1})) and admin != own
    assert admin != parse_admin(Fields({**body, "org": "other"}))
