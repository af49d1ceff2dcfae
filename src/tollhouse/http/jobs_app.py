"""The jobs routes: async routes answered with 202, polling, batches, webhook deliveries
and scoring volume (the scoring API and scoring-volume shapes, docs/api-shapes.md), for
requests the gateway has already admitted (:class:`JobsRoutes` gives the route table's
endpoints; :func:`create_jobs_app` serves them on their own).

The gateway puts the caller's :class:`~tollhouse.keys.model.Identity` in
``scope["state"]["identity"]`` (and ``request_id``) before calling a route. Every read is
scoped to the identity's org: another org's job id is a 404, exactly like an unknown one.
A submitted body must be JSON (415 for another ``Content-Type``) and pass the async
route's own ``validator``; its ``id_field`` names what ``…/application/{id}`` looks up.

For each async route of the policy, e.g. ``POST /v1/score``::

    POST /v1/score                              → 202 {scoringJobId, status, queuePosition,
                                                       estimatedWaitSeconds}
    POST /v1/score/batch   {"items": [1..100]}  → 202 {results: [{index, …202 body}|{index,
                                                       status: "error", error}], accepted,
                                                       rejected}
    GET  /v1/score?ids=a,b,c                    → {data: [up to 100 jobs], notFound: [ids]}
    GET  /v1/score/{scoringJobId}               → the job (status, result or error, position)
    GET  /v1/score/application/{applicationId}  → the application's latest job

and always::

    GET /v1/queue?status=&limit=&cursor=        → the org's queue counters and jobs, newest
                                                  first (keyset paging)
    GET /v1/webhooks/deliveries?jobId=          → the org's deliveries and their attempts
    GET /v1/analytics/scoring-volume?timeRange= → the scoring-volume shape

``Idempotency-Key`` on the POSTs: the same org and key give the same job and the same
202 body (with ``Idempotent-Replayed: true``); the key with another body is a 422.
Identifiers in headers, paths and queries (``Idempotency-Key``, ``scoringJobId``,
``applicationId``, ``jobId``, ``cursor``) follow their rules
(:mod:`tollhouse.identifiers`): a 400 naming them otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any, cast

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tollhouse.cursors import decode_keyset, encode_keyset
from tollhouse.errors import (
    ApiError,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    ValidationFailed,
)
from tollhouse.example import bodies
from tollhouse.http.answers import endpoint, json_response
from tollhouse.http.asgi import ASGIApp
from tollhouse.http.context import identity_of, request_id_of
from tollhouse.http.routes import Endpoint, RouteTable, TableApp
from tollhouse.identifiers import (
    APPLICATION_ID,
    IDEMPOTENCY_KEY,
    SCORING_JOB_ID,
    Rule,
)
from tollhouse.jobs.eta import estimate_wait
from tollhouse.jobs.model import Enqueued, IdempotencyKeyReused, NewJob, WireStatus, utc_now
from tollhouse.jobs.queue import Clock, JobQueue
from tollhouse.jobs.shapes import MAX_STATUS_IDS, STATUS_ID_PATTERN, accepted_json, job_json
from tollhouse.jobs.volume import CACHE_CONTROL, check_time_range, volume_body, window
from tollhouse.jobs.webhook_store import WebhookStore
from tollhouse.jobs.webhooks import delivery_json
from tollhouse.json_reader import read_object
from tollhouse.keys.model import Identity
from tollhouse.policy.model import AsyncRoute, Policy

logger = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "idempotency-key"
REPLAYED_HEADER = "Idempotent-Replayed"
DELIVERIES_PATH = "/v1/webhooks/deliveries"
QUEUE_PATH = "/v1/queue"
#: ``GET /v1/queue``: the wire statuses it filters on, and its page sizes.
QUEUE_STATUSES = ("queued", "running", "completed", "failed")
QUEUE_DEFAULT_LIMIT = 20
QUEUE_MAX_LIMIT = 100
VOLUME_PATH = "/v1/analytics/scoring-volume"
_STATUS_ID = re.compile(STATUS_ID_PATTERN)


class IdempotencyConflict(ApiError):
    """An Idempotency-Key reused with another request body (IETF draft: 422)."""

    status, code, slug = 422, "IDEMPOTENCY_KEY_REUSED", "idempotency-key-reused"


#: The 503 of a jobs route whose database is away.
JOBS_UNAVAILABLE = "The job store is unavailable; retry shortly."
_json = json_response


def _request_id(request: Request) -> str:
    return request_id_of(request.scope)


def _identity(request: Request) -> Identity:
    return identity_of(request.scope)


def _queue_limit(raw: str | None) -> int:
    if raw is None:
        return QUEUE_DEFAULT_LIMIT
    problem = BadRequest(
        f'query parameter "limit" must be an integer from 1 to {QUEUE_MAX_LIMIT} '
        f"(default {QUEUE_DEFAULT_LIMIT}); got {raw[:40]!r}"
    )
    if not raw.isascii() or not raw.isdigit() or len(raw) > 4:
        raise problem
    limit = int(raw)
    if not 1 <= limit <= QUEUE_MAX_LIMIT:
        raise problem
    return limit


def status_ids(values: list[str]) -> list[str]:
    """The job ids of ``GET /v1/score?ids=a,b,c`` (the parameter may also repeat), each
    once, in the order given.

    Raises:
        BadRequest: none given, more than :data:`MAX_STATUS_IDS`, or one that is empty or
            not 1–64 letters, digits, ``_`` or ``-`` (no job id looks otherwise).
    """
    wanted = f"1 to {MAX_STATUS_IDS} scoring job ids, comma-separated"
    given = [part for value in values for part in value.split(",")]
    if not values or given == [""]:
        raise BadRequest(f'query parameter "ids" is required: {wanted}')
    if len(given) > MAX_STATUS_IDS:
        raise BadRequest(f'query parameter "ids" takes {wanted}; got {len(given)}')
    for part in given:
        if _STATUS_ID.fullmatch(part) is None:
            raise BadRequest(
                f'query parameter "ids" takes {wanted}; {part[:40]!r} is not a scoring job id'
            )
    return list(dict.fromkeys(given))


def _request_hash(route: str, body: dict[str, Any]) -> str:
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(route.encode() + b"\n" + canonical).hexdigest()


def _idempotency_key(request: Request) -> str | None:
    raw = request.headers.get(IDEMPOTENCY_HEADER)
    if raw is None:
        return None
    key = raw.strip()
    problem = IDEMPOTENCY_KEY.problem(key)
    if problem is not None:
        raise BadRequest(f'header "Idempotency-Key" {problem}')
    return key


def _path_id(request: Request, name: str, rule: Rule) -> str:
    """A path parameter checked against its rule (400 naming it)."""
    value = str(request.path_params[name])
    problem = rule.problem(value)
    if problem is not None:
        raise BadRequest(f'path parameter "{name}" {problem}')
    return value


class _AsyncRouteApi:
    """The endpoints of one async route."""

    def __init__(self, route: AsyncRoute, queue: JobQueue) -> None:
        self.route = route
        self.queue = queue
        self.path = route.route.split()[-1].rstrip("/")
        # The route's own rules (the policy's validator and id field): "score" checks the
        # scoring API shape's score body as the example upstream does; "object" takes any
        # JSON object.
        self.score_body = route.validator == "score"
        self.id_field = route.id_field

    def _new_job(
        self,
        identity: Identity,
        body: Any,
        key: str | None,
        request_id: str,
    ) -> NewJob:
        if not isinstance(body, dict):
            raise ValidationFailed("each item must be a JSON object")
        if self.score_body:
            bodies.score_request(body)  # raises ValidationFailed naming the field
        application_id: str | None = None
        if self.id_field:
            found = body.get(self.id_field)
            if isinstance(found, str) and found:
                problem = APPLICATION_ID.problem(found)
                if problem is not None:
                    raise ValidationFailed(f'field "{self.id_field}" {problem}')
                application_id = found
        return NewJob(
            org=identity.org,
            route=self.route.route,
            payload=body,
            environment=identity.environment,
            tenant=identity.tenant,
            application_id=application_id,
            idempotency_key=key,
            request_hash=_request_hash(self.route.route, body) if key is not None else None,
            request_id=request_id,
        )

    async def _enqueue(self, new: list[NewJob]) -> list[Enqueued]:
        try:
            return await self.queue.enqueue(new)
        except IdempotencyKeyReused as exc:
            raise IdempotencyConflict(str(exc)) from None

    async def submit(self, request: Request) -> Response:
        identity = _identity(request)
        key = _idempotency_key(request)
        body = read_object(await request.body())
        new = self._new_job(identity, body, key, _request_id(request))
        [done] = await self._enqueue([new])
        headers = {"Location": f"{self.path}/{done.job.id}"}
        if not done.created:
            headers[REPLAYED_HEADER] = "true"
        return _json(accepted_json(done.job, done.standing), 202, headers)

    async def submit_batch(self, request: Request) -> Response:
        identity = _identity(request)
        key = _idempotency_key(request)
        request_id = _request_id(request)
        items = bodies.batch_items(read_object(await request.body()))
        results: list[dict[str, Any] | None] = [None] * len(items)
        new: list[NewJob] = []
        where: list[int] = []
        first_error: tuple[int, ApiError] | None = None
        for index, item in enumerate(items):
            try:
                item_key = f"{key}#{index}" if key is not None else None
                new.append(self._new_job(identity, item, item_key, request_id))
                where.append(index)
            except ApiError as exc:
                first_error = first_error or (index, exc)
                results[index] = {
                    "index": index,
                    "status": "error",
                    "error": exc.body(request_id)["error"],
                }
        if not new:
            assert first_error is not None
            index, problem = first_error
            raise ValidationFailed(f"items[{index}]: {problem.message}; no item was accepted")
        replayed = False
        for index, done in zip(where, await self._enqueue(new), strict=True):
            replayed = replayed or not done.created
            results[index] = {"index": index, **accepted_json(done.job, done.standing)}
        headers = {REPLAYED_HEADER: "true"} if replayed else None
        body = {"results": results, "accepted": len(new), "rejected": len(items) - len(new)}
        return _json(body, 202, headers)

    async def get(self, request: Request) -> Response:
        identity = _identity(request)
        if request.path_params["scoringJobId"] == "batch":
            raise MethodNotAllowed(f"{self.path}/batch takes POST only", headers={"Allow": "POST"})
        job_id = _path_id(request, "scoringJobId", SCORING_JOB_ID)
        job = await self.queue.get(identity.org, job_id, environment=identity.environment)
        if job is None:
            raise NotFound(f'scoring job "{job_id}" not found')
        return await self._job_response(job)

    async def statuses(self, request: Request) -> Response:
        """``GET /v1/score?ids=a,b,c``: up to 100 jobs in one call, in the order asked;
        ids the caller's org and environment have no job of are listed in ``notFound``
        (another org's job is not found, exactly like an unknown one)."""
        identity = _identity(request)
        ids = status_ids(request.query_params.getlist("ids"))
        found = await self.queue.get_many(identity.org, ids, environment=identity.environment)
        known = {j.id for j in found.jobs}
        body = {
            "data": [job_json(j, found.standings.get(j.id)) for j in found.jobs],
            "notFound": [i for i in ids if i not in known],
        }
        return _json(body)

    async def by_application(self, request: Request) -> Response:
        identity = _identity(request)
        application_id = _path_id(request, "applicationId", APPLICATION_ID)
        job = await self.queue.latest_for_application(
            identity.org, application_id, environment=identity.environment
        )
        if job is None:
            raise NotFound(f'application "{application_id}" has no scoring job')
        return await self._job_response(job)

    async def _job_response(self, job: Any) -> Response:
        standing = None
        if job.state == "queued":
            standing = await self.queue.standing(job)
            if standing is None:  # it left the queue meanwhile: show where it is now
                job = await self.queue.get(job.org, job.id, environment=job.environment) or job
        return _json(job_json(job, standing))

    def endpoints(self) -> list[Endpoint]:
        """The route's endpoints (submit, many jobs' status, batch, by application, one
        job), most specific first."""
        method = self.route.route.split()[0].split("/")[0].upper()

        def jobs(path: str, handler: Any, verb: str, json_body: bool = False) -> Endpoint:
            app = endpoint(handler, json_body=json_body, unavailable=JOBS_UNAVAILABLE)
            return Endpoint(path, (verb,), app, "jobs", "jobs")

        found = [
            jobs(self.path, self.submit, method, json_body=True),
            jobs(self.path + "/batch", self.submit_batch, "POST", json_body=True),
            jobs(self.path + "/application/{applicationId}", self.by_application, "GET"),
            jobs(self.path + "/{scoringJobId}", self.get, "GET"),
        ]
        if method != "GET":
            # Many jobs' status in one call, on the route's own path.
            found.insert(1, jobs(self.path, self.statuses, "GET"))
        return found


class JobsRoutes:
    """The jobs routes (see the module's notes); :meth:`endpoints` for the route table."""

    def __init__(
        self,
        *,
        queue: JobQueue,
        policy: Policy,
        webhooks: WebhookStore | None,
        clock: Clock,
    ) -> None:
        self.queue = queue
        self.policy = policy
        self.webhooks = webhooks
        self.clock = clock

    def endpoints(self) -> list[Endpoint]:
        """Every async route's endpoints, the queue, deliveries and scoring volume."""
        found: list[Endpoint] = []
        for async_route in self.policy.async_routes:
            found += _AsyncRouteApi(async_route, self.queue).endpoints()

        def get(path: str, handler: Any, group: str) -> Endpoint:
            app = endpoint(handler, unavailable=JOBS_UNAVAILABLE)
            return Endpoint(path, ("GET",), app, group, "jobs")

        found.append(get(DELIVERIES_PATH, self.deliveries, "webhooks"))
        found.append(get(VOLUME_PATH, self.scoring_volume, "analytics"))
        found.append(get(QUEUE_PATH, self.queue_page, "queue"))
        return found

    async def deliveries(self, request: Request) -> Response:
        """``GET /v1/webhooks/deliveries?jobId=``: the org's deliveries, newest first."""
        identity = _identity(request)
        job_id = request.query_params.get("jobId")
        if job_id is not None:  # empty too: refused by the rule
            problem = SCORING_JOB_ID.problem(job_id)
            if problem is not None:
                raise BadRequest(f'query parameter "jobId" {problem}')
        found = (
            await self.webhooks.deliveries(identity.org, job_id, environment=identity.environment)
            if self.webhooks is not None
            else []
        )
        return _json({"data": [delivery_json(d) for d in found]})

    async def queue_page(self, request: Request) -> Response:
        """``GET /v1/queue?status=&limit=&cursor=``: the org's queue counters and its jobs,
        newest first, with keyset paging."""
        identity = _identity(request)
        params = request.query_params
        status = params.get("status")
        if status is not None and status not in QUEUE_STATUSES:
            raise BadRequest(
                f'query parameter "status" must be one of {", ".join(QUEUE_STATUSES)}; '
                f"got {status[:40]!r}"
            )
        limit = _queue_limit(params.get("limit"))
        cursor = params.get("cursor")
        before = decode_keyset(cursor) if cursor is not None else None
        counters = await self.queue.org_counters(identity.org, environment=identity.environment)
        found = await self.queue.page(
            identity.org,
            environment=identity.environment,
            status=cast(WireStatus | None, status),
            limit=limit,
            before=before,
        )
        cap = counters.cap if counters.cap is not None else self.queue.settings.default_cap
        processing = (
            counters.avg_seconds
            if counters.avg_seconds is not None
            else self.queue.settings.default_processing_seconds
        )
        wait = estimate_wait(counters.queued + 1, counters.running, cap, processing)
        quoted = float(wait) if await self.queue.workers_running() else None
        mean = round(counters.avg_seconds, 3) if counters.avg_seconds is not None else None
        body = {
            "queue": {
                "queued": counters.queued,
                "running": counters.running,
                "cap": cap,
                "meanProcessingSeconds": mean,
                "estimatedWaitSeconds": quoted,
            },
            "data": [job_json(j, found.standings.get(j.id)) for j in found.jobs],
            "hasMore": found.has_more,
            "nextCursor": encode_keyset(found.jobs[-1].created_at, found.jobs[-1].id)
            if found.has_more
            else None,
        }
        return _json(body)

    async def scoring_volume(self, request: Request) -> Response:
        """``GET /v1/analytics/scoring-volume?timeRange=`` (the scoring-volume shape)."""
        identity = _identity(request)
        time_range = check_time_range(request.query_params.get("timeRange"))
        start, end, granularity = window(time_range, self.clock())
        counts = await self.queue.volume(
            identity.org, start, end, granularity, environment=identity.environment
        )
        return _json(
            volume_body(start, end, granularity, counts),
            headers={"Cache-Control": CACHE_CONTROL},
        )


def create_jobs_app(
    *,
    queue: JobQueue,
    policy: Policy,
    webhooks: WebhookStore | None = None,
    fallback: ASGIApp | None = None,
    clock: Clock = utc_now,
) -> TableApp:
    """The jobs ASGI app for ``policy``'s async routes.

    Args:
        queue: the job queue (:func:`tollhouse.jobs.open_queue`).
        policy: its ``async_routes`` decide which paths are served.
        webhooks: for ``GET /v1/webhooks/deliveries``; made on the queue's engine when
            None and the queue has one.
        fallback: the ASGI app for every other request (the upstream); None answers 404.
        clock: for the scoring-volume period (tests).

    Returns:
        A raw ASGI app serving the jobs routes on their own (behind the gateway the
        route table holds them); it expects ``scope["state"]["identity"]`` set by the
        gateway.
    """
    if webhooks is None:
        engine = getattr(queue, "engine", None)
        if engine is not None:
            webhooks = WebhookStore(engine)
    routes = JobsRoutes(queue=queue, policy=policy, webhooks=webhooks, clock=clock)
    return TableApp(RouteTable(routes.endpoints()), fallback)
