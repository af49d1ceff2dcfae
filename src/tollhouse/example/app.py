"""The bundled example upstream: a small candidate-scoring API in the scoring API shape
(docs/api-shapes.md).

``tollhouse serve`` mounts it when no upstream is configured, so a first run does real work;
``tollhouse example serve`` runs it on its own, as the shared upstream of several tollhouse
instances. Its state lives in tollhouse's database (:mod:`tollhouse.example.store`), so
every process on one database sees the same criteria and results. It has no auth of its
own: the gateway in front authenticates and forwards these headers.

* ``x-tollhouse-org``: the caller's org (``anonymous`` when absent; at most 64 characters).
* ``x-tollhouse-environment``: ``SANDBOX`` or ``PRODUCTION`` (any case), or absent. All data
  is kept per org and environment; one org never sees or changes another's criteria or
  scores, and an org's sandbox data is apart from its production data.
* ``x-request-id``: echoed in error bodies (``req_`` + 12 hex characters when absent).

Mounted in-process behind the gateway, the org and environment come from the caller's
key instead (``scope["state"]["identity"]``), which gives the same values, and the request
id from ``scope["state"]["request_id"]`` (the one the gateway puts on the answer).

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
for a body that is not a JSON object, 404 ``NOT_FOUND``, 405 ``METHOD_NOT_ALLOWED`` (its
``Allow`` lists every method of the path; ``HEAD`` goes wherever ``GET`` does),
413 ``PAYLOAD_TOO_LARGE`` past 32 MiB, 422 ``VALIDATION_FAILED`` naming the field (or the
header), 503 ``SERVICE_UNAVAILABLE`` while the database cannot be reached.

Processing time: with ``processing_seconds`` (``TOLLHOUSE_EXAMPLE_PROCESSING_SECONDS``) above
0, ``POST /v1/score`` takes that long in all: it finds the job's criteria and scores,
waits out the rest (``asyncio.sleep``: other requests go on meanwhile), then stores the
result, so operators can rehearse slow jobs. ``POST /v1/score/batch`` takes it once for
the whole batch, as a service scoring the items in parallel would. Such answers carry
``x-example-processing-seconds``.

Test hook: a request with ``x-example-delay-ms: N`` (an integer, 0 to 30000) waits N
milliseconds (``asyncio.sleep``) before it is handled, so tests can hold a gateway's
in-flight slot open for as long as they need. Any other value is a 422.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tollhouse.errors import (
    ApiError,
    ConfigError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    StorageError,
    ValidationFailed,
    error_body,
)
from tollhouse.example import bodies
from tollhouse.example.criteria import derive_criteria, derive_questions
from tollhouse.example.schema import MAX_ENVIRONMENT_CHARS, MAX_ORG_CHARS, MAX_SCORING_ID_CHARS
from tollhouse.example.scoring import candidate_document, score_candidate
from tollhouse.example.store import (
    MAX_JOBS_PER_ORG,
    MAX_RESULTS_PER_ORG,
    Criterion,
    ExampleStore,
    JobCriteria,
    Owner,
    ScoreResult,
    criterion_id,
    question_id,
)
from tollhouse.json_reader import read_object
from tollhouse.settings import (
    DATABASE_URL,
    EXAMPLE_MAX_JOBS,
    EXAMPLE_MAX_RESULTS,
    EXAMPLE_PROCESSING_SECONDS,
    positive_int,
)

logger = logging.getLogger(__name__)

#: Headers the gateway forwards (lower case, as ASGI gives them).
ORG_HEADER = "x-tollhouse-org"
ENVIRONMENT_HEADER = "x-tollhouse-environment"
REQUEST_ID_HEADER = "x-request-id"
DELAY_HEADER = "x-example-delay-ms"
#: Response header of a scoring that waited ``processing_seconds``.
PROCESSING_HEADER = "x-example-processing-seconds"
#: Org assumed when the gateway forwards none (the app run on its own).
DEFAULT_ORG = "anonymous"
#: Environments an org's data is kept apart by; "" when the caller names none.
ENVIRONMENTS = frozenset({"SANDBOX", "PRODUCTION"})
#: Longest delay the test hook accepts, in milliseconds.
MAX_DELAY_MS = 30_000
#: Longest processing time accepted: an hour; a larger value is a typo (milliseconds?).
MAX_PROCESSING_SECONDS = 3600.0
#: Largest request body read; a full batch of long resumes fits well below it.
MAX_BODY_BYTES = 32 * 1024 * 1024
#: Criteria one job may hold (generate gives at most 8; the rest come by hand).
MAX_CRITERIA_PER_JOB = 100

Clock = Callable[[], datetime]


class _OrjsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _json(
    content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return _OrjsonResponse(content, status_code=status_code, headers=headers)


def _error(error: ApiError, request_id: str) -> Response:
    return _OrjsonResponse(error.body(request_id), error.status, headers=error.headers)


def new_request_id() -> str:
    """A request id for a request that came without one: ``req_`` + 12 hex characters."""
    return "req_" + secrets.token_hex(6)


def _request_id(request: Request) -> str:
    """The gateway's id in-process, else the forwarded header, else a new one."""
    state = request.scope.get("state")
    found = state.get("request_id") if isinstance(state, Mapping) else None
    if isinstance(found, str) and found:
        return found
    return request.headers.get(REQUEST_ID_HEADER) or new_request_id()


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
    owner: Owner
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
        return read_object(b"".join(chunks))


