"""The jobs app: async routes answered with 202, polling, batches, webhook deliveries
and scoring volume (seeds 000 and 004), for requests the gateway has already admitted.

The gateway puts the caller's :class:`~tollhouse.keys.model.Identity` in
``scope["state"]["identity"]`` (and ``request_id``) before calling this app. Every read is
scoped to the identity's org: another org's job id is a 404, exactly like an unknown one.

For each async route of the policy, e.g. ``POST /v1/score``::

    POST /v1/score                              → 202 {scoringJobId, status, queuePosition,
                                                       estimatedWaitSeconds}
    POST /v1/score/batch   {"items": [1..100]}  → 202 {results: [{index, …202 body}|{index,
                                                       status: "error", error}], accepted,
                                                       rejected}
    GET  /v1/score/{scoringJobId}               → the job (status, result or error, position)
    GET  /v1/score/application/{applicationId}  → the application's latest job

and always::

    GET /v1/webhooks/deliveries?jobId=          → the org's deliveries and their attempts
    GET /v1/analytics/scoring-volume?timeRange= → seed 000

``Idempotency-Key`` on the POSTs: the same org and key give the same job and the same
202 body (with ``Idempotent-Replayed: true``); the key with another body is a 422.
Anything else goes to ``fallback`` (the upstream), or is a 404.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from tollhouse.errors import (
    ApiError,
    NotFound,
    ServiceUnavailable,
    StorageError,
    Unauthorized,
    ValidationFailed,
)
from tollhouse.example import bodies
from tollhouse.jobs.model import Enqueued, IdempotencyKeyReused, NewJob, utc_now
from tollhouse.jobs.queue import Clock, JobQueue
from tollhouse.jobs.shapes import accepted_json, job_json
from tollhouse.jobs.volume import CACHE_CONTROL, TIME_RANGES, volume_body, window
from tollhouse.jobs.webhooks import WebhookStore, delivery_json
from tollhouse.keys.model import Identity
from tollhouse.policy.model import AsyncRoute, Policy

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

IDEMPOTENCY_HEADER = "idempotency-key"
REPLAYED_HEADER = "Idempotent-Replayed"
#: Longest Idempotency-Key accepted (Stripe's limit).
MAX_IDEMPOTENCY_KEY = 255
DELIVERIES_PATH = "/v1/webhooks/deliveries"
VOLUME_PATH = "/v1/analytics/scoring-volume"
#: Longest job id looked up; longer ones cannot exist.
MAX_JOB_ID = 64


class IdempotencyConflict(ApiError):
    """An Idempotency-Key reused with another request body (IETF draft: 422)."""

    status, code, slug = 422, "IDEMPOTENCY_KEY_REUSED", "idempotency-key-reused"


class MethodNotAllowed(ApiError):
    """The path exists, not for this method."""

    status, code, slug = 405, "METHOD_NOT_ALLOWED", "method-not-allowed"


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def _request_id(request: Request) -> str:
    state = request.scope.get("state") or {}
    rid = state.get("request_id") or request.headers.get("x-request-id")
    return str(rid) if rid else "req_unknown"


def _identity(request: Request) -> Identity:
    state = request.scope.get("state") or {}
    identity = state.get("identity")
    if not isinstance(identity, Identity):
        # Only reachable when the app is mounted without the gateway in front.
        raise Unauthorized("No API key: this endpoint is served behind the tollhouse gateway.")
    return identity


def _request_hash(route: str, body: dict[str, Any]) -> str:
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(route.encode() + b"\n" + canonical).hexdigest()


def _idempotency_key(request: Request) -> str | None:
    raw = request.headers.get(IDEMPOTENCY_HEADER)
    if raw is None:
        return None
    key = raw.strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise ValidationFailed(
            f'header "Idempotency-Key" must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters'
        )
    return key


class _AsyncRouteApi:
    """The four endpoints of one async route."""

    def __init__(self, route: AsyncRoute, queue: JobQueue) -> None:
        self.route = route
        self.queue = queue
        self.path = route.route.split()[-1].rstrip("/")
        # The seeds' score body is checked as the example upstream checks it; other async
        # routes take any JSON object.
        self.score_body = self.path.endswith("/score")

    def _new_job(
        self,
        identity: Identity,
        body: Any,
        key: str | None,
        request_id: str,
    ) -> NewJob:
        if not isinstance(body, dict):
            raise ValidationFailed("each item must be a JSON object")
        application_id: str | None
        if self.score_body:
            application_id = bodies.score_request(body).application_id
        else:
            found = body.get("applicationId")
            application_id = found if isinstance(found, str) and found else None
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
        body = bodies.json_object(await request.body())
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
        items = bodies.batch_items(bodies.json_object(await request.body()))
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
        job_id = str(request.path_params["scoringJobId"])
        if job_id == "batch":
            raise MethodNotAllowed(f"{self.path}/batch takes POST only", headers={"Allow": "POST"})
        job = await self.queue.get(identity.org, job_id) if len(job_id) <= MAX_JOB_ID else None
        if job is None:
            raise NotFound(f'scoring job "{job_id}" not found')
        return await self._job_response(job)

    async def by_application(self, request: Request) -> Response:
        identity = _identity(request)
        application_id = str(request.path_params["applicationId"])
        job = await self.queue.latest_for_application(identity.org, application_id)
        if job is None:
            raise NotFound(f'application "{application_id}" has no scoring job')
        return await self._job_response(job)

    async def _job_response(self, job: Any) -> Response:
        standing = None
        if job.state == "queued":
            standing = await self.queue.standing(job)
            if standing is None:  # it left the queue meanwhile: show where it is now
                job = await self.queue.get(job.org, job.id) or job
        return _json(job_json(job, standing))

    def routes(self) -> list[Route]:
        method = self.route.route.split()[0].split("/")[0].upper()
        return [
            Route(self.path, _endpoint(self.submit), methods=[method]),
            Route(self.path + "/batch", _endpoint(self.submit_batch), methods=["POST"]),
            Route(
                self.path + "/application/{applicationId}",
                _endpoint(self.by_application),
                methods=["GET"],
            ),
            Route(self.path + "/{scoringJobId}", _endpoint(self.get), methods=["GET"]),
        ]


def _endpoint(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """Errors as seed 004's envelope; a failing database as 503."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return _json(exc.body(_request_id(request)), exc.status, exc.headers)
        except StorageError:
            logger.exception("job storage failed", extra={"request_id": _request_id(request)})
            exc2 = ServiceUnavailable("The job store is unavailable; retry shortly.")
            return _json(exc2.body(_request_id(request)), exc2.status, {"Retry-After": "1"})

    return endpoint


