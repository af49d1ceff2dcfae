"""The bundled example upstream: a small Nova-like candidate-scoring API.

``tollhouse serve`` mounts it when no upstream is configured, so a first run does real work.
It has no auth of its own: the gateway in front authenticates and forwards two headers.

* ``x-tollhouse-org``: the caller's org (``anonymous`` when absent). All data is kept per
  org; one org never sees or changes another's criteria or scores.
* ``x-request-id``: echoed in error bodies (``req_`` + 12 hex characters when absent).

Endpoints (bodies are JSON; unknown fields are ignored)::

    POST   /v1/criteria/generate                  {jobId, title, description} -> {jobId, criteria}
    POST   /v1/criteria/questions                 same body -> {jobId, questions}
    GET    /v1/jobs/{jobId}/criteria              -> {jobId, criteria, archived}
    GET    /v1/criteria/{jobId}                   (same)
    POST   /v1/jobs/{jobId}/criteria              {name, description?, weight?} -> 201 criterion
    POST   /v1/criteria/{jobId}                   (same)
    PATCH  /v1/jobs/{jobId}/criteria              {criteria: [{id, ...changes}]} -> full list
    PATCH  /v1/criteria/{jobId}/{criterionId}     {...changes} -> criterion
    DELETE /v1/criteria/{jobId}                   -> 204
    DELETE /v1/criteria/{jobId}/{criterionId}     -> 204
    POST   /v1/jobs/{jobId}/criteria/archive      -> {jobId, archived, archivedAt}
    POST   /v1/score                              {applicationId, jobId, candidate} -> result
    POST   /v1/score/batch                        {items: [1..100 score bodies]} -> {results}
    GET    /v1/score/{scoringJobId}               -> result
    GET    /v1/score/application/{applicationId}  -> the application's latest result

Because ``POST /v1/criteria/generate`` and ``/questions`` are matched first, jobs named
``generate`` or ``questions`` take new criteria through ``/v1/jobs/{jobId}/criteria``.

Errors use tollhouse's envelope (:func:`tollhouse.errors.error_body`): 400 ``BAD_REQUEST``
for a body that is not a JSON object, 404 ``NOT_FOUND``, 405 ``METHOD_NOT_ALLOWED``,
413 ``PAYLOAD_TOO_LARGE`` past 32 MiB, 422 ``VALIDATION_FAILED`` naming the field.

Test hook: a request with ``x-example-delay-ms: N`` (an integer, 0 to 30000) waits N
milliseconds (``asyncio.sleep``) before it is handled, so tests can hold a gateway's
in-flight slot open for as long as they need. Any other value is a 422.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tollhouse.errors import (
    ApiError,
    NotFound,
    PayloadTooLarge,
    ValidationFailed,
    error_body,
)
from tollhouse.example import bodies
from tollhouse.example.criteria import derive_criteria, derive_questions
from tollhouse.example.scoring import candidate_document, score_candidate
from tollhouse.example.store import (
    MAX_JOBS_PER_ORG,
    MAX_RESULTS_PER_ORG,
    Criterion,
    ExampleStore,
    JobCriteria,
    ScoreResult,
    criterion_id,
    question_id,
)
from tollhouse.settings import positive_int

#: Headers the gateway forwards (lower case, as ASGI gives them).
ORG_HEADER = "x-tollhouse-org"
REQUEST_ID_HEADER = "x-request-id"
DELAY_HEADER = "x-example-delay-ms"
#: Org assumed when the gateway forwards none (the app run on its own).
DEFAULT_ORG = "anonymous"
#: Longest delay the test hook accepts, in milliseconds.
MAX_DELAY_MS = 30_000
#: Largest request body read; a full batch of long resumes fits well below it.
MAX_BODY_BYTES = 32 * 1024 * 1024
#: Criteria one job may hold (generate gives at most 8; the rest come by hand).
MAX_CRITERIA_PER_JOB = 100

Clock = Callable[[], datetime]


class _MethodNotAllowed(ApiError):
    """The path exists but not for this method (e.g. ``GET /v1/score/batch``)."""

    status, code, slug = 405, "METHOD_NOT_ALLOWED", "method-not-allowed"


class _OrjsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _json(content: Any, status_code: int = 200) -> Response:
    return _OrjsonResponse(content, status_code=status_code)


def _error(error: ApiError, request_id: str) -> Response:
    return _OrjsonResponse(error.body(request_id), error.status, headers=error.headers)


def new_request_id() -> str:
    """A request id for a request that came without one: ``req_`` + 12 hex characters."""
    return "req_" + secrets.token_hex(6)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    """UTC ISO 8601 with ``Z``, to the millisecond: ``2025-01-15T10:30:00.000Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _delay_ms(value: str | None) -> int:
    if value is None:
        return 0
    text = value.strip()
    # The length check comes first: int() of a very long digit string is slow, then refused.
    if not (len(text) <= 5 and text.isascii() and text.isdigit()) or int(text) > MAX_DELAY_MS:
        raise ValidationFailed(
            f'header "{DELAY_HEADER}" must be an integer from 0 to {MAX_DELAY_MS}'
        )
    return int(text)