_Handler = Callable[[_Call], Awaitable[Response]]


def _endpoint(handler: _Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler: request id, owner, the delay hook, and errors as the envelope."""

    async def endpoint(request: Request) -> Response:
        request_id = _request_id(request)
        try:
            delay_ms = _delay_ms(request.headers.get(DELAY_HEADER))
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            return await handler(_Call(request, _owner(request), request_id))
        except ApiError as exc:
            return _error(exc, request_id)
        except StorageError as exc:
            # The database is away (a restart, a failover): a retryable answer, which the
            # job queue's upstream handler retries, rather than a 500.
            logger.warning("example upstream: %s", exc, extra={"request_id": request_id})
            unavailable = ServiceUnavailable(
                "the example upstream cannot reach its database; try again shortly",
                headers={"Retry-After": "1"},
            )
            return _error(unavailable, request_id)

    return endpoint


def _by_method(handlers: dict[str, _Handler]) -> Callable[[Request], Awaitable[Response]]:
    """One endpoint for a path's methods (``HEAD`` answered as ``GET``)."""
    wrapped = {method: _endpoint(handler) for method, handler in handlers.items()}
    if "GET" in wrapped:
        wrapped["HEAD"] = wrapped["GET"]

    async def endpoint(request: Request) -> Response:
        return await wrapped[request.method](request)

    return endpoint


def _header(request: Request, name: str, max_chars: int) -> str:
    """A forwarded identity header as text: UTF-8, as the reverse proxy encodes it, so a
    proxied request and an in-process one name the same org."""
    value = request.headers.get(name)
    if not value:
        return ""
    try:
        text = value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise ValidationFailed(f'header "{name}" must be UTF-8 text') from None
    if len(text) > max_chars:
        raise ValidationFailed(f'header "{name}" must be at most {max_chars} characters')
    if "\x00" in text:
        raise ValidationFailed(f'header "{name}" must not contain NUL characters')
    return text


def _owner(request: Request) -> Owner:
    """Whose data the request reaches: from the gateway's identity when mounted in-process
    behind it, else from the headers the reverse proxy (or the job handler) sets."""
    identity = (request.scope.get("state") or {}).get("identity")
    org = getattr(identity, "org", None)
    if isinstance(org, str) and org:
        environment = getattr(identity, "environment", "")
        return Owner(org, environment if isinstance(environment, str) else "")
    org = _header(request, ORG_HEADER, MAX_ORG_CHARS) or DEFAULT_ORG
    environment = _header(request, ENVIRONMENT_HEADER, MAX_ENVIRONMENT_CHARS).strip().upper()
    if environment and environment not in ENVIRONMENTS:
        raise ValidationFailed(
            f'header "{ENVIRONMENT_HEADER}" must be SANDBOX or PRODUCTION (or absent)'
        )
    return Owner(org, environment)


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


def _has_criteria(job: JobCriteria | None, job_id: str) -> JobCriteria:
    if job is None or not job.criteria:
        raise NotFound(
            f'job "{job_id}" has no criteria; create them with POST /v1/criteria/generate '
            f"or POST /v1/jobs/{job_id}/criteria"
        )
    return job


def _scorable(job: JobCriteria | None, job_id: str) -> JobCriteria:
    if job is None or not job.criteria:
        raise NotFound(
            f'job "{job_id}" has no criteria to score against; POST /v1/criteria/generate first'
        )
    return job


def _index(job: JobCriteria, wanted: str) -> int:
    for i, criterion in enumerate(job.criteria):
        if criterion.id == wanted:
            return i
    raise NotFound(f'criterion "{wanted}" not found in job "{job.job_id}"')


class _ExampleApi:
    """The handlers, sharing one store, one clock and one processing time."""

    def __init__(self, store: ExampleStore, clock: Clock, processing_seconds: float) -> None:
        self.store = store
        self.clock = clock
        self.processing_seconds = processing_seconds
        self._processing_headers = (
            {PROCESSING_HEADER: f"{processing_seconds:g}"} if processing_seconds else None
        )

    # --- criteria generation -------------------------------------------------------------

    async def generate(self, call: _Call) -> Response:
        posting = bodies.job_posting(await call.body())
        derived = derive_criteria(posting.title, posting.description)
        org = call.owner.org
        criteria = tuple(
            Criterion(criterion_id(org, posting.job_id, d.name), d.name, d.description, d.weight)
            for d in derived
        )
        # Regenerating replaces the job's criteria and un-archives it: a new posting version.
        await self.store.replace_job(call.owner, JobCriteria(posting.job_id, criteria))
        return _json({"jobId": posting.job_id, "criteria": [_criterion_json(c) for c in criteria]})

    async def questions(self, call: _Call) -> Response:
        posting = bodies.job_posting(await call.body())
        derived = derive_criteria(posting.title, posting.description)
        questions = [
            {
                "id": question_id(call.owner.org, posting.job_id, q.name),
                "name": q.name,
                "description": q.text,
                "weight": q.weight,
            }
            for q in derive_questions(posting.title, derived)
        ]
        return _json({"jobId": posting.job_id, "questions": questions})

    # --- criteria CRUD -------------------------------------------------------------------

    async def get_criteria(self, call: _Call) -> Response:
        job_id = call.path("jobId")
        job = _has_criteria(await self.store.get_job(call.owner, job_id), job_id)
        return _json(_criteria_json(job))

    async def add_criterion(self, call: _Call) -> Response:
        job_id = call.path("jobId")
        new = bodies.new_criterion(await call.body())
        org = call.owner.org

        def add(stored: JobCriteria | None) -> JobCriteria:
            job = stored or JobCriteria(job_id, ())
            if len(job.criteria) >= MAX_CRITERIA_PER_JOB:
                raise ValidationFailed(
                    f'job "{job_id}" already has {MAX_CRITERIA_PER_JOB} criteria; delete some first'
                )
            # Ids derive from the name; a second criterion of the same name gets a suffixed
            # seed so both stay addressable.
            taken = {c.id for c in job.criteria}
            new_id = criterion_id(org, job_id, new.name)
            n = 1
            while new_id in taken:
                n += 1
                new_id = criterion_id(org, job_id, f"{new.name}#{n}")
            criterion = Criterion(new_id, new.name, new.description, new.weight)
            return replace(job, criteria=(*job.criteria, criterion))

        job = await self.store.change_job(call.owner, job_id, add)
        return _json(_criterion_json(job.criteria[-1]), 201)

    async def patch_criteria(self, call: _Call) -> Response:
        job_id = call.path("jobId")
        changes = bodies.criteria_patch(await call.body())

        def patch(stored: JobCriteria | None) -> JobCriteria:
            job = _has_criteria(stored, job_id)
            criteria = list(job.criteria)
            # Every id is checked before anything changes: a 404 leaves the job as it was.
            positions = [_index(job, wanted) for wanted, _ in changes]
            for i, (_, change) in zip(positions, changes, strict=True):
                criteria[i] = _apply(criteria[i], change)
            return replace(job, criteria=tuple(criteria))

        job = await self.store.change_job(call.owner, job_id, patch)
        return _json(_criteria_json(job))

    async def patch_criterion(self, call: _Call) -> Response:
        job_id, wanted = call.path("jobId"), call.path("criterionId")
        change = bodies.criterion_changes(await call.body())

        def patch(stored: JobCriteria | None) -> JobCriteria:
            job = _has_criteria(stored, job_id)
            i = _index(job, wanted)
            criteria = list(job.criteria)
            criteria[i] = _apply(criteria[i], change)
            return replace(job, criteria=tuple(criteria))

        job = await self.store.change_job(call.owner, job_id, patch)
        return _json(_criterion_json(job.criteria[_index(job, wanted)]))

    async def delete_criteria(self, call: _Call) -> Response:
        job_id = call.path("jobId")
        if not await self.store.delete_job(call.owner, job_id):
            _has_criteria(None, job_id)
        return Response(status_code=204)

    async def delete_criterion(self, call: _Call) -> Response:
        job_id, wanted = call.path("jobId"), call.path("criterionId")

        def drop(stored: JobCriteria | None) -> JobCriteria:
            job = _has_criteria(stored, job_id)
            i = _index(job, wanted)
            return replace(job, criteria=job.criteria[:i] + job.criteria[i + 1 :])

        await self.store.change_job(call.owner, job_id, drop)
        return Response(status_code=204)

    async def archive_criteria(self, call: _Call) -> Response:
        job_id = call.path("jobId")
        now = self.clock()

        def archive(stored: JobCriteria | None) -> JobCriteria:
            job = _has_criteria(stored, job_id)
            # Archiving again is a no-op that reports the original time.
            return job if job.archived_at is not None else replace(job, archived_at=now)

        job = await self.store.change_job(call.owner, job_id, archive)
        archived_at = job.archived_at or now
        return _json({"jobId": job.job_id, "archived": True, "archivedAt": _iso(archived_at)})

    # --- scoring -------------------------------------------------------------------------

    def _compute(self, request: bodies.ScoreRequest, job: JobCriteria) -> ScoreResult:
        now = self.clock()
        scored = score_candidate(
            job.criteria, candidate_document(request.candidate), current_year=now.year
        )
        return ScoreResult(
            scoring_job_id="sj_" + secrets.token_hex(8),
            application_id=request.application_id,
            job_id=request.job_id,
            score=scored.score,
            breakdown=scored.breakdown,
            completed_at=now,
        )

    async def _process(self, since: float) -> None:
        """Wait out what is left of the configured processing time, counted from
        ``since`` (``time.monotonic()`` when the request arrived): reading the criteria
        and scoring are part of the processing time, as in a real service, so requests
        that arrive together are not held back by each other's work."""
        if self.processing_seconds:
            left = self.processing_seconds - (time.monotonic() - since)
            if left > 0:
                await asyncio.sleep(left)

    async def score(self, call: _Call) -> Response:
        started = time.monotonic()
        request = bodies.score_request(await call.body())
        job = _scorable(await self.store.get_job(call.owner, request.job_id), request.job_id)
        result = self._compute(request, job)
        if self.processing_seconds:
            await self._process(started)
            result = replace(result, completed_at=self.clock())
        await self.store.save_results(call.owner, [result])
        return _json(_result_json(result), headers=self._processing_headers)

    async def score_batch(self, call: _Call) -> Response:
        started = time.monotonic()
        items = bodies.batch_items(await call.body())
        checked: list[bodies.ScoreRequest | ApiError] = []
        for index, item in enumerate(items):
            try:
                if not isinstance(item, dict):
                    raise ValidationFailed(f'field "items[{index}]" must be an object')
                checked.append(bodies.score_request(item))
            except ApiError as exc:
                checked.append(exc)
        # One read for every job the batch names.
        jobs = await self.store.get_jobs(
            call.owner, (c.job_id for c in checked if isinstance(c, bodies.ScoreRequest))
        )
        ready: list[tuple[bodies.ScoreRequest, JobCriteria] | ApiError] = []
        for entry in checked:
            try:
                if isinstance(entry, ApiError):
                    raise entry
                ready.append((entry, _scorable(jobs.get(entry.job_id), entry.job_id)))
            except ApiError as exc:
                ready.append(exc)
        computed: list[ScoreResult | ApiError] = []
        for outcome in ready:
            if isinstance(outcome, ApiError):
                computed.append(outcome)
                continue
            computed.append(self._compute(*outcome))
            # Scoring is CPU work; let other requests run between items of a long batch.
            await asyncio.sleep(0)
        stored = [r for r in computed if isinstance(r, ScoreResult)]
        if stored and self.processing_seconds:
            await self._process(started)
            now = self.clock()
            stored = [replace(r, completed_at=now) for r in stored]
        done = iter(stored)
        results: list[dict[str, Any]] = []
        for index, computed_entry in enumerate(computed):
            if isinstance(computed_entry, ApiError):
                error = computed_entry.body(call.request_id)["error"]
                results.append({"index": index, "status": "error", "error": error})
            else:
                results.append({"index": index, **_result_json(next(done))})
        await self.store.save_results(call.owner, stored)
        return _json({"results": results}, headers=self._processing_headers)

    async def get_score(self, call: _Call) -> Response:
        scoring_job_id = call.path("scoringJobId")
        if scoring_job_id == "batch":
            raise MethodNotAllowed("/v1/score/batch takes POST only", headers={"Allow": "POST"})
        # An id longer than its column cannot exist: no need to ask the database.
        result = (
            await self.store.get_result(call.owner, scoring_job_id)
            if len(scoring_job_id) <= MAX_SCORING_ID_CHARS
            else None
        )
        if result is None:
            raise NotFound(f'scoring job "{scoring_job_id}" not found')
        return _json(_result_json(result))

    async def get_application_score(self, call: _Call) -> Response:
        application_id = call.path("applicationId")
        result = await self.store.latest_result(call.owner, application_id)
        if result is None:
            raise NotFound(f'application "{application_id}" has no scoring result')
        return _json(_result_json(result))

    def routes(self) -> list[BaseRoute]:
        """The routes, most specific first (Starlette takes the first full match): one
        per path with all of its methods, so a 405's ``Allow`` names every one."""
        by_path: dict[str, dict[str, _Handler]] = {
            "/v1/criteria/generate": {"POST": self.generate},
            "/v1/criteria/questions": {"POST": self.questions},
            "/v1/criteria/{jobId}": {
                "GET": self.get_criteria,
                "POST": self.add_criterion,
                "DELETE": self.delete_criteria,
            },
            "/v1/criteria/{jobId}/{criterionId}": {
                "PATCH": self.patch_criterion,
                "DELETE": self.delete_criterion,
            },
            "/v1/jobs/{jobId}/criteria": {
                "GET": self.get_criteria,
                "POST": self.add_criterion,
                "PATCH": self.patch_criteria,
            },
            "/v1/jobs/{jobId}/criteria/archive": {"POST": self.archive_criteria},
            "/v1/score": {"POST": self.score},
            "/v1/score/batch": {"POST": self.score_batch},
            "/v1/score/application/{applicationId}": {"GET": self.get_application_score},
            "/v1/score/{scoringJobId}": {"GET": self.get_score},
        }
        return [
            Route(path, _by_method(handlers), methods=list(handlers))
            for path, handlers in by_path.items()
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
    request_id = _request_id(request)
    status = exc.status_code
    headers = dict(exc.headers or {})
    where = f"{request.method} {request.url.path}"
    if status == HTTPStatus.NOT_FOUND:
        error: ApiError = NotFound(f"no route matches {where}")
    elif status == HTTPStatus.METHOD_NOT_ALLOWED:
        allowed = headers.get("Allow") or headers.get("allow") or ""
        error = MethodNotAllowed(f"{where} is not allowed; allowed: {allowed}", headers=headers)
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


#: Environment variables read by :func:`create_app_from_env` (``tollhouse serve`` and
#: ``tollhouse example serve``): the store's bounds (a soak run lowers them to see the
#: plateau soon) and the processing time of a scoring.
ENV_MAX_JOBS = EXAMPLE_MAX_JOBS.env
ENV_MAX_RESULTS = EXAMPLE_MAX_RESULTS.env
ENV_PROCESSING_SECONDS = EXAMPLE_PROCESSING_SECONDS.env


def processing_seconds(text: str | None) -> float:
    """``TOLLHOUSE_EXAMPLE_PROCESSING_SECONDS``'s value: seconds from 0 to 3600, 0 when
    unset or blank (parsed by its row in :data:`tollhouse.settings.TABLE`).

    Raises:
        ConfigError: anything else, naming the variable.
    """
    if text is None or not text.strip():
        return float(EXAMPLE_PROCESSING_SECONDS.default)
    return float(EXAMPLE_PROCESSING_SECONDS.parser.parse(text, ENV_PROCESSING_SECONDS))


def database_url_from_env(env: Mapping[str, str] | None = None) -> str:
    """``TOLLHOUSE_DATABASE_URL``, else tollhouse's default database (a SQLite file under
    ``./.tollhouse/``)."""
    env = os.environ if env is None else env
    text = env.get(DATABASE_URL.env, "").strip()
    return text or str(DATABASE_URL.default)


def create_app_from_env(
    env: Mapping[str, str] | None = None, *, database: AsyncEngine | str | None = None
) -> Starlette:
    """:func:`create_app` configured by the environment (``env``: ``os.environ`` by default).

    Reads ``TOLLHOUSE_EXAMPLE_MAX_JOBS`` and ``TOLLHOUSE_EXAMPLE_MAX_RESULTS`` (bounds per
    org and environment), ``TOLLHOUSE_EXAMPLE_PROCESSING_SECONDS`` (time a scoring takes)
    and, when ``database`` is None, ``TOLLHOUSE_DATABASE_URL``.

    Args:
        env: the environment.
        database: an engine (shared, e.g. the Tollhouse app's) or a URL; None for
            :func:`database_url_from_env`.

    Raises:
        ConfigError: a bound that is not a whole number ≥ 1, a processing time that is not
            0 to 3600 seconds, or an unsupported database URL.
    """
    env = os.environ if env is None else env
    # Every value is checked before an engine is made: a bad one costs no connection.
    max_jobs = positive_int(env.get(ENV_MAX_JOBS), ENV_MAX_JOBS) or MAX_JOBS_PER_ORG
    max_results = positive_int(env.get(ENV_MAX_RESULTS), ENV_MAX_RESULTS) or MAX_RESULTS_PER_ORG
    seconds = processing_seconds(env.get(ENV_PROCESSING_SECONDS))
    return create_app(
        database if database is not None else database_url_from_env(env),
        max_jobs_per_org=max_jobs,
        max_results_per_org=max_results,
        processing_seconds=seconds,
    )


def create_app(
    database: AsyncEngine | str,
    *,
    max_jobs_per_org: int = MAX_JOBS_PER_ORG,
    max_results_per_org: int = MAX_RESULTS_PER_ORG,
    processing_seconds: float = 0.0,
    clock: Clock | None = None,
) -> Starlette:
    """Build the example upstream on a database.

    Its lifespan brings the schema up to date at startup (tollhouse's migrations; a store
    used without a lifespan does it on its first request) and, when the app made the
    engine from a URL, disposes of it at shutdown.

    Args:
        database: an engine, which the caller keeps and disposes of (the Tollhouse app
            passes its own), or a database URL (``sqlite:///…``, ``postgresql://…``).
        max_jobs_per_org: jobs with criteria each org and environment keeps, about (the
            least recently changed go first).
        max_results_per_org: scoring results each org and environment keeps, about (the
            oldest go first).
        processing_seconds: how long a scoring takes (0 to 3600); see the module's notes.
        clock: returns the current time, timezone-aware; defaults to the system clock in UTC.

    Returns:
        A Starlette ASGI app.

    Raises:
        ConfigError: an unsupported database URL or a processing time out of range.
    """
    if not 0 <= processing_seconds <= MAX_PROCESSING_SECONDS:  # NaN fails this too
        raise ConfigError(
            f"processing_seconds must be from 0 to {MAX_PROCESSING_SECONDS:g}, "
            f"not {processing_seconds!r}"
        )
    owned = isinstance(database, str)
    if isinstance(database, str):
        from tollhouse.storage.engine import make_engine

        engine = make_engine(database)
    else:
        engine = database
    store = ExampleStore(
        engine, max_jobs_per_org=max_jobs_per_org, max_results_per_org=max_results_per_org
    )
    api = _ExampleApi(store, clock or _utc_now, processing_seconds)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            await store.prepare()
            yield
        finally:
            if owned:
                await engine.dispose()

    return Starlette(
        routes=api.routes(),
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