class JobsApp:
    """Raw ASGI: the jobs routes, else ``fallback``. Build it with :func:`create_jobs_app`."""

    def __init__(
        self,
        *,
        queue: JobQueue,
        policy: Policy,
        webhooks: WebhookStore | None,
        fallback: ASGIApp | None,
        clock: Clock,
    ) -> None:
        self.queue = queue
        self.policy = policy
        self.webhooks = webhooks
        self.fallback = fallback
        self.clock = clock
        routes: list[Route] = []
        prefixes = [DELIVERIES_PATH, VOLUME_PATH]
        for async_route in policy.async_routes:
            api = _AsyncRouteApi(async_route, queue)
            routes += api.routes()
            prefixes.append(api.path)
        # Every other request (most traffic) is the upstream's: one startswith decides,
        # before any route's regular expression runs.
        self._prefixes = tuple(prefixes)
        routes.append(Route(DELIVERIES_PATH, _endpoint(self.deliveries), methods=["GET"]))
        routes.append(Route(VOLUME_PATH, _endpoint(self.scoring_volume), methods=["GET"]))
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            # Lifespan and websockets belong to the upstream.
            if self.fallback is not None:
                await self.fallback(scope, receive, send)
            return
        if not scope["path"].startswith(self._prefixes) and self.fallback is not None:
            await self.fallback(scope, receive, send)
            return
        partial: Route | None = None
        for route in self.routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                scope.update(child)
                await route.handle(scope, receive, send)
                return
            if match is Match.PARTIAL and partial is None:
                partial = route
        if partial is None and self.fallback is not None:
            await self.fallback(scope, receive, send)
            return
        state = scope.get("state") or {}
        request_id = str(state.get("request_id") or "req_unknown")
        where = f"{scope['method']} {scope['path']}"
        error: ApiError
        if partial is not None:
            allowed = ", ".join(sorted(partial.methods or ()))
            error = MethodNotAllowed(f"{where} is not allowed; allowed: {allowed}")
            error.headers["Allow"] = allowed
        else:
            error = NotFound(f"no route matches {where}")
        await _json(error.body(request_id), error.status, error.headers)(scope, receive, send)

    async def deliveries(self, request: Request) -> Response:
        """``GET /v1/webhooks/deliveries?jobId=``: the org's deliveries, newest first."""
        identity = _identity(request)
        job_id = request.query_params.get("jobId") or None
        found = (
            await self.webhooks.deliveries(identity.org, job_id)
            if self.webhooks is not None
            else []
        )
        return _json({"data": [delivery_json(d) for d in found]})

    async def scoring_volume(self, request: Request) -> Response:
        """``GET /v1/analytics/scoring-volume?timeRange=`` (seed 000)."""
        identity = _identity(request)
        time_range = request.query_params.get("timeRange")
        if time_range not in TIME_RANGES:
            choices = ", ".join(TIME_RANGES)
            problem = "is required" if not time_range else f"must be one of {choices}"
            raise ValidationFailed(f'query parameter "timeRange" {problem} ({choices})')
        start, end, granularity = window(time_range, self.clock())
        counts = await self.queue.volume(identity.org, start, end, granularity)
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
) -> JobsApp:
    """The jobs ASGI app for ``policy``'s async routes.

    Args:
        queue: the job queue (:func:`tollhouse.jobs.open_queue`).
        policy: its ``async_routes`` decide which paths are served.
        webhooks: for ``GET /v1/webhooks/deliveries``; made on the queue's engine when
            None and the queue has one.
        fallback: the ASGI app for every other request (the upstream); None answers 404.
        clock: for the scoring-volume period (tests).

    Returns:
        A raw ASGI app; it expects ``scope["state"]["identity"]`` set by the gateway.
    """
    if webhooks is None:
        engine = getattr(queue, "engine", None)
        if engine is not None:
            webhooks = WebhookStore(engine)
    return JobsApp(queue=queue, policy=policy, webhooks=webhooks, fallback=fallback, clock=clock)
