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

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response

from tollhouse.cursors import decode_keyset, encode_keyset
from tollhouse.errors import (
    AdminOnly,
    AdminTokenRequired,
    BadRequest,
    NotFound,
    PayloadTooLarge,
    ValidationFailed,
)
from tollhouse.fairuse.report import fair_use_report
from tollhouse.http.admin_webhooks import AdminWebhookRoutes
from tollhouse.http.answers import check_json_type, endpoint, json_response, read_json
from tollhouse.http.routes import Endpoint
from tollhouse.jobs.volume import check_time_range
from tollhouse.jobs.webhook_store import WebhookStore
from tollhouse.json_reader import json_integer
from tollhouse.keys.admin_tokens import AdminTokenStore
from tollhouse.keys.model import ENVIRONMENTS, ROLES, KeyRecord, Role
from tollhouse.keys.orgs import MAX_NAME, ORG_ID, FirstKey, OrgRecord, OrgStore
from tollhouse.keys.store import KeyStore
from tollhouse.limits.overrides import (
    Override,
    OverrideStore,
    check_limit_name,
    effective_limits,
)
from tollhouse.metering.meter import UsageMeter
from tollhouse.policy.model import Policy
from tollhouse.security.audit import ACTIONS, read_page

__all__ = ["ADMIN_PREFIX", "AdminRoutes", "key_json", "org_json"]

ADMIN_PREFIX = "/v1/admin"
#: Listing page sizes (as ``GET /v1/queue``).
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
#: Longest rotation overlap: 30 days.
MAX_OVERLAP_SECONDS = 30 * 86400
#: Largest ``meta`` of a key, serialised.
MAX_META_BYTES = 4096
#: Largest limit an override may set (a 32-bit column).
MAX_LIMIT_VALUE = 2**31 - 1
_KEY_ID = re.compile(r"key_[0-9a-f]{16}")
_ENV_ARG = {"SANDBOX": "test", "PRODUCTION": "live"}
_KEY_AND_ENVIRONMENT = (
    "environment and keyId exclude each other: a key's override applies to the key's own "
    "environment; leave environment out."
)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def org_json(org: OrgRecord) -> dict[str, Any]:
    """An org as the provider API shows it."""
    return {
        "id": org.id,
        "name": org.name,
        "createdAt": _iso(org.created_at),
        "suspended": org.suspended,
        "suspendedAt": _iso(org.suspended_at),
    }


def key_json(
    key: KeyRecord, secret: str | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """A key as the provider (and self-serve) API shows it; ``key`` (the secret) only
    when it was just made."""
    now = now or datetime.now(UTC)
    status = "revoked" if key.revoked_at is not None else "active"
    if status == "active" and not key.active(now):
        status = "expired"
    out: dict[str, Any] = {"id": key.id}
    if secret is not None:
        out["key"] = secret
    out.update(
        {
            "org": key.org,
            "environment": key.environment,
            "role": key.role,
            "name": key.name,
            "prefix": key.prefix,
            "status": status,
            "createdAt": _iso(key.created_at),
            "expiresAt": _iso(key.expires_at),
            "revokedAt": _iso(key.revoked_at),
            "lastUsedAt": _iso(key.last_used_at),
            "meta": key.meta,
        }
    )
    return out


def _override_json(o: Override) -> dict[str, Any]:
    return {
        "org": o.org,
        "bucket": o.bucket,
        "keyId": o.key_id,
        "environment": o.environment,
        "limit": o.limit,
        "updatedAt": _iso(o.updated_at),
    }


# --- reading requests ---------------------------------------------------------------------


def _page_args(request: Request) -> tuple[int, tuple[datetime, str] | None]:
    params = request.query_params
    raw = params.get("limit")
    limit = DEFAULT_LIMIT
    if raw is not None:
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 4) or not (
            1 <= int(raw) <= MAX_LIMIT
        ):
            raise BadRequest(
                f'query parameter "limit" must be an integer from 1 to {MAX_LIMIT} '
                f"(default {DEFAULT_LIMIT}); got {raw[:40]!r}"
            )
        limit = int(raw)
    cursor = params.get("cursor")
    return limit, decode_keyset(cursor) if cursor is not None else None


