"""The platform routes of usage analytics: events in; call counts and catalogue metrics
out, in the call-counts and metrics catalogue shapes (docs/api-shapes.md); and the
OpenAPI document.

Answered behind the gateway, which authenticates the key, applies the rate limits and
puts the caller in ``scope["state"]`` (read with :func:`~tollhouse.http.context.identity_of`).
Every query here is scoped to that identity's org and environment; without one the
answer is 401. Routes (:func:`platform_endpoints`):

* ``POST /v1/events`` — product events (any role; a JSON body);
* ``GET /call-counts/historical/``, ``/call-counts/historical/{label}/`` — roles root and
  manager; ``/call-counts/historical/SCENARIOS/{reco_type}/{name}/`` — also backend
  (trailing slash optional);
* ``GET /v1/analytics/{metric}`` — the metrics catalogue (any role);
* ``GET /v1/analytics/fair-use?timeRange=`` — the caller's fair-use signals (any role;
  ``timeRange`` checked as scoring volume checks it, errors in the envelope);
* ``GET /v1/platform/openapi.json`` — the OpenAPI document, without a key (it describes
  the API, it reveals nothing).

Errors: the metrics catalogue route answers in that shape's own bodies (``{"detail": "…"}``
for 400/404/405 and ``{"detail": [{"loc", "msg", "type"}]}`` for 422, in the wording of
the service it reproduces, checked by :func:`analytics_query`); everything else in the
tollhouse error envelope. The gateway answers its own errors on the catalogue routes as
``{"detail": …}`` too (429: ``{"detail": "Rate limit exceeded"}``, the built-in policy's
``error_format = "detail"``) — see docs/analytics.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response

from tollhouse.analytics import call_counts
from tollhouse.analytics.buckets import floor_to, metric_step
from tollhouse.analytics.catalogue import CATALOGUE, TIME
from tollhouse.analytics.events import ingest, parse_body
from tollhouse.analytics.metrics import run_metric
from tollhouse.errors import BadRequest, Forbidden, StorageError
from tollhouse.fairuse.report import fair_use_report
from tollhouse.http.answers import endpoint, json_response, read_json
from tollhouse.http.context import identity_of
from tollhouse.http.routes import Endpoint, RouteTable, TableApp
from tollhouse.identifiers import LABEL_VALUE
from tollhouse.jobs.volume import check_time_range
from tollhouse.keys.model import Identity
from tollhouse.metering.meter import UsageMeter
from tollhouse.metering.retention import Retention
from tollhouse.openapi import OPENAPI_PATH, build_document
from tollhouse.policy.model import EndpointGroup, Policy

logger = logging.getLogger(__name__)

ANALYTICS_PREFIX = "/v1/analytics/"
FAIR_USE_PATH = ANALYTICS_PREFIX + "fair-use"
#: The metrics catalogue shape's page size bounds.
MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = 50
#: Highest page number (page × page_size must fit a 64-bit SQL OFFSET).
MAX_PAGE = 2**31 - 1
#: Most buckets of a time-series metric (a barchart): ten years of days.
MAX_BARS = 3660
#: The 503 of a route whose usage database is away.
USAGE_UNAVAILABLE = "The usage database is unavailable; retry shortly."


@dataclass(frozen=True, slots=True)
class AnalyticsQuery:
    """The query of ``GET /v1/analytics/{metric}``, checked."""

    start: float
    end: float
    page: int
    page_size: int


def _problem(name: str, msg: str, kind: str) -> dict[str, Any]:
    return {"loc": ["query", name], "msg": msg, "type": kind}


def _aware(name: str, raw: str | None, problems: list[dict[str, Any]]) -> float:
    if raw is None:
        problems.append(_problem(name, "field required", "value_error.missing"))
        return 0.0
    text = raw.strip()
    try:
        if text and text.lstrip("+-").replace(".", "", 1).isdigit() and len(text) < 24:
            return float(text)  # Unix time (UTC)
        moment = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        problems.append(_problem(name, "invalid datetime format", "value_error.datetime"))
        return 0.0
    if moment.tzinfo is None or moment.utcoffset() is None:
        problems.append(
            _problem(
                name,
                "datetime must include a timezone offset (e.g. 2026-01-01T00:00:00Z)",
                "value_error.datetime.timezone",
            )
        )
        return 0.0
    return moment.timestamp()


def _bounded(
    name: str, raw: str | None, default: int, top: int, problems: list[dict[str, Any]]
) -> int:
    if raw is None:
        return default
    text = raw.strip()
    digits = text[1:] if text[:1] in "+-" else text
    # Any length is an integer (a huge one is then out of range, not malformed); the cap
    # only keeps int() below Python's limit on digits.
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 4000):
        problems.append(_problem(name, "value is not a valid integer", "type_error.integer"))
        return default
    value = int(text)
    if value < 1:
        problems.append(
            _problem(
                name, "ensure this value is greater than or equal to 1", "value_error.number.not_ge"
            )
        )
    elif value > top:
        problems.append(
            _problem(
                name,
                f"ensure this value is less than or equal to {top}",
                "value_error.number.not_le",
            )
        )
    return value


def analytics_query(query: Mapping[str, str]) -> AnalyticsQuery | list[dict[str, Any]]:
    """Check the catalogue's query parameters: the query, or every problem found, in the
    ``{"loc", "msg", "type"}`` items of the shape's 422 (parameters in order: time_start,
    time_end, page, page_size).

    ``time_start`` and ``time_end`` are required ISO 8601 date-times with a timezone
    offset (or Unix seconds); ``page`` is 1 to 2³¹−1 (default 1), ``page_size`` 1 to 200
    (default 50).
    """
    problems: list[dict[str, Any]] = []
    start = _aware("time_start", query.get("time_start"), problems)
    end = _aware("time_end", query.get("time_end"), problems)
    page = _bounded("page", query.get("page"), 1, MAX_PAGE, problems)
    page_size = _bounded(
        "page_size", query.get("page_size"), DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, problems
    )
    if problems:
        return problems
    return AnalyticsQuery(start, end, page, page_size)


def _require(identity: Identity, roles: frozenset[str], what: str) -> None:
    if identity.role not in roles:
        raise Forbidden(
            f"This key's role {identity.role!r} may not read {what}; "
            f"allowed roles: {', '.join(sorted(roles))}."
        )


def _groups(policy: Policy | Sequence[EndpointGroup] | None) -> tuple[EndpointGroup, ...]:
    if policy is None:
        return ()
    if isinstance(policy, Policy):
        return policy.endpoint_groups
    return tuple(policy)


class PlatformRoutes:
    """The handlers of the platform routes (see the module's notes).

    Args:
        engine: the database holding usage (schema created by ``create_schema``).
        policy: the policy (or its endpoint groups) — ENDPOINTS keys and descriptions.
        meter: the process's meter; reads flush it first, so a caller sees its own calls.
        retention: what the usage tables keep (chooses rollups, explains gaps).
        clock: wall clock, epoch seconds (injected in tests).
        example_upstream: the bundled example is the upstream (its routes are documented).
        ops: the operations endpoints answer on the same listener (documented here).
    """

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        policy: Policy | Sequence[EndpointGroup] | None = None,
        meter: UsageMeter | None = None,
        retention: Retention | None = None,
        clock: Callable[[], float] = time.time,
        example_upstream: bool = False,
        ops: bool = True,
    ) -> None:
        self.engine = engine
        self.ops = ops
        self.policy = policy if isinstance(policy, Policy) else None
        self.groups = _groups(policy)
        self.meter = meter
        self.kept = retention or Retention()
        self.clock = clock
        self.example_upstream = example_upstream
        self._document: bytes | None = None

    async def _fresh(self) -> None:
        # Read-your-writes within one process; other processes lag by a flush interval.
        meter = self.meter
        if meter is not None and meter.has_pending:
            try:
                await meter.flush()
            except StorageError:
                logger.warning("could not flush usage before a read", exc_info=True)

    async def post_events(self, request: Request) -> Response:
        """Store product events (idempotent per org and event id)."""
        who = identity_of(request.scope)
        body = read_json(await request.body())
        now = datetime.fromtimestamp(self.clock(), UTC)
        events = parse_body(body, now)
        result = await ingest(self.engine, who.org, who.environment, events, now)
        return json_response(
            {
                "received": result.received,
                "inserted": result.inserted,
                "duplicates": result.duplicates,
            }
        )

    @staticmethod
    def _stamps(request: Request) -> tuple[float | None, float | None]:
        q = request.query_params
        return (
            call_counts.parse_timestamp(q.get("start_timestamp"), "start_timestamp"),
            call_counts.parse_timestamp(q.get("end_timestamp"), "end_timestamp"),
        )

    async def historical(self, request: Request) -> Response:
        """Call counts of the caller's org over time (the call-counts shape)."""
        who = identity_of(request.scope)
        _require(who, call_counts.ROLES, "call counts")
        start, end = self._stamps(request)
        await self._fresh()
        body = await call_counts.historical(
            self.engine,
            org=who.org,
            environment=who.environment,
            start=start,
            end=end,
            now=self.clock(),
            retention=self.kept,
        )
        return json_response(body)

    async def by_scenario(self, request: Request) -> Response:
        """Call counts of one scenario over time (the call-counts shape)."""
        who = identity_of(request.scope)
        _require(who, call_counts.SCENARIO_ROLES, "scenario call counts")
        reco_type = str(request.path_params["reco_type"])
        name = str(request.path_params["name"])
        for param, value in (("reco_type", reco_type), ("name", name)):
            problem = LABEL_VALUE.problem(value)
            if problem is not None:
                raise BadRequest(f'path parameter "{param}" {problem}')
        start, end = self._stamps(request)
        await self._fresh()
        body = await call_counts.historical(
            self.engine,
            org=who.org,
            environment=who.environment,
            start=start,
            end=end,
            now=self.clock(),
            retention=self.kept,
            reco_type=reco_type,
            scenario=name,
        )
        return json_response(body)

    async def by_label(self, request: Request) -> Response:
        """Call counts per series of a label, paged (the call-counts shape)."""
        who = identity_of(request.scope)
        _require(who, call_counts.ROLES, "call counts")
        start, end = self._stamps(request)
        amt = call_counts.parse_amt(request.query_params.get("amt"))
        await self._fresh()
        body = await call_counts.historical_by_label(
            self.engine,
            str(request.path_params["label"]),
            org=who.org,
            environment=who.environment,
            start=start,
            end=end,
            now=self.clock(),
            amt=amt,
            cursor=request.query_params.get("cursor"),
            groups=self.groups,
            retention=self.kept,
        )
        return json_response(body)

    async def analytics(self, request: Request) -> Response:
        """One metric of the catalogue over a time range (the metrics catalogue shape)."""
        checked = analytics_query(request.query_params)
        if isinstance(checked, list):
            return json_response({"detail": checked}, 422)
        who = identity_of(request.scope)
        metric = str(request.path_params["metric"])
        definition = CATALOGUE.get(metric)
        if definition is None:
            return json_response({"detail": f"Unknown metric {metric!r}"}, 404)
        start, end = checked.start, checked.end
        if start >= end:
            return json_response({"detail": "time_start must be before time_end"}, 400)
        if definition.group_by == (TIME,):
            step = metric_step(start, end)
            bars = (floor_to(end, step) - floor_to(start, step)) // step + 1
            if bars > MAX_BARS:
                # One bar per bucket: a range of centuries would build millions of them.
                return json_response(
                    {
                        "detail": f"time range too long for {metric}: {bars} daily buckets, "
                        f"at most {MAX_BARS} (about 10 years); narrow time_start..time_end"
                    },
                    400,
                )
        if definition.source != "events":
            await self._fresh()
        body = await run_metric(
            self.engine,
            definition,
            org=who.org,
            environment=who.environment,
            start=start,
            end=end,
            now=self.clock(),
            retention=self.kept,
            page=checked.page,
            page_size=checked.page_size,
        )
        return json_response(body)

    async def fair_use(self, request: Request) -> Response:
        """``GET /v1/analytics/fair-use?timeRange=``: every fair-use signal of the caller's
        org and environment over the range ending now (docs/analytics.md#fair-use)."""
        time_range = check_time_range(request.query_params.get("timeRange"))
        who = identity_of(request.scope)
        rules = self.policy.fair_use if self.policy is not None else ()
        body = await fair_use_report(
            self.engine, rules, who.org, who.environment, time_range, self.clock(), self.meter
        )
        return json_response(body)

    async def openapi_document(self, request: Request) -> Response:
        """tollhouse's OpenAPI 3.1 document: every public route (docs/openapi.md)."""
        if self._document is None:
            self._document = orjson.dumps(
                build_document(self.policy, example_upstream=self.example_upstream, ops=self.ops)
            )
        return Response(self._document, media_type="application/json")

    def endpoints(self) -> list[Endpoint]:
        """The platform routes, for the route table."""

        def get(path: str, handler: Any, group: str, **options: Any) -> Endpoint:
            app = endpoint(handler, unavailable=USAGE_UNAVAILABLE)
            return Endpoint(path, ("GET",), app, group, "platform", **options)

        counts = "/call-counts/historical"
        scenario = counts + "/SCENARIOS/{reco_type}/{name}"
        label = counts + "/{label}"
        return [
            Endpoint(
                "/v1/events",
                ("POST",),
                endpoint(self.post_events, json_body=True, unavailable=USAGE_UNAVAILABLE),
                "events",
                "platform",
            ),
            get(counts + "/", self.historical, "call-counts"),
            get(counts, self.historical, "call-counts", documented=False),
            get(scenario + "/", self.by_scenario, "call-counts"),
            get(scenario, self.by_scenario, "call-counts", documented=False),
            get(label + "/", self.by_label, "call-counts"),
            get(label, self.by_label, "call-counts", documented=False),
            get(FAIR_USE_PATH, self.fair_use, "analytics"),
            get(ANALYTICS_PREFIX + "{metric}", self.analytics, "analytics", error_format="detail"),
            get(OPENAPI_PATH, self.openapi_document, "openapi", keyless=True),
        ]


def create_platform_app(
    *,
    engine: AsyncEngine,
    policy: Policy | Sequence[EndpointGroup] | None = None,
    meter: UsageMeter | None = None,
    retention: Retention | None = None,
    clock: Callable[[], float] = time.time,
    example_upstream: bool = False,
) -> TableApp:
    """The platform routes as an ASGI app of their own (see :class:`PlatformRoutes` for
    the arguments); other paths are a 404 envelope."""
    routes = PlatformRoutes(
        engine=engine,
        policy=policy,
        meter=meter,
        retention=retention,
        clock=clock,
        example_upstream=example_upstream,
    )
    return TableApp(RouteTable(routes.endpoints()))
