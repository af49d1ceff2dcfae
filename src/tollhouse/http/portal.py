"""The self-serve API: an org manages its own keys and webhook endpoints with one of its
``root`` or ``manager`` keys (the dashboard's Keys and Webhooks pages use it).

Everything is scoped to the caller's org *and* environment: a key lists, revokes and
rotates only keys of its own org and environment, and the same for webhook endpoints and
deliveries; another org's (or environment's) id is a 404, exactly like an unknown one.
Keys of the roles ``backend`` and ``member`` get 403. Routes (:meth:`PortalRoutes.endpoints`)::

    GET    /v1/keys                                  the keys, with lastUsedAt
    POST   /v1/keys                                  201, the secret once
    DELETE /v1/keys/{keyId}                          revoke
    POST   /v1/keys/{keyId}/rotate                   201, the new key's secret once
    GET    /v1/webhooks/endpoints
    POST   /v1/webhooks/endpoints                    201, the whsec_ secret once
    PATCH  /v1/webhooks/endpoints/{endpointId}       enabled, eventTypes
    DELETE /v1/webhooks/endpoints/{endpointId}
    POST   /v1/webhooks/endpoints/{endpointId}/rotate-secret
    POST   /v1/webhooks/endpoints/{endpointId}/test  a signed ping, sent at once
    POST   /v1/webhooks/deliveries/{deliveryId}/replay
    GET    /v1/limits                                the org's effective limits (read-only)

A key never creates a key more privileged than itself (a higher role, or PRODUCTION from
SANDBOX: 403 naming why, :mod:`tollhouse.keys.grants`), nor rotates or revokes one (a
rotation hands out the rotated key's powers). Every change is in the audit log with the
calling key's id as actor and the client address it came from.

``GET /v1/limits`` shows the org's effective limits as the provider API's
``GET /v1/admin/orgs/{orgId}/limits`` does (overrides marked), as the caller's environment
gets them: each bucket's ``limit`` and ``override`` are the org's override for that
environment, else its override for every environment (never the other environment's), and
only the key overrides of that environment are listed. It is read-only: overrides are the
provider's to set (``PUT /v1/admin/orgs/{orgId}/limits/{bucket}``), never an org's own
key's — an org able to raise its own limits would make them no limits at all.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from tollhouse.errors import Conflict, Forbidden, NotFound, ValidationFailed
from tollhouse.http.answers import endpoint, json_response, read_json
from tollhouse.http.asgi import Receive, Scope, Send
from tollhouse.http.context import identity_of
from tollhouse.http.routes import Endpoint
from tollhouse.http.webhook_routes import (
    SECRET_OVERLAP_DEFAULT,
    WebhookCaller,
    WebhookRoutes,
    path_id,
)
from tollhouse.jobs.model import iso
from tollhouse.jobs.webhook_store import WebhookStore
from tollhouse.jobs.webhooks import Endpoint as WebhookEndpoint
from tollhouse.jobs.webhooks import endpoint_json
from tollhouse.json_reader import json_integer
from tollhouse.keys.cache import KeyCache
from tollhouse.keys.grants import check_grant, management_refusal
from tollhouse.keys.model import ROLES, Identity, KeyRecord
from tollhouse.keys.store import KeyStore
from tollhouse.limits.overrides import OverrideStore, effective_limits
from tollhouse.metering.meter import UsageMeter
from tollhouse.policy.model import Policy

__all__ = [
    "KEYS_PATH",
    "WEBHOOK_ENDPOINTS_PATH",
    "PortalRoutes",
    "key_json",
]

logger = logging.getLogger(__name__)

KEYS_PATH = "/v1/keys"
WEBHOOK_ENDPOINTS_PATH = "/v1/webhooks/endpoints"
REPLAY_PATH = "/v1/webhooks/deliveries/{deliveryId}/replay"
LIMITS_PATH = "/v1/limits"
#: Longest key name, as the table holds it.
MAX_NAME = 200
#: Longest overlap of a rotation (a key's or a webhook secret's).
MAX_OVERLAP = 30 * 86400
KEY_OVERLAP_DEFAULT = 86400
_ENV_ARG = {"SANDBOX": "test", "PRODUCTION": "live"}
UNAVAILABLE = "The key and webhook store is unavailable; retry shortly."


def key_json(
    record: KeyRecord, now: datetime, used: datetime | None = None, secret: str | None = None
) -> dict[str, Any]:
    """A key as the self-serve API shows it; ``secret`` only when it was just made."""
    status = "active"
    if record.revoked_at is not None:
        status = "revoked"
    elif record.expires_at is not None and record.expires_at <= now:
        status = "expired"
    out: dict[str, Any] = {
        "id": record.id,
        "name": record.name,
        "role": record.role,
        "environment": record.environment,
        "prefix": record.prefix,
        "status": status,
        "createdAt": iso(record.created_at),
        "expiresAt": iso(record.expires_at) if record.expires_at else None,
        "revokedAt": iso(record.revoked_at) if record.revoked_at else None,
        "lastUsedAt": iso(used) if used else None,
    }
    if secret is not None:
        out["secret"] = secret
    return out


def _object(raw: bytes) -> dict[str, Any]:
    """A JSON object body; an empty body is ``{}`` (the actions need none)."""
    if not raw.strip():
        return {}
    body = read_json(raw)
    if not isinstance(body, dict):
        raise ValidationFailed("the body must be a JSON object")
    return body


def _unknown(body: dict[str, Any], known: tuple[str, ...]) -> None:
    extra = sorted(set(body) - set(known))
    if extra:
        raise ValidationFailed(
            f"unknown field(s) {', '.join(map(repr, extra))}; this route takes {', '.join(known)}"
        )


def _overlap(body: dict[str, Any], default: int) -> timedelta:
    value = json_integer(body.get("overlapSeconds", default))
    if value is None or not 0 <= value <= MAX_OVERLAP:
        raise ValidationFailed(
            f'"overlapSeconds" must be an integer from 0 to {MAX_OVERLAP} (30 days); '
            f"0 ends the old one at once (default {default})"
        )
    return timedelta(seconds=value)


def _address(request: Request) -> str | None:
    client = request.scope.get("client")
    return str(client[0]) if client else None


def _manager(request: Request, what: str) -> Identity:
    who = identity_of(request.scope)
    refusal = management_refusal(who.role, what)
    if refusal is not None:
        raise Forbidden(refusal)
    return who


class PortalRoutes(WebhookRoutes):
    """The self-serve routes (see the module's notes); the webhook handlers are the
    provider API's too (:class:`~tollhouse.http.webhook_routes.WebhookRoutes`), scoped here
    by the calling key.

    Args:
        keys: the key store.
        key_cache: the process's auth cache; a revocation or rotation here evicts at once
            (other processes within their revocation poll).
        webhooks: endpoints and deliveries.
        meter: flushed before ``lastUsedAt`` is read, so a caller sees its own last call.
        policy: the running policy (its buckets and pools, for ``GET /v1/limits``).
        overrides: the limit overrides (``GET /v1/limits``); with ``policy``, both or
            neither — without them the route is left out.
    """

    disabled_error = Conflict
    url_required = '"url" is required: an absolute http:// or https:// URL'
    enabled_problem = '"enabled" must be true or false'

    def __init__(
        self,
        *,
        keys: KeyStore,
        key_cache: KeyCache | None,
        webhooks: WebhookStore,
        meter: UsageMeter | None = None,
        policy: Policy | None = None,
        overrides: OverrideStore | None = None,
    ) -> None:
        self.keys = keys
        self.key_cache = key_cache
        self.webhooks = webhooks
        self.meter = meter
        self.policy = policy
        self.overrides = overrides

    # --- keys --------------------------------------------------------------------------

    async def list_keys(self, request: Request) -> Response:
        """``GET /v1/keys``: the org's keys of the caller's environment, newest first."""
        who = _manager(request, "keys")
        if self.meter is not None:
            # Calls still in this process's meter: their keys' last use is written with
            # them (tollhouse.keys.last_used, beside the usage flush).
            if self.meter.has_pending:
                await self.meter.flush()
            await self.meter.flusher.flush_companions()
        records = await self.keys.list_keys(who.org, environment=who.environment)
        now = datetime.now(UTC)
        return json_response({"data": [key_json(r, now, r.last_used_at) for r in records]})

    async def create_key(self, request: Request) -> Response:
        """``POST /v1/keys``: a new key of the caller's org; its secret once."""
        who = _manager(request, "keys")
        body = _object(await request.body())
        _unknown(body, ("name", "role", "environment", "expiresAt"))
        name = body.get("name", "")
        if not isinstance(name, str) or len(name) > MAX_NAME or "\x00" in name:
            raise ValidationFailed(f'"name" must be a string of at most {MAX_NAME} characters')
        role = body.get("role", "member")
        if not isinstance(role, str) or role not in ROLES:
            raise ValidationFailed(f'"role" must be one of {", ".join(ROLES)}')
        environment = body.get("environment", who.environment)
        if not isinstance(environment, str) or environment not in _ENV_ARG:
            raise ValidationFailed('"environment" must be SANDBOX or PRODUCTION')
        now = datetime.now(UTC)
        expires = _expiry(body.get("expiresAt"), now)
        check_grant(who.role, who.environment, role, environment)
        record, secret = await self.keys.create(
            who.org,
            _ENV_ARG[environment],
            role,
            name.strip(),
            actor=who.key_id,
            expires_at=expires,
            address=_address(request),
        )
        return json_response(key_json(record, now, secret=secret), 201)

    async def _own_key(self, who: Identity, key_id: str, doing: str) -> KeyRecord:
        for record in await self.keys.list_keys(who.org, environment=who.environment):
            if record.id == key_id:
                if ROLES.index(record.role) < ROLES.index(who.role):
                    raise Forbidden(
                        f"A {who.role} key cannot {doing} a {record.role} key: a key never "
                        "acts on a key with a role above its own."
                    )
                return record
        raise NotFound(f"key {key_id!r} not found")

    async def revoke_key(self, request: Request) -> Response:
        """``DELETE /v1/keys/{keyId}``: revoke a key of the caller's org and environment."""
        who = _manager(request, "keys")
        key_id = path_id(request, "keyId", "key")
        await self._own_key(who, key_id, "revoke")
        record = await self.keys.revoke(
            key_id,
            actor=who.key_id,
            org=who.org,
            environment=who.environment,
            address=_address(request),
        )
        if record is None:
            raise NotFound(f"key {key_id!r} not found")
        await self._evict()
        return json_response(key_json(record, datetime.now(UTC)))

    async def rotate_key(self, request: Request) -> Response:
        """``POST /v1/keys/{keyId}/rotate``: a new secret; the old one works for
        ``overlapSeconds``."""
        who = _manager(request, "keys")
        key_id = path_id(request, "keyId", "key")
        body = _object(await request.body())
        _unknown(body, ("overlapSeconds",))
        overlap = _overlap(body, KEY_OVERLAP_DEFAULT)
        await self._own_key(who, key_id, "rotate")
        # A revoked or expired key: 409 CONFLICT (NotRotatable), as the provider API says.
        rotated = await self.keys.rotate(
            key_id,
            overlap,
            actor=who.key_id,
            org=who.org,
            environment=who.environment,
            address=_address(request),
        )
        if rotated is None:
            raise NotFound(f"key {key_id!r} not found")
        record, secret, old = rotated
        await self._evict()
        now = datetime.now(UTC)
        return json_response(
            {**key_json(record, now, secret=secret), "replaces": key_json(old, now)}, 201
        )

    async def _evict(self) -> None:
        # This process refuses a revoked key from its next request on; others within
        # their revocation poll (docs/security.md).
        if self.key_cache is not None:
            await self.key_cache.poll_revocations()

    # --- limits ------------------------------------------------------------------------

    async def limits(self, request: Request) -> Response:
        """``GET /v1/limits``: the org's effective limits in the caller's environment,
        overrides marked; the key overrides of that environment only. Read-only (see the
        module's notes)."""
        who = _manager(request, "limits")
        assert self.policy is not None and self.overrides is not None  # route only with both
        mine = {r.id for r in await self.keys.list_keys(who.org, environment=who.environment)}
        found = [
            o
            for o in await self.overrides.list(who.org)
            if (o.key_id is None and o.environment in (None, who.environment)) or o.key_id in mine
        ]
        body = effective_limits(self.policy.buckets, self.policy.pools, found, who.environment)
        return json_response({"org": who.org, "environment": who.environment, **body})

    # --- webhook endpoints and deliveries (the handlers: WebhookRoutes) -----------------

    async def caller(self, request: Request, what: str) -> WebhookCaller:
        """The calling key (a root or manager key: else 403) and its org and environment."""
        who = _manager(request, what)
        return WebhookCaller(who.org, who.environment, who.key_id, _address(request))

    async def body_of(self, request: Request, allowed: tuple[str, ...]) -> dict[str, Any]:
        body = _object(await request.body())
        _unknown(body, allowed)
        return body

    def overlap_of(self, body: dict[str, Any]) -> timedelta:
        return _overlap(body, SECRET_OVERLAP_DEFAULT)

    def shown(self, endpoint: WebhookEndpoint) -> dict[str, Any]:
        return endpoint_json(endpoint)

    def endpoints(self) -> list[Endpoint]:
        """The self-serve routes, for the route table: one endpoint per path (the table
        takes a literal path's methods from one endpoint)."""

        def route(path: str, group: str, **handlers: Any) -> Endpoint:
            apps = {
                verb: endpoint(handler, json_body=verb != "GET", unavailable=UNAVAILABLE)
                for verb, handler in ((v.upper(), h) for v, h in handlers.items())
            }
            if "GET" in apps:
                apps["HEAD"] = apps["GET"]

            async def app(scope: Scope, receive: Receive, send: Send) -> None:
                await apps[scope["method"]](scope, receive, send)

            return Endpoint(path, tuple(v for v in apps if v != "HEAD"), app, group, "platform")

        hooks = WEBHOOK_ENDPOINTS_PATH
        one = hooks + "/{endpointId}"
        limits = []
        if self.policy is not None and self.overrides is not None:
            # Read with one's limits, so turned off with /v1/rate-limit/status.
            limits = [route(LIMITS_PATH, "rate-limit-status", get=self.limits)]
        return [
            *limits,
            route(KEYS_PATH, "keys", get=self.list_keys, post=self.create_key),
            route(KEYS_PATH + "/{keyId}", "keys", delete=self.revoke_key),
            route(KEYS_PATH + "/{keyId}/rotate", "keys", post=self.rotate_key),
            route(hooks, "webhooks", get=self.list_endpoints, post=self.add_endpoint),
            route(one, "webhooks", patch=self.update_endpoint, delete=self.remove_endpoint),
            route(one + "/rotate-secret", "webhooks", post=self.rotate_secret),
            route(one + "/test", "webhooks", post=self.test_endpoint),
            route(REPLAY_PATH, "webhooks", post=self.replay),
        ]


def _expiry(value: Any, now: datetime) -> datetime | None:
    if value is None:
        return None
    problem = ValidationFailed(
        '"expiresAt" must be an ISO 8601 time with a timezone in the future, '
        'e.g. "2030-01-01T00:00:00Z", or null'
    )
    if not isinstance(value, str) or len(value) > 40:
        raise problem
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise problem from None
    if moment.tzinfo is None or moment <= now:
        raise problem
    return moment.astimezone(UTC)
