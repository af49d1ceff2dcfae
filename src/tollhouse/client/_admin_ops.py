"""The provider API's calls as :class:`~tollhouse.client._base.Operation` values (no I/O):
what :class:`~tollhouse.client.AdminClient` and its async twin send."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from tollhouse.client import _admin_models as am
from tollhouse.client import _models as m
from tollhouse.client._base import (
    Operation,
    Pages,
    _no_content,
    _overlap,
    _seg,
    endpoint_body,
    endpoint_patch,
    fields,
)
from tollhouse.client._errors import ClientError

#: The variable an admin client reads its token from.
ENV_ADMIN_TOKEN = "TOLLHOUSE_ADMIN_TOKEN"
ADMIN = "/v1/admin"


def resolve_admin_token(admin_token: str | None) -> str:
    """The admin token: the argument, else ``TOLLHOUSE_ADMIN_TOKEN``.

    Raises:
        ClientError: none anywhere, or an org's key (``sk_…``) was given instead.
    """
    token = admin_token or os.environ.get(ENV_ADMIN_TOKEN)
    if not token:
        raise ClientError(
            f"No admin token: pass admin_token=... or set {ENV_ADMIN_TOKEN} "
            "(or create one with `tollhouse admin-tokens create`)."
        )
    if token.startswith("sk_"):
        raise ClientError("An org's API key is not an admin token (the provider API refuses it).")
    return token


def _time(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("expires_at must be timezone-aware")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _paging(limit: int | None, cursor: str | None) -> dict[str, str | int | float]:
    params: dict[str, str | int | float] = {}
    if limit is not None:
        params["limit"] = limit
    if cursor is not None:
        params["cursor"] = cursor
    return params


def key_body(
    environment: str,
    role: str | None,
    name: str | None,
    expires_at: datetime | str | None,
    meta: dict[str, Any] | None,
) -> dict[str, Any]:
    """The JSON of a key to make."""
    body: dict[str, Any] = {"environment": environment}
    if role is not None:
        body["role"] = role
    if name is not None:
        body["name"] = name
    if expires_at is not None:
        body["expiresAt"] = _time(expires_at)
    if meta is not None:
        body["meta"] = meta
    return body


# orgs -------------------------------------------------------------------------------------


def create_org(
    org_id: str, name: str | None, first_key: dict[str, Any] | None
) -> Operation[am.Org]:
    body: dict[str, Any] = {"id": org_id}
    if name is not None:
        body["name"] = name
    if first_key is not None:
        body["firstKey"] = first_key
    return Operation(
        "POST",
        f"{ADMIN}/orgs",
        "POST /v1/admin/orgs",
        lambda r: am.parse_org(fields(r)),
        json=body,
        idempotent=False,  # a second try is a 409 for the first one's org
    )


def list_orgs(limit: int | None, cursor: str | None) -> Operation[am.Page[am.Org]]:
    return Operation(
        "GET",
        f"{ADMIN}/orgs",
        "GET /v1/admin/orgs",
        lambda r: am.parse_org_page(fields(r)),
        params=_paging(limit, cursor),
    )


def org_pages(limit: int | None) -> Pages[am.Page[am.Org]]:
    def after(page: am.Page[am.Org]) -> Operation[am.Page[am.Org]] | None:
        return list_orgs(limit, page.next_cursor) if page.has_more and page.next_cursor else None

    return Pages(list_orgs(limit, None), after)


def get_org(org_id: str) -> Operation[am.Org]:
    return Operation(
        "GET",
        f"{ADMIN}/orgs/{_seg(org_id, 'org_id')}",
        "GET /v1/admin/orgs/{orgId}",
        lambda r: am.parse_org(fields(r)),
    )


def update_org(org_id: str, name: str | None, suspended: bool | None) -> Operation[am.Org]:
    body: dict[str, Any] = {}
    if name is not None:
        body["name"] = name
    if suspended is not None:
        body["suspended"] = suspended
    return Operation(
        "PATCH",
        f"{ADMIN}/orgs/{_seg(org_id, 'org_id')}",
        "PATCH /v1/admin/orgs/{orgId}",
        lambda r: am.parse_org(fields(r)),
        json=body,
    )


# keys -------------------------------------------------------------------------------------


def create_key(org_id: str, body: dict[str, Any]) -> Operation[am.AdminKey]:
    return Operation(
        "POST",
        f"{ADMIN}/orgs/{_seg(org_id, 'org_id')}/keys",
        "POST /v1/admin/orgs/{orgId}/keys",
        lambda r: am.parse_key(fields(r)),
        json=body,
        idempotent=False,  # each call makes one more key
    )


def list_keys(
    org_id: str, limit: int | None, cursor: str | None, environment: str | None
) -> Operation[am.Page[am.AdminKey]]:
    params = _paging(limit, cursor)
    if environment is not None:
        params["environment"] = environment
    return Operation(
        "GET",
        f"{ADMIN}/orgs/{_seg(org_id, 'org_id')}/keys",
        "GET /v1/admin/orgs/{orgId}/keys",
        lambda r: am.parse_key_page(fields(r)),
        params=params,
    )


def key_pages(
    org_id: str, limit: int | None, environment: str | None
) -> Pages[am.Page[am.AdminKey]]:
    def after(page: am.Page[am.AdminKey]) -> Operation[am.Page[am.AdminKey]] | None:
        if not page.has_more or not page.next_cursor:
            return None
        return list_keys(org_id, limit, page.next_cursor, environment)

    return Pages(list_keys(org_id, limit, None, environment), after)


def revoke_key(key_id: str) -> Operation[am.AdminKey]:
    return Operation(
        "DELETE",
        f"{ADMIN}/keys/{_seg(key_id, 'key_id')}",
        "DELETE /v1/admin/keys/{keyId}",
        lambda r: am.parse_key(fields(r)),
    )


def rotate_key(key_id: str, overlap_seconds: int | None) -> Operation[am.AdminKey]:
    return Operation(
        "POST",
        f"{ADMIN}/keys/{_seg(key_id, 'key_id')}/rotate",
        "POST /v1/admin/keys/{keyId}/rotate",
        lambda r: am.parse_key(fields(r)),
        json=_overlap(overlap_seconds),
        idempotent=False,  # a second rotation replaces the new key too
    )


# limits -----------------------------------------------------------------------------------


def get_limits(org_id: str) -> Operation[am.OrgLimits]:
    return Operation(
        "GET",
        f"{ADMIN}/orgs/{_seg(org_id, 'org_id')}/limits",
        "GET /v1/admin/orgs/{orgId}/limits",
        lambda r: am.parse_limits(fields(r)),
    )


def set_limit(
    org_id: str, bucket: str, limit: int, key_id: str | None, environment: str | None = None
) -> Operation[am.LimitOverride]:
    body: dict[str, Any] = {"limit": limit}
    if key_id is not None:
        body["keyId"] = key_id
    if environment is not None:
        body["environment"] = environment
    return Operation(
        "PUT",
        f"{ADMIN}/orgs/{_seg(org_id, 'org_id')}/limits/{_seg(bucket, 'bucket')}",
        "PUT /v1/admin/orgs/{orgId}/limits/{bucket}",
        lambda r: am.parse_override(fields(r)),
        json=body,
    )


def clear_limit(
    org_id: str, bucket: str, key_id: str | None, environment: str | None = None
) -> Operation[None]:
    params = {"keyId": key_id, "environment": environment}
    return Operation(
        "DELETE",
        f"{ADMIN}/orgs/{_seg(org_id, 'org_id')}/limits/{_seg(bucket, 'bucket')}",
        "DELETE /v1/admin/orgs/{orgId}/limits/{bucket}",
        _no_content,
        params={k: v for k, v in params.items() if v is not None} or None,
    )


def org_fair_use(org_id: str, environment: str, time_range: str) -> Operation[m.FairUse]:
    return Operation(
        "GET",
        f"{ADMIN}/orgs/{_seg(org_id, 'org_id')}/fair-use",
        "GET /v1/admin/orgs/{orgId}/fair-use",
        lambda r: m.parse_fair_use(fields(r)),
        params={"environment": environment, "timeRange": time_range},
    )


# audit ------------------------------------------------------------------------------------


def audit(
    org: str | None, action: str | None, limit: int | None, cursor: str | None
) -> Operation[am.Page[am.AuditEntry]]:
    params = _paging(limit, cursor)
    if org is not None:
        params["org"] = org
    if action is not None:
        params["action"] = action
    return Operation(
        "GET",
        f"{ADMIN}/audit",
        "GET /v1/admin/audit",
        lambda r: am.parse_audit_page(fields(r)),
        params=params,
    )


def audit_pages(
    org: str | None, action: str | None, limit: int | None
) -> Pages[am.Page[am.AuditEntry]]:
    def after(page: am.Page[am.AuditEntry]) -> Operation[am.Page[am.AuditEntry]] | None:
        if not page.has_more or not page.next_cursor:
            return None
        return audit(org, action, limit, page.next_cursor)

    return Pages(audit(org, action, limit, None), after)


# webhooks ---------------------------------------------------------------------------------


def _hooks(org_id: str, rest: str = "") -> str:
    return f"{ADMIN}/orgs/{_seg(org_id, 'org_id')}/webhooks{rest}"


def _endpoint(org_id: str, endpoint_id: str, action: str = "") -> str:
    return _hooks(org_id, f"/endpoints/{_seg(endpoint_id, 'endpoint_id')}{action}")


_ONE = "/v1/admin/orgs/{orgId}/webhooks/endpoints/{endpointId}"


def list_endpoints(org_id: str, environment: str) -> Operation[list[am.AdminWebhookEndpoint]]:
    return Operation(
        "GET",
        _hooks(org_id, "/endpoints"),
        "GET /v1/admin/orgs/{orgId}/webhooks/endpoints",
        lambda r: am.parse_webhook_endpoints(fields(r)),
        params={"environment": environment},
    )


def create_endpoint(
    org_id: str, url: str, environment: str, event_types: Sequence[str] | None
) -> Operation[am.AdminWebhookEndpoint]:
    return Operation(
        "POST",
        _hooks(org_id, "/endpoints"),
        "POST /v1/admin/orgs/{orgId}/webhooks/endpoints",
        lambda r: am.parse_webhook_endpoint(fields(r)),
        params={"environment": environment},
        json=endpoint_body(url, event_types),
        idempotent=False,  # each call registers one more endpoint
    )


def update_endpoint(
    org_id: str,
    endpoint_id: str,
    environment: str,
    enabled: bool | None,
    event_types: Sequence[str] | None,
    every_event: bool,
) -> Operation[am.AdminWebhookEndpoint]:
    return Operation(
        "PATCH",
        _endpoint(org_id, endpoint_id),
        "PATCH " + _ONE,
        lambda r: am.parse_webhook_endpoint(fields(r)),
        params={"environment": environment},
        json=endpoint_patch(enabled, event_types, every_event),
    )


def delete_endpoint(
    org_id: str, endpoint_id: str, environment: str
) -> Operation[am.AdminWebhookEndpoint]:
    return Operation(
        "DELETE",
        _endpoint(org_id, endpoint_id),
        "DELETE " + _ONE,
        lambda r: am.parse_webhook_endpoint(fields(r)),
        params={"environment": environment},
    )


def rotate_endpoint_secret(
    org_id: str, endpoint_id: str, environment: str, overlap_seconds: int | None
) -> Operation[am.AdminWebhookEndpoint]:
    return Operation(
        "POST",
        _endpoint(org_id, endpoint_id, "/rotate-secret"),
        "POST " + _ONE + "/rotate-secret",
        lambda r: am.parse_webhook_endpoint(fields(r)),
        params={"environment": environment},
        json=_overlap(overlap_seconds),
        idempotent=False,  # each call makes another secret
    )


def ping_endpoint(org_id: str, endpoint_id: str, environment: str) -> Operation[m.WebhookDelivery]:
    return Operation(
        "POST",
        _endpoint(org_id, endpoint_id, "/test"),
        "POST " + _ONE + "/test",
        lambda r: m.parse_delivery(fields(r)),
        params={"environment": environment},
        idempotent=False,  # each call sends another ping
    )


def list_deliveries(
    org_id: str, environment: str, job_id: str | None
) -> Operation[list[m.WebhookDelivery]]:
    params: dict[str, str | int | float] = {"environment": environment}
    if job_id is not None:
        params["jobId"] = job_id
    return Operation(
        "GET",
        _hooks(org_id, "/deliveries"),
        "GET /v1/admin/orgs/{orgId}/webhooks/deliveries",
        lambda r: m.parse_deliveries(fields(r)),
        params=params,
    )


def replay_delivery(
    org_id: str, delivery_id: str, environment: str
) -> Operation[m.WebhookDelivery]:
    return Operation(
        "POST",
        _hooks(org_id, f"/deliveries/{_seg(delivery_id, 'delivery_id')}/replay"),
        "POST /v1/admin/orgs/{orgId}/webhooks/deliveries/{deliveryId}/replay",
        lambda r: m.parse_delivery(fields(r)),
        params={"environment": environment},
        idempotent=False,  # each call sends the event again
    )