async def _object(request: Request, max_body: int, *, empty_ok: bool = False) -> dict[str, Any]:
    check_json_type(request.scope)  # after the token: a stranger learns nothing
    declared = request.headers.get("content-length", "")
    too_large = PayloadTooLarge(f"The request body is over the limit of {max_body} bytes.")
    if declared.isdigit() and int(declared) > max_body:
        raise too_large
    buffer = bytearray()
    async for chunk in request.stream():
        buffer += chunk
        if len(buffer) > max_body:
            raise too_large
    raw = bytes(buffer)
    if not raw.strip() and empty_ok:
        return {}
    body = read_json(raw)
    if not isinstance(body, dict):
        raise ValidationFailed("The body must be a JSON object.")
    return body


def _known(body: dict[str, Any], allowed: tuple[str, ...], where: str = "") -> None:
    extra = sorted(set(body) - set(allowed))
    if extra:
        raise ValidationFailed(
            f"{where}unknown field(s) {', '.join(extra)}; allowed: {', '.join(allowed)}."
        )


def _text(body: dict[str, Any], name: str, *, where: str = "", default: str = "") -> str:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > MAX_NAME or "\x00" in value:
        raise ValidationFailed(
            f"{where}{name} must be a string of at most {MAX_NAME} characters (no NUL)."
        )
    return value


def _role(body: dict[str, Any], where: str = "") -> Role:
    value = body.get("role", "member")
    if value not in ROLES:
        raise ValidationFailed(f"{where}role must be one of {', '.join(ROLES)}.")
    return cast(Role, value)


def _environment(body: dict[str, Any], where: str = "") -> str:
    value = body.get("environment")
    if value not in ENVIRONMENTS:
        raise ValidationFailed(f"{where}environment must be SANDBOX or PRODUCTION.")
    return _ENV_ARG[cast(str, value)]


def _expires(body: dict[str, Any], now: datetime, where: str = "") -> datetime | None:
    value = body.get("expiresAt")
    if value is None:
        return None
    problem = ValidationFailed(
        f"{where}expiresAt must be an ISO 8601 time with a timezone offset, in the future."
    )
    if not isinstance(value, str) or len(value) > 64:
        raise problem
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise problem from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise problem
    try:
        moment = moment.astimezone(UTC)
    except (OverflowError, ValueError):
        raise problem from None
    if moment <= now or moment.year > 9000:
        raise problem
    return moment


def _meta(body: dict[str, Any], where: str = "") -> dict[str, Any] | None:
    value = body.get("meta")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValidationFailed(f"{where}meta must be a JSON object.")
    try:
        size = len(orjson.dumps(value))
    except TypeError:  # pragma: no cover - parsed JSON always serialises
        raise ValidationFailed(f"{where}meta must be JSON.") from None
    if size > MAX_META_BYTES or "\\u0000" in orjson.dumps(value).decode():
        raise ValidationFailed(
            f"{where}meta must be at most {MAX_META_BYTES} bytes of JSON (no NUL)."
        )
    return value


def _key_fields(body: dict[str, Any], now: datetime, where: str = "") -> FirstKey:
    _known(body, ("environment", "role", "name", "expiresAt", "meta"), where)
    return FirstKey(
        environment=_environment(body, where),
        role=_role(body, where),
        name=_text(body, "name", where=where),
        expires_at=_expires(body, now, where),
        meta=_meta(body, where),
    )


def _org_id(request: Request) -> str:
    org_id = str(request.path_params["orgId"])
    if not ORG_ID.fullmatch(org_id):
        raise NotFound(f"No org has the id {org_id[:80]!r}.")
    return org_id


def _key_id(raw: str) -> str:
    if not _KEY_ID.fullmatch(raw):
        raise NotFound(f"No key has the id {raw[:80]!r}.")
    return raw