@dataclass(frozen=True, slots=True)
class _Call:
    """One request as a handler sees it: who asked, and how to read what they sent."""

    request: Request
    org: str
    request_id: str

    def path(self, name: str) -> str:
        return bodies.path_id(str(self.request.path_params[name]), name)

    async def body(self) -> dict[str, Any]:
        size = 0
        chunks: list[bytes] = []
        # Read in chunks so an oversized body is refused without being held in memory.
        async for chunk in self.request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise PayloadTooLarge(f"request body is larger than {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
        return bodies.json_object(b"".join(chunks))


_Handler = Callable[[_Call], Awaitable[Response]]


def _endpoint(handler: _Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler: request id, org, the delay hook, and API errors as the envelope."""

    async def endpoint(request: Request) -> Response:
        request_id = request.headers.get(REQUEST_ID_HEADER) or new_request_id()
        try:
            delay_ms = _delay_ms(request.headers.get(DELAY_HEADER))
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            org = _org(request)
            return await handler(_Call(request, org, request_id))
        except ApiError as exc:
            return _error(exc, request_id)

    return endpoint


def _org(request: Request) -> str:
    """The caller's org: from the gateway's identity when mounted in-process behind it,
    else from the header the reverse proxy (or the job handler) sets."""
    identity = (request.scope.get("state") or {}).get("identity")
    org = getattr(identity, "org", None)
    if isinstance(org, str) and org:
        return org
    return request.headers.get(ORG_HEADER) or DEFAULT_ORG


def _criterion_json(criterion: Criterion) -> dict[str, Any]:
    return {
        "id": criterion.id,
        "name": criterion.name,
        "description": criterion.description,
        "weight": criterion.weight,
    }


def _criteria_json(job: JobCriteria) -> dict[str, Any]:
    return {
        "jobId": job.job_id,
        "criteria": [_criterion_json(c) for c in job.criteria],
        "archived": job.archived_at is not None,
    }


def _result_json(result: ScoreResult) -> dict[str, Any]:
    return {
        "scoringJobId": result.scoring_job_id,
        "applicationId": result.application_id,
        "jobId": result.job_id,
        "status": "completed",
        "score": result.score,
        "breakdown": [
            {
                "criterionId": entry.criterion_id,
                "name": entry.name,
                "weight": entry.weight,
                "score": entry.score,
                "evidence": list(entry.evidence),
            }
            for entry in result.breakdown
        ],
        "completedAt": _iso(result.completed_at),
    }


class _ExampleApi:
    """The handlers, sharing one store and one clock."""

    def __init__(self, store: ExampleStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    # --- criteria generation -------------------------------------------------------------

    async def generate(self, call: _Call) -> Response:
        posting = bodies.job_posting(await call.body())
        derived = derive_criteria(posting.title, posting.description)
        criteria = tuple(
            Criterion(
                criterion_id(call.org, posting.job_id, d.name), d.name, d.description, d.weight
            )
            for d in derived
        )
        # Regenerating replaces the job's criteria and un-archives it: a new posting version.
        self.store.save_job(call.org, JobCriteria(posting.job_id, criteria))
        return _json({"jobId": posting.job_id, "criteria": [_criterion_json(c) for c in criteria]})

    async def questions(self, call: _Call) -> Response:
        posting = bodies.job_posting(await call.body())
        derived = derive_criteria(posting.title, posting.description)
        questions = [
            {
                "id": question_id(call.org, posting.job_id, q.name),
                "name": q.name,
                "description": q.text,
                "weight": q.weight,
            }
            for q in derive_questions(posting.title, derived)
        ]
        return _json({"jobId": posting.job_id, "questions": questions})

    # --- criteria CRUD -------------------------------------------------------------------

    def _job(self, call: _Call, job_id: str) -> JobCriteria:
        job = self.store.get_job(call.org, job_id)
        if job is None or not job.criteria:
            raise NotFound(
                f'job "{job_id}" has no criteria; create them with POST /v1/criteria/generate '
                f"or POST /v1/jobs/{job_id}/criteria"
            )
        return job

    @staticmethod
    def _index(job: JobCriteria, wanted: str) -> int:
        for i, criterion in enumerate(job.criteria):
            if criterion.id == wanted:
                return i
        raise NotFound(f'criterion "{wanted}" not found in job "{job.job_id}"')

    async def get_criteria(self, call: _Call) -> Response:
        return _json(_criteria_json(self._job(call, call.path("jobId"))))

    async def add_criterion(self, call: _Call) -> Response:
        job_id = call.path("jobId")
        new = bodies.new_criterion(await call.body())
        job = self.store.get_job(call.org, job_id) or JobCriteria(job_id, ())
        if len(job.criteria) >= MAX_CRITERIA_PER_JOB:
            raise ValidationFailed(
                f'job "{job_id}" already has {MAX_CRITERIA_PER_JOB} criteria; delete some first'
            )
        # Ids derive from the name; a second criterion of the same name gets a suffixed seed
        # so both stay addressable.
        taken = {c.id for c in job.criteria}
        new_id = criterion_id(call.org, job_id, new.name)
        n = 1
        while new_id in taken:
            n += 1
            new_id = criterion_id(call.org, job_id, f"{new.name}#{n}")
        criterion = Criterion(new_id, new.name, new.description, new.weight)
        self.store.save_job(call.org, replace(job, criteria=(*job.criteria, criterion)))
        return _json(_criterion_json(criterion), 201)

    async def patch_criteria(self, call: _Call) -> Response:
        job_id = call.path("jobId")
        changes = bodies.criteria_patch(await call.body())
        job = self._job(call, job_id)
        criteria = list(job.criteria)
        # Every id is checked before anything changes: a 404 leaves the job as it was.
        positions = [self._index(job, wanted) for wanted, _ in changes]
        for i, (_, change) in zip(positions, changes, strict=True):
            criteria[i] = _apply(criteria[i], change)
        job = replace(job, criteria=tuple(criteria))
        self.store.save_job(call.org, job)
        return _json(_criteria_json(job))

    async def patch_criterion(self, call: _Call) -> Response:
        job_id, wanted = call.path("jobId"), call.path("criterionId")
        change = bodies.criterion_changes(await call.body())
        job = self._job(call, job_id)
        i = self._index(job, wanted)
        criteria = list(job.criteria)
        criteria[i] = _apply(criteria[i], change)
        self.store.save_job(call.org, replace(job, criteria=tuple(criteria)))
        return _json(_criterion_json(criteria[i]))

    async def delete_criteria(self, call: _Call) -> Response:
        job_id = call.path("jobId")
        self._job(call, job_id)
        self.store.delete_job(call.org, job_id)
        return Response(status_code=204)

    async def delete_criterion(self, call: _Call) -> Response:
        job_id, wanted = call.path("jobId"), call.path("criterionId")
        job = self._job(call, job_id)
        i = self._index(job, wanted)
        criteria = job.criteria[:i] + job.criteria[i + 1 :]
        self.store.save_job(call.org, replace(job, criteria=criteria))
        return Response(status_code=204)

    async def archive_criteria(self, call: _Call) -> Response:
        job = self._job(call, call.path("jobId"))
        # Archiving again is a no-op that reports the original time.
        archived_at = job.archived_at or self.clock()
        if job.archived_at is None:
            self.store.save_job(call.org, replace(job, archived_at=archived_at))
        return _json({"jobId": job.job_id, "archived": True, "archivedAt": _iso(archived_at)})

    # --- scoring -------------------------------------------------------------------------

    def _score(self, org: str, request: bodies.ScoreRequest) -> ScoreResult:
        job = self.store.get_job(org, request.job_id)
        if job is None or not job.criteria:
            raise NotFound(
                f'job "{request.job_id}" has no criteria to score against; '
                "POST /v1/criteria/generate first"
            )
        now = self.clock()
        scored = score_candidate(
            job.criteria, candidate_document(request.candidate), current_year=now.year
        )
        result = ScoreResult(
            scoring_job_id="sj_" + secrets.token_hex(8),
            application_id=request.application_id,
            job_id=request.job_id,
            score=scored.score,
            breakdown=scored.breakdown,
            completed_at=now,
        )
        self.store.save_result(org, result)
        return result

    async def score(self, call: _Call) -> Response:
        request = bodies.score_request(await call.body())
        return _json(_result_json(self._score(call.org, request)))

    async def score_batch(self, call: _Call) -> Response:
        items = bodies.batch_items(await call.body())
        results: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                if not isinstance(item, dict):
                    raise ValidationFailed(f'field "items[{index}]" must be an object')
                result = self._score(call.org, bodies.score_request(item))
                results.append({"index": index, **_result_json(result)})
            except ApiError as exc:
                error = exc.body(call.request_id)["error"]
                results.append({"index": index, "status": "error", "error": error})
            # Scoring is CPU work; let other requests run between items of a long batch.
            await asyncio.sleep(0)
        return _json({"results": results})

    async def get_score(self, call: _Call) -> Response:
        scoring_job_id = call.path("scoringJobId")
        if scoring_job_id == "batch":
            raise _MethodNotAllowed("/v1/score/batch takes POST only", headers={"Allow": "POST"})
        result = self.store.get_result(call.org, scoring_job_id)
        if result is None:
            raise NotFound(f'scoring job "{scoring_job_id}" not found')
        return _json(_result_json(result))

    async def get_application_score(self, call: _Call) -> Response:
        application_id = call.path("applicationId")
        result = self.store.latest_result(call.org, application_id)
        if result is None:
            raise NotFound(f'application "{application_id}" has no scoring result')
        return _json(_result_json(result))

    def routes(self) -> list[BaseRoute]:
        """The routes, most specific first (Starlette takes the first full match)."""

        def route(path: str, handler: _Handler, *methods: str) -> Route:
            return Route(path, _endpoint(handler), methods=list(methods))

        return [
            route("/v1/criteria/generate", self.generate, "POST"),
            route("/v1/criteria/questions", self.questions, "POST"),
            route("/v1/criteria/{jobId}", self.get_criteria, "GET"),
            route("/v1/criteria/{jobId}", self.add_criterion, "POST"),
            route("/v1/criteria/{jobId}", self.delete_criteria, "DELETE"),
            route("/v1/criteria/{jobId}/{criterionId}", self.patch_criterion, "PATCH"),
            route("/v1/criteria/{jobId}/{criterionId}", self.delete_criterion, "DELETE"),
            route("/v1/jobs/{jobId}/criteria", self.get_criteria, "GET"),
            route("/v1/jobs/{jobId}/criteria", self.add_criterion, "POST"),
            route("/v1/jobs/{jobId}/criteria", self.patch_criteria, "PATCH"),
            route("/v1/jobs/{jobId}/criteria/archive", self.archive_criteria, "POST"),
            route("/v1/score", self.score, "POST"),
            route("/v1/score/batch", self.score_batch, "POST"),
            route("/v1/score/application/{applicationId}", self.get_application_score, "GET"),
            route("/v1/score/{scoringJobId}", self.get_score, "GET"),
        ]


def _apply(criterion: Criterion, change: bodies.CriterionChanges) -> Criterion:
    """A criterion with a PATCH's changes; the id stays, even when the name changes."""
    return Criterion(
        criterion.id,
        change.name if change.name is not None else criterion.name,
        change.description if change.description is not None else criterion.description,
        change.weight if change.weight is not None else criterion.weight,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    """Router errors (no such path, wrong method) in the same envelope as the handlers'."""
    if not isinstance(exc, HTTPException):  # registered for HTTPException only
        raise exc
    request_id = request.headers.get(REQUEST_ID_HEADER) or new_request_id()
    status = exc.status_code
    headers = dict(exc.headers or {})
    where = f"{request.method} {request.url.path}"
    if status == HTTPStatus.NOT_FOUND:
        error: ApiError = NotFound(f"no route matches {where}")
    elif status == HTTPStatus.METHOD_NOT_ALLOWED:
        allowed = headers.get("Allow") or headers.get("allow") or ""
        error = _MethodNotAllowed(f"{where} is not allowed; allowed: {allowed}", headers=headers)
    else:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        body = error_body(
            status,
            phrase.upper().replace(" ", "_"),
            phrase.lower().replace(" ", "-"),
            phrase,
            request_id,
        )
        return _OrjsonResponse(body, status, headers=headers)
    return _error(error, request_id)


#: Environment variables overriding the store's bounds when ``tollhouse serve`` builds
#: the example (``create_app_from_env``): a soak run lowers them to see the plateau soon.
ENV_MAX_JOBS = "TOLLHOUSE_EXAMPLE_MAX_JOBS"
ENV_MAX_RESULTS = "TOLLHOUSE_EXAMPLE_MAX_RESULTS"


def create_app_from_env(env: Mapping[str, str] | None = None) -> Starlette:
    """:func:`create_app` with its bounds from ``TOLLHOUSE_EXAMPLE_MAX_JOBS`` and
    ``TOLLHOUSE_EXAMPLE_MAX_RESULTS`` when set (``env``: ``os.environ`` by default).

    Raises:
        ConfigError: a bound that is not a whole number ≥ 1.
    """
    env = os.environ if env is None else env
    return create_app(
        max_jobs_per_org=positive_int(env.get(ENV_MAX_JOBS), ENV_MAX_JOBS) or MAX_JOBS_PER_ORG,
        max_results_per_org=positive_int(env.get(ENV_MAX_RESULTS), ENV_MAX_RESULTS)
        or MAX_RESULTS_PER_ORG,
    )


def create_app(
    *,
    max_jobs_per_org: int = MAX_JOBS_PER_ORG,
    max_results_per_org: int = MAX_RESULTS_PER_ORG,
    clock: Clock | None = None,
) -> Starlette:
    """Build the example upstream, with its own empty in-memory store.

    Args:
        max_jobs_per_org: jobs with criteria each org keeps (the least recently changed go
            first).
        max_results_per_org: scoring results each org keeps (the oldest go first).
        clock: returns the current time, timezone-aware; defaults to the system clock in UTC.

    Returns:
        A Starlette ASGI app.
    """
    store = ExampleStore(max_jobs_per_org=max_jobs_per_org, max_results_per_org=max_results_per_org)
    api = _ExampleApi(store, clock or _utc_now)
    return Starlette(routes=api.routes(), exception_handlers={HTTPException: _http_error})
