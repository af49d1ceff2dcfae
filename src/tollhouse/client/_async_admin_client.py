"""The provider API's asynchronous client: :class:`AsyncAdminClient`.

It sends through an :class:`~tollhouse.client.AsyncClient` of its own (the same send loop,
retries and typed errors) with the admin token in place of a key; only the operations
(:mod:`tollhouse.client._admin_ops`) and the models differ.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import httpx

from tollhouse.client import _admin_models as am
from tollhouse.client import _admin_ops as ops
from tollhouse.client import _models as m
from tollhouse.client._async_client import AsyncClient
from tollhouse.client._base import RetryEvent, TimeRange
from tollhouse.client._retry import RetryPolicy


class AsyncAdminClient:
    """An asynchronous client of the provider API (``/v1/admin/*``); the arguments are
    :class:`~tollhouse.client.AdminClient`'s, with an ``httpx.AsyncClient`` and an async
    ``sleep``.

    Args:
        admin_token: an admin token; default ``TOLLHOUSE_ADMIN_TOKEN``. Never an org's key.
        base_url: one URL or several (as :class:`~tollhouse.client.Client`'s); default
            ``TOLLHOUSE_URL``, else ``http://127.0.0.1:8000``.
        timeout: seconds per request attempt.
        max_retries: retries per call (overrides ``retry.max_retries``); calls that are
            not idempotent (making an org or a key, a rotation) are not retried once they
            may have been sent.
        retry: the full retry policy.
        http_client: an ``httpx.Client`` to send with; not closed by :meth:`close`.
        on_retry: called with a :class:`RetryEvent` before each retry's wait.
        rng: randomness for jitter.
        sleep: how to wait.
        clock: Unix time.

    Example::

        async with AsyncAdminClient(admin_token="adm_…") as admin:
            org = await admin.orgs.create("acme", first_key={"environment": "SANDBOX"})
    """

    def __init__(
        self,
        admin_token: str | None = None,
        base_url: str | Sequence[str] | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        http_client: httpx.AsyncClient | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._client = AsyncClient(
            api_key=ops.resolve_admin_token(admin_token),
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            throttle=False,
            retry=retry,
            http_client=http_client,
            on_retry=on_retry,
            rng=rng,
            sleep=sleep,
            clock=clock,
        )

    @property
    def base_url(self) -> str:
        """The API's base URL."""
        return self._client.base_url

    @property
    def orgs(self) -> AsyncOrgsAdmin:
        """Orgs: make, list, read, rename, suspend and reinstate."""
        return AsyncOrgsAdmin(self._client)

    @property
    def keys(self) -> AsyncKeysAdmin:
        """Keys of any org: make, list, revoke, rotate."""
        return AsyncKeysAdmin(self._client)

    @property
    def limits(self) -> AsyncLimitsAdmin:
        """Per-org and per-key limit overrides."""
        return AsyncLimitsAdmin(self._client)

    @property
    def audit(self) -> AsyncAuditAdmin:
        """The audit log."""
        return AsyncAuditAdmin(self._client)

    @property
    def webhooks(self) -> AsyncWebhooksAdmin:
        """An org's webhook endpoints and deliveries, per environment."""
        return AsyncWebhooksAdmin(self._client)

    async def aclose(self) -> None:
        """Close the connections (unless the ``http_client`` was passed in)."""
        await self._client.aclose()

    async def __aenter__(self) -> AsyncAdminClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class AsyncOrgsAdmin:
    """Orgs (``admin.orgs``)."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(
        self,
        org_id: str,
        *,
        name: str | None = None,
        first_key: dict[str, Any] | None = None,
    ) -> am.Org:
        """``POST /v1/admin/orgs``: an org, and its first key with it when ``first_key``
        (``{"environment", "role"?, "name"?, "expiresAt"?, "meta"?}``) is given — both
        or neither. The key's secret is in ``org.first_key.key``, once."""
        return await self._c._call(ops.create_org(org_id, name, first_key))

    async def list(self, *, limit: int | None = None, cursor: str | None = None) -> am.Page[am.Org]:
        """``GET /v1/admin/orgs``: one page, newest first."""
        return await self._c._call(ops.list_orgs(limit, cursor))

    def iter(self, *, limit: int | None = None) -> AsyncIterator[am.Page[am.Org]]:
        """Every page of orgs, following ``nextCursor``."""
        return self._c._pages(ops.org_pages(limit))

    async def get(self, org_id: str) -> am.Org:
        """``GET /v1/admin/orgs/{orgId}``."""
        return await self._c._call(ops.get_org(org_id))

    async def update(
        self, org_id: str, *, name: str | None = None, suspended: bool | None = None
    ) -> am.Org:
        """``PATCH /v1/admin/orgs/{orgId}``: rename, suspend (its keys get 403
        ``ORG_SUSPENDED`` within a second) or reinstate."""
        return await self._c._call(ops.update_org(org_id, name, suspended))

    async def fair_use(
        self, org_id: str, *, environment: str, time_range: TimeRange = "24h"
    ) -> m.FairUse:
        """``GET /v1/admin/orgs/{orgId}/fair-use?environment=&timeRange=``: the org's
        fair-use signals in ``environment`` (``SANDBOX`` or ``PRODUCTION``) over the range
        ending now — what its own keys read from ``GET /v1/analytics/fair-use``, with
        ``org`` set."""
        return await self._c._call(ops.org_fair_use(org_id, environment, time_range))


class AsyncKeysAdmin:
    """Keys (``admin.keys``)."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(
        self,
        org_id: str,
        *,
        environment: str,
        role: str | None = None,
        name: str | None = None,
        expires_at: datetime | str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> am.AdminKey:
        """``POST /v1/admin/orgs/{orgId}/keys``: the secret is in ``.key``, once."""
        body = ops.key_body(environment, role, name, expires_at, meta)
        return await self._c._call(ops.create_key(org_id, body))

    async def list(
        self,
        org_id: str,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        environment: str | None = None,
    ) -> am.Page[am.AdminKey]:
        """``GET /v1/admin/orgs/{orgId}/keys``: one page (never a secret)."""
        return await self._c._call(ops.list_keys(org_id, limit, cursor, environment))

    def iter(
        self, org_id: str, *, limit: int | None = None, environment: str | None = None
    ) -> AsyncIterator[am.Page[am.AdminKey]]:
        """Every page of an org's keys."""
        return self._c._pages(ops.key_pages(org_id, limit, environment))

    async def revoke(self, key_id: str) -> am.AdminKey:
        """``DELETE /v1/admin/keys/{keyId}``: refused by running servers within a second."""
        return await self._c._call(ops.revoke_key(key_id))

    async def rotate(self, key_id: str, *, overlap_seconds: int | None = None) -> am.AdminKey:
        """``POST /v1/admin/keys/{keyId}/rotate``: the new key (secret in ``.key``) and the
        old one in ``.replaces``, working until the overlap ends (default 24 h)."""
        return await self._c._call(ops.rotate_key(key_id, overlap_seconds))


class AsyncLimitsAdmin:
    """Limit overrides (``admin.limits``)."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def get(self, org_id: str) -> am.OrgLimits:
        """``GET /v1/admin/orgs/{orgId}/limits``: effective buckets and pools."""
        return await self._c._call(ops.get_limits(org_id))

    async def set(
        self,
        org_id: str,
        bucket: str,
        limit: int,
        *,
        key_id: str | None = None,
        environment: str | None = None,
    ) -> am.LimitOverride:
        """``PUT /v1/admin/orgs/{orgId}/limits/{bucket}``: the key's override > the
        org's for the key's environment > the org's for every environment > the policy.

        Args:
            bucket: a bucket's or an in-flight pool's name.
            key_id: that key's override (never with ``environment``).
            environment: ``SANDBOX`` or ``PRODUCTION``: the org's override for that
                environment alone; None: for every environment.
        """
        return await self._c._call(ops.set_limit(org_id, bucket, limit, key_id, environment))

    async def clear(
        self,
        org_id: str,
        bucket: str,
        *,
        key_id: str | None = None,
        environment: str | None = None,
    ) -> None:
        """``DELETE /v1/admin/orgs/{orgId}/limits/{bucket}``: the override of the key,
        of the org in ``environment``, or of the org in every environment (neither)."""
        await self._c._call(ops.clear_limit(org_id, bucket, key_id, environment))


class AsyncAuditAdmin:
    """The audit log (``admin.audit``)."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def list(
        self,
        *,
        org: str | None = None,
        action: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> am.Page[am.AuditEntry]:
        """``GET /v1/admin/audit``: one page, newest first."""
        return await self._c._call(ops.audit(org, action, limit, cursor))

    def iter(
        self, *, org: str | None = None, action: str | None = None, limit: int | None = None
    ) -> AsyncIterator[am.Page[am.AuditEntry]]:
        """Every page of the audit log."""
        return self._c._pages(ops.audit_pages(org, action, limit))


class AsyncWebhooksAdmin:
    """An org's webhooks (``admin.webhooks``): ``endpoints`` and ``deliveries``. Every
    call names the org and the environment (``SANDBOX`` or ``PRODUCTION``); another org's
    or environment's id is a :class:`~tollhouse.client.NotFoundError`."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    @property
    def endpoints(self) -> AsyncWebhookEndpointsAdmin:
        """An org's webhook endpoints."""
        return AsyncWebhookEndpointsAdmin(self._c)

    @property
    def deliveries(self) -> AsyncWebhookDeliveriesAdmin:
        """An org's webhook deliveries and their replay."""
        return AsyncWebhookDeliveriesAdmin(self._c)


class AsyncWebhookEndpointsAdmin:
    """An org's webhook endpoints (``admin.webhooks.endpoints``)."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def list(self, org_id: str, *, environment: str) -> list[am.AdminWebhookEndpoint]:
        """``GET /v1/admin/orgs/{orgId}/webhooks/endpoints``: oldest first (no secrets)."""
        return await self._c._call(ops.list_endpoints(org_id, environment))

    async def create(
        self,
        org_id: str,
        url: str,
        *,
        environment: str,
        event_types: Sequence[str] | None = None,
    ) -> am.AdminWebhookEndpoint:
        """``POST /v1/admin/orgs/{orgId}/webhooks/endpoints``: its ``whsec_`` ``secret`` is
        in this answer only."""
        return await self._c._call(ops.create_endpoint(org_id, url, environment, event_types))

    async def update(
        self,
        org_id: str,
        endpoint_id: str,
        *,
        environment: str,
        enabled: bool | None = None,
        event_types: Sequence[str] | None = None,
        every_event: bool = False,
    ) -> am.AdminWebhookEndpoint:
        """``PATCH …/endpoints/{endpointId}``: enable or disable it, filter its event
        types, or (``every_event``) clear the filter."""
        return await self._c._call(
            ops.update_endpoint(org_id, endpoint_id, environment, enabled, event_types, every_event)
        )

    async def delete(
        self, org_id: str, endpoint_id: str, *, environment: str
    ) -> am.AdminWebhookEndpoint:
        """``DELETE …/endpoints/{endpointId}``: its pending deliveries end."""
        return await self._c._call(ops.delete_endpoint(org_id, endpoint_id, environment))

    async def rotate_secret(
        self,
        org_id: str,
        endpoint_id: str,
        *,
        environment: str,
        overlap_seconds: int | None = None,
    ) -> am.AdminWebhookEndpoint:
        """``POST …/rotate-secret``: a new ``secret`` (once); the old one signs too for
        ``overlap_seconds`` (server default 1 day)."""
        return await self._c._call(
            ops.rotate_endpoint_secret(org_id, endpoint_id, environment, overlap_seconds)
        )

    async def test(self, org_id: str, endpoint_id: str, *, environment: str) -> m.WebhookDelivery:
        """``POST …/test``: a signed ``ping``, with its first attempt."""
        return await self._c._call(ops.ping_endpoint(org_id, endpoint_id, environment))


class AsyncWebhookDeliveriesAdmin:
    """An org's webhook deliveries (``admin.webhooks.deliveries``)."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def list(
        self, org_id: str, *, environment: str, job_id: str | None = None
    ) -> list[m.WebhookDelivery]:
        """``GET /v1/admin/orgs/{orgId}/webhooks/deliveries``: newest first, with their
        attempts."""
        return await self._c._call(ops.list_deliveries(org_id, environment, job_id))

    async def replay(self, org_id: str, delivery_id: str, *, environment: str) -> m.WebhookDelivery:
        """``POST …/deliveries/{deliveryId}/replay``: the same event (same ``webhook-id``)
        again, as a new delivery, with its first attempt."""
        return await self._c._call(ops.replay_delivery(org_id, delivery_id, environment))