def address_of(request: Request) -> str | None:
    """The caller's address (after trusted proxies), for the audit log."""
    client = request.scope.get("client")
    return str(client[0]) if client else None


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
        return _org_id(request)

    async def body_of(self, request: Request) -> dict[str, Any]:
        """A request's JSON object body (empty: ``{}``), within the body limit."""
        return await _object(request, self.max_body, empty_ok=True)

    # orgs ----------------------------------------------------------------------------------

    async def create_org(self, request: Request) -> Response:
        """``POST /v1/admin/orgs``: an org, and its first key with it when asked."""
        who = await self.caller(request)
        body = await _object(request, self.max_body)
        _known(body, ("id", "name", "firstKey"))
        org_id = body.get("id")
        if not isinstance(org_id, str) or not ORG_ID.fullmatch(org_id):
            raise ValidationFailed(
                "id must be 1 to 64 letters, digits, _ . - (starting with a letter or digit)."
            )
        name = _text(body, "name")
        now = self.clock()
        first = body.get("firstKey")
        if first is not None and not isinstance(first, dict):
            raise ValidationFailed("firstKey must be a JSON object.")
        first_key = _key_fields(first, now, "firstKey.") if first is not None else None
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
        limit, before = _page_args(request)
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
        return json_response(org_json(await self.orgs.require(_org_id(request))))

    async def patch_org(self, request: Request) -> Response:
        """``PATCH /v1/admin/orgs/{orgId}`` ``{"name"?, "suspended"?}``."""
        who = await self.caller(request)
        org_id = _org_id(request)
        body = await _object(request, self.max_body)
        _known(body, ("name", "suspended"))
        name = _text(body, "name", default="") if "name" in body else None
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
        org_id = _org_id(request)
        now = self.clock()
        fields = _key_fields(await _object(request, self.max_body), now)
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
        org_id = _org_id(request)
        limit, before = _page_args(request)
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
        key_id = _key_id(str(request.path_params["keyId"]))
        found = await self.keys.revoke(key_id, actor=who.actor, address=who.address)
        if found is None:
            raise NotFound(f"No key has the id {key_id!r}.")
        return json_response(key_json(found, None, self.clock()))

    async def rotate_key(self, request: Request) -> Response:
        """``POST /v1/admin/keys/{keyId}/rotate`` ``{"overlapSeconds"}``: a new secret;
        the old one works until the overlap ends (default 24 h; 0 revokes it now)."""
        who = await self.caller(request)
        key_id = _key_id(str(request.path_params["keyId"]))
        body = await _object(request, self.max_body, empty_ok=True)
        _known(body, ("overlapSeconds",))
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
        org_id = _org_id(request)
        await self.orgs.require(org_id)
        overrides = await self.overrides.list(org_id)
        body = effective_limits(self.policy.buckets, self.policy.pools, overrides)
        return json_response({"org": org_id, **body})

    async def _override_target(self, request: Request, key_id: Any) -> tuple[str, str, str | None]:
        org_id = _org_id(request)
        bucket = str(request.path_params["bucket"])
        check_limit_name(self.policy.buckets, self.policy.pools, bucket)
        await self.orgs.require(org_id)
        if key_id is not None:
            if not isinstance(key_id, str):
                raise ValidationFailed("keyId must be a key id (key_…).")
            if not _KEY_ID.fullmatch(key_id) or await self.keys.get(key_id, org=org_id) is None:
                raise NotFound(f"The org {org_id!r} has no key {key_id[:80]!r}.")
        return org_id, bucket, key_id

    async def put_limit(self, request: Request) -> Response:
        """``PUT /v1/admin/orgs/{orgId}/limits/{bucket}`` ``{"limit", "keyId"?,
        "environment"?}``: ``{bucket}`` names a bucket or a pool of the policy;
        ``environment`` (not with ``keyId``: a key has its own) sets the org's override for
        that environment alone."""
        who = await self.caller(request)
        body = await _object(request, self.max_body)
        _known(body, ("limit", "keyId", "environment"))
        limit = json_integer(body.get("limit"))
        if limit is None or not 1 <= limit <= MAX_LIMIT_VALUE:
            raise ValidationFailed(f"limit must be an integer from 1 to {MAX_LIMIT_VALUE}.")
        environment = body.get("environment")
        if environment is not None and environment not in ENVIRONMENTS:
            raise ValidationFailed(
                "environment must be SANDBOX or PRODUCTION (or left out: every one)."
            )
        if environment is not None and body.get("keyId") is not None:
            raise ValidationFailed(_KEY_AND_ENVIRONMENT)
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
        return json_response(_override_json(override))

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
            raise BadRequest(_KEY_AND_ENVIRONMENT)
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
        org_id = _org_id(request)
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
        limit, before = _page_args(request)
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
