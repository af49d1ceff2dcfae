"""The platform routes of usage analytics (FastAPI): events in; call counts and catalogue
metrics out, in the call-counts and metrics catalogue shapes (docs/api-shapes.md).

Mounted behind the gateway, which authenticates the key, applies the rate limits and
puts the caller in ``scope["state"]["identity"]`` (a
:class:`~tollhouse.keys.model.Identity`) and ``scope["state"]["request_id"]``. Every
query here is scoped to that identity's org and environment; without one the answer is
401. Routes:

* ``POST /v1/events`` — product events (any role);
* ``GET /call-counts/historical/``, ``/call-counts/historical/{label}/`` — roles root and
  manager; ``/call-counts/historical/SCENARIOS/{reco_type}/{name}/`` — also backend
  (trailing slash optional);
* ``GET /v1/analytics/{metric}`` — the metrics catalogue (any role).

Errors: the metrics catalogue routes answer in that shape's own bodies (``{"detail": "…"}``
for 400/404 and ``{"detail": [{"loc", "msg", "type"}]}`` for 422, pydantic-v1 wording);
everything else in the tollhouse error envelope. The gateway answers its own errors on the
catalogue routes as ``{"detail": …}`` too (429: ``{"detail": "Rate limit exceeded"}``,
the built-in policy's ``error_format = "detail"``) — see docs/analytics.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import AwareDatetime
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.exceptions import HTTPException as StarletteHTTPException

from tollhouse.analytics import call_counts
from tollhouse.analytics.buckets import floor_to, metric_step
from tollhouse.analytics.catalogue import CATALOGUE, TIME
from tollhouse.analytics.events import ingest, parse_body
from tollhouse.analytics.metrics import run_metric
from tollhouse.errors import (
    ApiError,
    BadRequest,
    Forbidden,
    ServiceUnavailable,
    StorageError,
    Unauthorized,
    ValidationFailed,
    error_body,
)
from tollhouse.http.gateway import new_request_id
from tollhouse.keys.model import Identity
from tollhouse.metering.meter import UsageMeter
from tollhouse.metering.retention import Retention
from tollhouse.openapi import OPENAPI_PATH, build_document
from tollhouse.policy.model import EndpointGroup, Policy

logger = logging.getLogger(__name__)

ANALYTICS_PREFIX = "/v1/analytics/"
#: The metrics catalogue shape's page size bounds.
MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = 50
#: Highest page number (page × page_size must fit a 64-bit SQL OFFSET).
MAX_PAGE = 2**31 - 1
#: Most buckets of a time-series metric (a barchart): ten years of days.
MAX_BARS = 3660

# Pydantic v2 error types → the pydantic v1 wording of the metrics catalogue shape.
_V1_ERRORS: dict[str, tuple[str, str]] = {
    "less_than_equal": (
        "ensure this value is less than or equal to {le}",
        "value_error.number.not_le",
    ),
    "greater_than_equal": (
        "ensure this value is greater than or equal to {ge}",
        "value_error.number.not_ge",
    ),
    "int_parsing": ("value is not a valid integer", "type_error.integer"),
    "int_type": ("value is not a valid integer", "type_error.integer"),
    "int_from_float": ("value is not a valid integer", "type_error.integer"),
    "missing": ("field required", "value_error.missing"),
    "datetime_parsing": ("invalid datetime format", "value_error.datetime"),
    "datetime_from_date_parsing": ("invalid datetime format", "value_error.datetime"),
    "datetime_type": ("invalid datetime format", "value_error.datetime"),
    "timezone_aware": (
        "datetime must include a timezone offset (e.g. 2026-01-01T00:00:00Z)",
        "value_error.datetime.timezone",
    ),
}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def _state(request: Request, name: str) -> Any:
    # The gateway puts a dict in scope["state"]; tolerate an attribute-style state too.
    state = request.scope.get("state")
    if isinstance(state, Mapping):
        return state.get(name)
    return getattr(state, name, None)


def _request_id(request: Request) -> str:
    found = _state(request, "request_id")
    return found if isinstance(found, str) else new_request_id()


def identity_of(request: Request) -> Identity:
    """The caller the gateway authenticated.

    Raises:
        Unauthorized: no identity in ``scope["state"]`` (the app is not behind the gateway).
    """
    found = _state(request, "identity")
    if not isinstance(found, Identity):
        raise Unauthorized(
            'No API key: send "Authorization: Bearer sk_test_…" (or sk_live_…) or '
            '"X-API-Key: sk_…".'
        )
    return found


def _require(identity: Identity, roles: frozenset[str], what: str) -> None:
    if identity.role not in roles:
        raise Forbidden(
            f"This key's role {identity.role!r} may not read {what}; "
            f"allowed roles: {', '.join(sorted(roles))}."
        )


def _v1_error(err: Any) -> dict[str, Any]:
    kind = str(err.get("type", ""))
    loc = list(err.get("loc", ()))
    found = _V1_ERRORS.get(kind)
    if found is None:
        return {"loc": loc, "msg": str(err.get("msg", "")), "type": kind}
    msg, v1 = found
    ctx = err.get("ctx") or {}
    return {"loc": loc, "msg": msg.format(**{k: v for k, v in ctx.items()}), "type": v1}


def _groups(policy: Policy | Sequence[EndpointGroup] | None) -> tuple[EndpointGroup, ...]:
    if policy is None:
        return ()
    if isinstance(policy, Policy):
        return policy.endpoint_groups
    return tuple(policy)


def create_platform_app(
    *,
    engine: AsyncEngine,
    policy: Policy | Sequence[EndpointGroup] | None = None,
    meter: UsageMeter | None = None,
    retention: Retention | None = None,
    clock: Callable[[], float] = time.time,
    example_upstream: bool = False,
) -> FastAPI:
    """The usage platform routes as an ASGI app, to mount behind the gateway.

    Args:
        engine: the database holding usage (schema created by ``create_schema``).
        policy: the policy (or its endpoint groups) — ENDPOINTS keys and descriptions.
        meter: the process's meter; reads flush it first, so a caller sees its own calls.
        retention: what the usage tables keep (chooses rollups, explains gaps).
        clock: wall clock, epoch seconds (injected in tests).
        example_upstream: the bundled example is the upstream (its routes are documented).
    """
    groups = _groups(policy)
    kept = retention or Retention()
    app = FastAPI(
        title="tollhouse platform",
        docs_url=None,
        redoc_url=None,
        # The full document (every public route) is served below, at OPENAPI_PATH.
        openapi_url=None,
    )
    document: dict[str, Any] = {}

    async def fresh() -> None:
        # Read-your-writes within one process; other processes lag by a flush interval.
        if meter is not None and meter.has_pending:
            try:
                await meter.flush()
            except StorageError:
                logger.warning("could not flush usage before a read", exc_info=True)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return _json(exc.body(_request_id(request)), exc.status, exc.headers)

    @app.exception_handler(StorageError)
    async def storage_error(request: Request, exc: StorageError) -> Response:
        logger.error("usage storage failed", extra={"error": str(exc)})
        err = ServiceUnavailable("The usage database is unavailable; retry shortly.")
        return _json(err.body(_request_id(request)), err.status, {"Retry-After": "1"})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # No route (or method) here: ``{"detail"}`` under the catalogue's prefix, else the
        # envelope.
        headers = dict(exc.headers) if exc.headers else None
        if request.url.path.startswith(ANALYTICS_PREFIX):
            return _json({"detail": exc.detail}, exc.status_code, headers)
        name = HTTPStatus(exc.status_code).name
        message = f"{exc.detail}: {request.method} {request.url.path}"
        body = error_body(
            exc.status_code, name, name.lower().replace("_", "-"), message, _request_id(request)
        )
        return _json(body, exc.status_code, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = list(exc.errors())
        if request.url.path.startswith(ANALYTICS_PREFIX):
            return _json({"detail": [_v1_error(e) for e in errors]}, 422)
        first = _v1_error(errors[0]) if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"][1:]) or "request"
        err = ValidationFailed(f"{where}: {first['msg']}")
        return _json(err.body(_request_id(request)), err.status)

    @app.post("/v1/events")
    async def post_events(request: Request) -> Response:
        """Store product events (idempotent per org and event id)."""
        who = identity_of(request)
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValidationFailed(f"The body is not valid JSON: {exc}") from None
        now = datetime.fromtimestamp(clock(), UTC)
        events = parse_body(body, now)
        result = await ingest(engine, who.org, who.environment, events, now)
        return _json(
            {
                "received": result.received,
                "inserted": result.inserted,
                "duplicates": result.duplicates,
            }
        )

    def _stamps(request: Request) -> tuple[float | None, float | None]:
        q = request.query_params
        return (
            call_counts.parse_timestamp(q.get("start_timestamp"), "start_timestamp"),
            call_counts.parse_timestamp(q.get("end_timestamp"), "end_timestamp"),
        )

    @app.get("/call-counts/historical/", include_in_schema=True)
    @app.get("/call-counts/historical", include_in_schema=False)
    async def historical(request: Request) -> Response:
        """Call counts of the caller's org over time (the call-counts shape)."""
        who = identity_of(request)
        _require(who, call_counts.ROLES, "call counts")
        start, end = _stamps(request)
        await fresh()
        body = await call_counts.historical(
            engine,
            org=who.org,
            environment=who.environment,
            start=start,
            end=end,
            now=clock(),
            retention=kept,
        )
        return _json(body)

    @app.get("/call-counts/historical/SCENARIOS/{reco_type}/{name}/", include_in_schema=True)
    @app.get("/call-counts/historical/SCENARIOS/{reco_type}/{name}", include_in_schema=False)
    async def by_scenario(request: Request, reco_type: str, name: str) -> Response:
        """Call counts of one scenario over time (the call-counts shape)."""
        who = identity_of(request)
        _require(who, call_counts.SCENARIO_ROLES, "scenario call counts")
        if "\x00" in reco_type or "\x00" in name:
            raise BadRequest("reco_type and name must not contain NUL (%00) characters.")
        start, end = _stamps(request)
        await fresh()
        body = await call_counts.historical(
            engine,
            org=who.org,
            environment=who.environment,
            start=start,
            end=end,
            now=clock(),
            retention=kept,
            reco_type=reco_type,
            scenario=name,
        )
        return _json(body)

    @app.get("/call-counts/historical/{label}/", include_in_schema=True)
    @app.get("/call-counts/historical/{label}", include_in_schema=False)
    async def by_label(request: Request, label: str) -> Response:
        """Call counts per series of a label, paged (the call-counts shape)."""
        who = identity_of(request)
        _require(who, call_counts.ROLES, "call counts")
        start, end = _stamps(request)
        amt = call_counts.parse_amt(request.query_params.get("amt"))
        await fresh()
        body = await call_counts.historical_by_label(
            engine,
            label,
            org=who.org,
            environment=who.environment,
            start=start,
            end=end,
            now=clock(),
            amt=amt,
            cursor=request.query_params.get("cursor") or None,
            groups=groups,
            retention=kept,
        )
        return _json(body)

    @app.get("/v1/analytics/{metric}")
    async def analytics(
        request: Request,
        metric: str,
        time_start: Annotated[AwareDatetime, Query()],
        time_end: Annotated[AwareDatetime, Query()],
        page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
        page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    ) -> Response:
        """One metric of the catalogue over a time range (the metrics catalogue shape)."""
        who = identity_of(request)
        definition = CATALOGUE.get(metric)
        if definition is None:
            return _json({"detail": f"Unknown metric {metric!r}"}, 404)
        start, end = time_start.timestamp(), time_end.timestamp()
        if start >= end:
            return _json({"detail": "time_start must be before time_end"}, 400)
        if definition.group_by == (TIME,):
            step = metric_step(start, end)
            bars = (floor_to(end, step) - floor_to(start, step)) // step + 1
            if bars > MAX_BARS:
                # One bar per bucket: a range of centuries would build millions of them.
                return _json(
                    {
                        "detail": f"time range too long for {metric}: {bars} daily buckets, "
                        f"at most {MAX_BARS} (about 10 years); narrow time_start..time_end"
                    },
                    400,
                )
        if definition.source != "events":
            await fresh()
        body = await run_metric(
            engine,
            definition,
            org=who.org,
            environment=who.environment,
            start=start,
            end=end,
            now=clock(),
            retention=kept,
            page=page,
            page_size=page_size,
        )
        return _json(body)

    @app.get(OPENAPI_PATH, include_in_schema=False)
    async def openapi_document(request: Request) -> Response:
        """tollhouse's OpenAPI 3.1 document: every public route (docs/openapi.md)."""
        if not document:
            document.update(
                build_document(
                    app.openapi(),
                    policy if isinstance(policy, Policy) else None,
                    example_upstream=example_upstream,
                )
            )
        return _json(document)

    return app
