"""What the provider API reads and answers: its request bodies, path ids and paging
checked field by field (each refusal names the field, as :mod:`tollhouse.http.admin`'s
routes answer it), and the JSON shapes of an org, a key and a limit override.

Kept apart from the routes (:mod:`tollhouse.http.admin`) so the route set reads as the
API it is; these are plain functions of a request or a body, with no store behind them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from starlette.requests import Request

from tollhouse.cursors import decode_keyset
from tollhouse.errors import BadRequest, NotFound, PayloadTooLarge, ValidationFailed
from tollhouse.http.answers import check_json_type, read_json
from tollhouse.keys.model import ENVIRONMENTS, ROLES, KeyRecord, Role
from tollhouse.keys.orgs import MAX_NAME, ORG_ID, FirstKey, OrgRecord
from tollhouse.limits.overrides import Override

#: Listing page sizes (as ``GET /v1/queue``).
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
#: Longest rotation overlap: 30 days.
MAX_OVERLAP_SECONDS = 30 * 86400
#: Largest ``meta`` of a key, serialised.
MAX_META_BYTES = 4096
#: Largest limit an override may set (a 32-bit column).
MAX_LIMIT_VALUE = 2**31 - 1
KEY_ID = re.compile(r"key_[0-9a-f]{16}")
ENV_ARG = {"SANDBOX": "test", "PRODUCTION": "live"}
KEY_AND_ENVIRONMENT = (
    "environment and keyId exclude each other: a key's override applies to the key's own "
    "environment; leave environment out."
)


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def org_json(org: OrgRecord) -> dict[str, Any]:
    """An org as the provider API shows it."""
    return {
        "id": org.id,
        "name": org.name,
        "createdAt": iso(org.created_at),
        "suspended": org.suspended,
        "suspendedAt": iso(org.suspended_at),
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
            "createdAt": iso(key.created_at),
            "expiresAt": iso(key.expires_at),
            "revokedAt": iso(key.revoked_at),
            "lastUsedAt": iso(key.last_used_at),
            "meta": key.meta,
        }
    )
    return out


def override_json(o: Override) -> dict[str, Any]:
    return {
        "org": o.org,
        "bucket": o.bucket,
        "keyId": o.key_id,
        "environment": o.environment,
        "limit": o.limit,
        "updatedAt": iso(o.updated_at),
    }


# --- reading requests ---------------------------------------------------------------------


def page_args(request: Request) -> tuple[int, tuple[datetime, str] | None]:
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


async def read_object(request: Request, max_body: int, *, empty_ok: bool = False) -> dict[str, Any]:
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


def check_known(body: dict[str, Any], allowed: tuple[str, ...], where: str = "") -> None:
    extra = sorted(set(body) - set(allowed))
    if extra:
        raise ValidationFailed(
            f"{where}unknown field(s) {', '.join(extra)}; allowed: {', '.join(allowed)}."
        )


def read_text(body: dict[str, Any], name: str, *, where: str = "", default: str = "") -> str:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > MAX_NAME or "\x00" in value:
        raise ValidationFailed(
            f"{where}{name} must be a string of at most {MAX_NAME} characters (no NUL)."
        )
    return value


def read_role(body: dict[str, Any], where: str = "") -> Role:
    value = body.get("role", "member")
    if value not in ROLES:
        raise ValidationFailed(f"{where}role must be one of {', '.join(ROLES)}.")
    return cast(Role, value)


def read_environment(body: dict[str, Any], where: str = "") -> str:
    value = body.get("environment")
    if value not in ENVIRONMENTS:
        raise ValidationFailed(f"{where}environment must be SANDBOX or PRODUCTION.")
    return ENV_ARG[cast(str, value)]


def read_expires(body: dict[str, Any], now: datetime, where: str = "") -> datetime | None:
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


def read_meta(body: dict[str, Any], where: str = "") -> dict[str, Any] | None:
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


def read_key_fields(body: dict[str, Any], now: datetime, where: str = "") -> FirstKey:
    check_known(body, ("environment", "role", "name", "expiresAt", "meta"), where)
    return FirstKey(
        environment=read_environment(body, where),
        role=read_role(body, where),
        name=read_text(body, "name", where=where),
        expires_at=read_expires(body, now, where),
        meta=read_meta(body, where),
    )


def org_id_of(request: Request) -> str:
    org_id = str(request.path_params["orgId"])
    if not ORG_ID.fullmatch(org_id):
        raise NotFound(f"No org has the id {org_id[:80]!r}.")
    return org_id


def key_id_of(raw: str) -> str:
    if not KEY_ID.fullmatch(raw):
        raise NotFound(f"No key has the id {raw[:80]!r}.")
    return raw


def address_of(request: Request) -> str | None:
    """The caller's address (after trusted proxies), for the audit log."""
    client = request.scope.get("client")
    return str(client[0]) if client else None
