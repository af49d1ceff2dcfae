"""The provider API: ``/v1/admin/*``, for the API provider's own backend and support team.

Called with an admin token (``Authorization: Bearer adm_…``, or ``TOLLHOUSE_ADMIN_TOKEN``;
see :mod:`tollhouse.keys.admin_tokens`), never an org's key: an ``sk_…`` key here is a 403
``ADMIN_ONLY``, no token or an unknown or revoked one a 401 ``ADMIN_TOKEN_REQUIRED``. The
gateway hands these routes over without a key, a bucket or metering (they are the
provider's, not an org's); the token is checked here, in the database, on every request.

Routes (:meth:`AdminRoutes.endpoints`):

* ``POST /v1/admin/orgs`` ``{"id", "name"?, "firstKey"?}`` → 201; ``GET /v1/admin/orgs``
  (cursor paging); ``GET``/``PATCH /v1/admin/orgs/{orgId}`` (``name``, ``suspended``);
* ``POST``/``GET /v1/admin/orgs/{orgId}/keys``; ``DELETE /v1/admin/keys/{keyId}``;
  ``POST /v1/admin/keys/{keyId}/rotate`` ``{"overlapSeconds"}``;
* ``GET /v1/admin/orgs/{orgId}/limits``; ``PUT``/``DELETE
  /v1/admin/orgs/{orgId}/limits/{bucket}`` (``keyId`` for one key's override,
  ``environment`` for the org's in one environment alone);
* ``GET /v1/admin/audit`` (cursor paging; ``org`` and ``action`` filters);
* ``GET /v1/admin/orgs/{orgId}/fair-use?environment=&timeRange=``: an org's fair-use
  signals in one environment, the answer ``GET /v1/analytics/fair-use`` gives its keys;
* an org's webhook endpoints and deliveries, per environment:
  :mod:`tollhouse.http.admin_webhooks`.

Every change is made by the domain stores (:mod:`tollhouse.keys.orgs`,
:mod:`tollhouse.keys.store`, :mod:`tollhouse.limits.overrides`) and audited in its own
transaction with the token's id as the actor and the caller's address. Listings page as
``GET /v1/queue`` does: ``limit`` (1–100, default 20) and ``cursor`` in, ``data``,
``hasMore`` and ``nextCursor`` out, newest first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response

from tollhouse.cursors import encode_keyset
from tollhouse.errors import (
    AdminOnly,
    AdminTokenRequired,
    BadRequest,
    NotFound,
    ValidationFailed,
)
from tollhouse.fairuse.report import fair_use_report
from tollhouse.http.admin_input import (
    KEY_AND_ENVIRONMENT,
    KEY_ID,
    MAX_LIMIT_VALUE,
    MAX_OVERLAP_SECONDS,
    address_of,
    check_known,
    key_id_of,
    key_json,
    org_id_of,
    org_json,
    override_json,
    page_args,
    read_key_fields,
    read_object,
    read_text,
)
from tollhouse.http.admin_webhooks import AdminWebhookRoutes
from tollhouse.http.answers import endpoint, json_response
from tollhouse.http.routes import Endpoint
from tollhouse.jobs.volume import check_time_range
from tollhouse.jobs.webhook_store import WebhookStore
from tollhouse.json_reader import json_integer
from tollhouse.keys.admin_tokens import AdminTokenStore
from tollhouse.keys.model import ENVIRONMENTS
from tollhouse.keys.orgs import ORG_ID, OrgStore
from tollhouse.keys.store import KeyStore
from tollhouse.limits.overrides import (
    OverrideStore,
    check_limit_name,
    effective_limits,
)
from tollhouse.metering.meter import UsageMeter
from tollhouse.policy.model import Policy
from tollhouse.security.audit import ACTIONS, read_page

__all__ = ["ADMIN_PREFIX", "AdminRoutes"]

ADMIN_PREFIX = "/v1/admin"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who calls the provider API: the admin token's id and the caller's address."""

    actor: str
    address: str | None


# --- the routes ----------------------------------------------------------------------------


class AdminRoutes:
    """The handlers of the provider API (see the module's notes).

    Args:
        engine: the database (keys, orgs, overrides, audit log).
        policy: the running policy (its buckets and pools, for the limits routes).
        admin_token: ``TOLLHOUSE_ADMIN_TOKEN`` (empty: only stored tokens).
        clock: wall clock (tests).
        webhooks: the orgs' webhook endpoints and deliveries (their routes:
            :mod:`tollhouse.http.admin_webhooks`); None leaves those routes out.
        meter: this process's meter, flushed before a fair-use read (None: not flushed).
    """

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        policy: Policy,
        admin_token: str = "",
        clock: Callable[[], datetime] | None = None,
        webhooks: WebhookStore | None = None,
        meter: UsageMeter | None = None,
    ) -> None:
        self.webhooks = webhooks
        self.meter = meter
        self.engine = engine
        self.policy = policy
        self.tokens = AdminTokenStore(engine, admin_token)
        self.orgs = OrgStore(engine)
        self.keys = KeyStore(engine)
        self.overrides = OverrideStore(engine)
        self.clock = clock or (lambda: datetime.now(UTC))
        #: The gateway's body limit (it does not read these routes' bodies itself).
        self.max_body = policy.limits.max_body_bytes

    async def caller(self, request: Request) -> Caller:
        """The admin token's id and the address of a request.

        Raises:
            AdminOnly: an org's key was sent (403).
            AdminTokenRequired: no token, or not a valid one (401).
        """
        token = ""
        for name, value in request.scope["headers"]:
            if name == b"authorization":
                text = value.decode("latin-1")
                token = text[7:].strip() if text[:7].lower() == "bearer " else ""
                break
            if name == b"x-api-key" and not token:
                token = value.decode("latin-1").strip()
        if token.startswith("sk_"):
            raise AdminOnly(
                "An org's API key cannot call the provider API: send an admin token "
                "(TOLLHOUSE_ADMIN_TOKEN, or one from `tollhouse admin-tokens create`) as "
                '"Authorization: Bearer <token>".'
            )
        actor = await self.tokens.identify(token) if token else None
        if actor is None:
            raise AdminTokenRequired(
                "The provider API needs an admin token: "
                '"Authorization: Bearer <token>" with TOLLHOUSE_ADMIN_TOKEN or a token from '
                "`tollhouse admin-tokens create` (not revoked)."
            )
        return Caller(actor, address_of(request))

    def org_of(self, request: Request) -> str:
        """The ``{orgId}`` of a request's path (malformed: 404, as an unknown org)."""
        return org_id_of(request)

    async def body_of(self, request: Request) -> dict[str, Any]:
        """A request's JSON object body (empty: ``{}``), within the body limit."""
        return await read_object(request, self.max_body, empty_ok=True)

    # orgs ----------------------------------------------------------------------------------

    async def create_org(self, request: Request) -> Response:
        """``POST /v1/admin/orgs``: an org, and its first key with it when asked."""
        who = await self.caller(request)
        body = await read_object(request, self.max_body)
        check_known(body, ("id", "name", "firstKey"))
        org_id = body.get("id")
        if not isinstance(org_id, str) or not ORG_ID.fullmatch(org_id):
            raise ValidationFailed(
                "id must be 1 to 64 letters, digits, _ . - (starting with a letter or digit)."
            )
        name = read_text(body, "name")
        now = self.clock()
        first = body.get("firstKey")
        if first is not None and not isinstance(first, dict):
            raise ValidationFailed("firstKey must be a JSON object.")
        first_key = read_key_fields(first, now, "firstKey.") if first is not None else None
        org, key = await self.orgs.create(
            org_id, name, actor=who.actor, address=who.address, first_key=first_key
        )
        out = org_json(org)
        if key is not None:
            out["firstKey"] = key_json(key[0], key[1], now)
        return json_response(out, 201)

    async def list_orgs(self, request: Request) -> Response:
        """``GET /v1/admin/orgs?limit=&cursor=``: orgs, newest first."""
        await self.caller(request)
        limit, before = page_args(request)
        found, more = await self.orgs.page(limit=limit, before=before)
        last = found[-1] if found else None
        return json_response(
            {
                "data": [org_json(o) for o in found],
                "hasMore": more,
                "nextCursor": (
                    encode_keyset(last.created_at, last.id) if more and last is not None else None
                ),
            }
        )

    async def get_org(self, request: Request) -> Response:
        """``GET /v1/admin/orgs/{orgId}``."""
        await self.caller(request)
        return json_response(org_json(await self.orgs.require(org_id_of(request))))

    async def patch_org(self, request: Request) -> Response:
        """``PATCH /v1/admin/orgs/{orgId}`` ``{"name"?, "suspended"?}``."""
        who = await self.caller(request)
        org_id = org_id_of(request)
        body = await read_object(request, self.max_body)
        check_known(body, ("name", "suspended"))
        name = read_text(body, "name", default="") if "name" in body else None
        suspended = body.get("suspended")
        if suspended is not None and not isinstance(suspended, bool):
            raise ValidationFailed("suspended must be true or false.")
        org = await self.orgs.update(
            org_id, name=name, suspended=suspended, actor=who.actor, address=who.address
        )
        return json_response(org_json(org))

    # keys ----------------------------------------------------------------------------------

    async def create_key(self, request: Request) -> Response:
        """``POST /v1/admin/orgs/{orgId}/keys``: the secret, once."""
        who = await self.caller(request)
        org_id = org_id_of(request)
        now = self.clock()
        fields = read_key_fields(await read_object(request, self.max_body), now)
        key, secret = await self.keys.create(
            org_id,
            fields.environment,
            fields.role,
            fields.name,
            actor=who.actor,
            address=who.address,
            expires_at=fields.expires_at,
            meta=fields.meta,
            existing_org=True,
        )
        return json_response(key_json(key, secret, now), 201)

    async def list_keys(self, request: Request) -> Response:
        """``GET /v1/admin/orgs/{orgId}/keys?limit=&cursor=&environment=``: never a secret."""
        await self.caller(request)
        org_id = org_id_of(request)
        limit, before = page_args(request)
        environment = request.query_params.get("environment")
        if environment is not None and environment not in ENVIRONMENTS:
            raise BadRequest('query parameter "environment" must be SANDBOX or PRODUCTION.')
        await self.orgs.require(org_id)
        found, more = await self.keys.page(
            org_id, limit=limit, before=before, environment=environment
        )
        now = self.clock()
        last = found[-1] if found else None
        return json_response(
            {
                "data": [key_json(k, None, now) for k in found],
                "hasMore": more,
                "nextCursor": (
                    encode_keyset(last.created_at, last.id) if more and last is not None else None
                ),
            }
        )

    async def revoke_key(self, request: Request) -> Response:
        """``DELETE /v1/admin/keys/{keyId}``: refused by running servers within a second."""
        who = await self.caller(request)
        key_id = key_id_of(str(request.path_params["keyId"]))
        found = await self.keys.revoke(key_id, actor=who.actor, address=who.address)
        if found is None:
            raise NotFound(f"No key has the id {key_id!r}.")
        return json_response(key_json(found, None, self.clock()))

    async def rotate_key(self, request: Request) -> Response:
        """``POST /v1/admin/keys/{keyId}/rotate`` ``{"overlapSeconds"}``: a new secret;
        the old one works until the overlap ends (default 24 h; 0 revokes it now)."""
        who = await self.caller(request)
        key_id = key_id_of(str(request.path_params["keyId"]))
        body = await read_object(request, self.max_body, empty_ok=True)
        check_known(body, ("overlapSeconds",))
        overlap = json_integer(body.get("overlapSeconds", 86400))
        if overlap is None or not 0 <= overlap <= MAX_OVERLAP_SECONDS:
            raise ValidationFailed(
                f"overlapSeconds must be an integer from 0 to {MAX_OVERLAP_SECONDS}."
            )
        outcome = await self.keys.rotate(
            key_id, timedelta(seconds=overlap), actor=who.actor, address=who.address
        )
        if outcome is None:
            raise NotFound(f"No key has the id {key_id!r}.")
        new, secret, old = outcome
        now = self.clock()
        out = key_json(new, secret, now)
        out["replaces"] = key_json(old, None, now)
        return json_response(out, 201)

    # limits --------------------------------------------------------------------------------

    async def limits(self, request: Request) -> Response:
        """``GET /v1/admin/orgs/{orgId}/limits``: effective buckets and pools."""
        await self.caller(request)
        org_id = org_id_of(request)
        await self.orgs.require(org_id)
        overrides = await self.overrides.list(org_id)
        body = effective_limits(self.policy.buckets, self.policy.pools, overrides)
        return json_response({"org": org_id, **body})

    async def _override_target(self, request: Request, key_id: Any) -> tuple[str, str, str | None]:
        org_id = org_id_of(request)
        bucket = str(request.path_params["bucket"])
        check_limit_name(self.policy.buckets, self.policy.pools, bucket)
        await self.orgs.require(org_id)
        if key_id is not None:
            if not isinstance(key_id, str):
                raise ValidationFailed("keyId must be a key id (key_…).")
            if not KEY_ID.fullmatch(key_id) or await self.keys.get(key_id, org=org_id) is None:
                raise NotFound(f"The org {org_id!r} has no key {key_id[:80]!r}.")
        return org_id, bucket, key_id

    async def put_limit(self, request: Request) -> Response:
        """``PUT /v1/admin/orgs/{orgId}/limits/{bucket}`` ``{"limit", "keyId"?,
        "environment"?}``: ``{bucket}`` names a bucket or a pool of the policy;
        ``environment`` (not with ``keyId``: a key has its own) sets the org's override for
        that environment alone."""
        who = await self.caller(request)
        body = await read_object(request, self.max_body)
        check_known(body, ("limit", "keyId", "environment"))
        limit = json_integer(body.get("limit"))
        if limit is None or not 1 <= limit <= MAX_LIMIT_VALUE:
            raise ValidationFailed(f"limit must be an integer from 1 to {MAX_LIMIT_VALUE}.")
        environment = body.get("environment")
        if environment is not None and environment not in ENVIRONMENTS:
            raise ValidationFailed(
                "environment must be SANDBOX or PRODUCTION (or left out: every one)."
            )
        if environment is not None and body.get("keyId") is not None:
            raise ValidationFailed(KEY_AND_ENVIRONMENT)
        org_id, bucket, key_id = await self._override_target(request, body.get("keyId"))
        override = await self.overrides.set(
            org_id,
            bucket,
            limit,
            key_id,
            environment=environment,
            actor=who.actor,
            address=who.address,
        )
        return json_response(override_json(override))

    async def delete_limit(self, request: Request) -> Response:
        """``DELETE /v1/admin/orgs/{orgId}/limits/{bucket}?keyId=&environment=``: the
        policy's limit (or the org's override, for a key or one environment) applies
        again."""
        who = await self.caller(request)
        params = request.query_params
        environment = params.get("environment")
        if environment is not None and environment not in ENVIRONMENTS:
            raise BadRequest('query parameter "environment" must be SANDBOX or PRODUCTION.')
        if environment is not None and params.get("keyId") is not None:
            raise BadRequest(KEY_AND_ENVIRONMENT)
        org_id, bucket, key_id = await self._override_target(request, params.get("keyId"))
        cleared = await self.overrides.clear(
            org_id, bucket, key_id, environment=environment, actor=who.actor, address=who.address
        )
        if not cleared:
            whose = f"key {key_id}" if key_id else f"org {org_id}"
            where = f" in {environment}" if environment else ""
            raise NotFound(f"No override of {bucket!r} for {whose}{where}.")
        return Response(status_code=204)

    # fair use ------------------------------------------------------------------------------

    async def fair_use(self, request: Request) -> Response:
        """``GET /v1/admin/orgs/{orgId}/fair-use?environment=&timeRange=``: the org's
        fair-use signals in that environment, as its own keys read them."""
        await self.caller(request)
        org_id = org_id_of(request)
        params = request.query_params
        environment = params.get("environment")
        if environment is None or environment not in ENVIRONMENTS:
            shown = "missing" if environment is None else repr(environment[:40])
            raise BadRequest(
                f'query parameter "environment" is required: SANDBOX or PRODUCTION ({shown})'
            )
        time_range = check_time_range(params.get("timeRange"))
        await self.orgs.require(org_id)
        now = self.clock().timestamp()
        body = await fair_use_report(
            self.engine, self.policy.fair_use, org_id, environment, time_range, now, self.meter
        )
        return json_response({"org": org_id, **body})

    # audit ---------------------------------------------------------------------------------

    async def audit(self, request: Request) -> Response:
        """``GET /v1/admin/audit?org=&action=&limit=&cursor=``: newest first."""
        await self.caller(request)
        limit, before = page_args(request)
        params = request.query_params
        org = params.get("org")
        if org is not None and not ORG_ID.fullmatch(org):
            raise BadRequest('query parameter "org" is not an org id.')
        action = params.get("action")
        if action is not None and action not in ACTIONS:
            raise BadRequest(f'query parameter "action" must be one of {", ".join(ACTIONS)}.')
        found, more = await read_page(
            self.engine, org=org, action=action, limit=limit, before=before
        )
        last = found[-1] if found else None
        return json_response(
            {
                "data": [e.as_json() for e in found],
                "hasMore": more,
                "nextCursor": encode_keyset(last.at, last.id) if more and last else None,
            }
        )

    def endpoints(self) -> list[Endpoint]:
        """The provider API's routes, for the route table (group ``admin``)."""
        table: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {
            "/orgs": {"POST": self.create_org, "GET": self.list_orgs},
            "/orgs/{orgId}": {"GET": self.get_org, "PATCH": self.patch_org},
            "/orgs/{orgId}/keys": {"POST": self.create_key, "GET": self.list_keys},
            "/orgs/{orgId}/limits": {"GET": self.limits},
            "/orgs/{orgId}/limits/{bucket}": {"PUT": self.put_limit, "DELETE": self.delete_limit},
            "/orgs/{orgId}/fair-use": {"GET": self.fair_use},
            "/keys/{keyId}": {"DELETE": self.revoke_key},
            "/keys/{keyId}/rotate": {"POST": self.rotate_key},
            "/audit": {"GET": self.audit},
        }
        if self.webhooks is not None:
            table.update(AdminWebhookRoutes(self, self.webhooks).table())
        out = []
        for path, handlers in table.items():
            out.append(
                Endpoint(
                    ADMIN_PREFIX + path,
                    tuple(handlers),
                    endpoint(_by_method(handlers)),
                    "admin",
                    "admin",
                    keyless=True,
                )
            )
        return out


def _by_method(
    handlers: dict[str, Callable[[Request], Awaitable[Response]]],
) -> Callable[[Request], Awaitable[Response]]:
    """One handler for a path's methods (the route table sent only methods it takes;
    HEAD goes where GET does)."""

    async def handle(request: Request) -> Response:
        method = request.method
        return await handlers["GET" if method == "HEAD" else method](request)

    return handle
