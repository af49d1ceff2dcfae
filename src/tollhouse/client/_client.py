"""The synchronous client: the send loop and thin per-endpoint methods over ``_base``."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import httpx

from tollhouse.client import _base as ops
from tollhouse.client import _models as m
from tollhouse.client._admin_models import OrgLimits
from tollhouse.client._base import (
    ClientBase,
    Label,
    Operation,
    Pages,
    RetryEvent,
    ThrottleEvent,
    Time,
    TimeRange,
)
from tollhouse.client._bulk import BulkProgress, BulkRun, BulkSettings, Poll, ScoreOutcome, Submit
from tollhouse.client._errors import ClientError
from tollhouse.client._inputs import EventInput, ScoreInput, ScoreRequest
from tollhouse.client._journal import Journal
from tollhouse.client._retry import RetryPolicy

T = TypeVar("T")


class Client(ClientBase):
    """A synchronous tollhouse API client (httpx).

    Every call waits out 429s (``Retry-After`` plus jitter) and retries transient
    failures with exponential backoff, up to ``max_retries``; with ``throttle`` it also
    waits for an announced reset instead of sending into an exhausted window. At most
    ``max_concurrency`` requests are in flight at once, across threads sharing the client.

    Args:
        api_key: ``sk_test_…`` or ``sk_live_…``; default ``TOLLHOUSE_API_KEY``.
        base_url: one URL or several (round robin; an instance that fails is passed over
            for a few seconds and the request moves to the next: see docs/sdk.md);
            default ``TOLLHOUSE_URL`` (comma-separated for several), else
            ``http://127.0.0.1:8000``.
        tenant_id: sent as ``X-Tenant-Id`` (required by the product endpoints of the
            built-in policy); see also :meth:`with_tenant`.
        timeout: seconds per request attempt.
        max_retries: retries per call (overrides ``retry.max_retries``).
        max_concurrency: requests in flight at once.
        throttle: wait for the reset when ``X-RateLimit-Remaining`` reached 0.
        retry: the full retry policy.
        http_client: an ``httpx.Client`` to send with (event hooks, proxies, transports);
            it is not closed by :meth:`close`.
        on_retry: called with a :class:`RetryEvent` before each retry's wait.
        on_throttle: called with a :class:`ThrottleEvent` before each throttling wait.
        rng: randomness for jitter (tests pass a seeded one).
        sleep: how to wait (tests may pass a fake).
        clock: Unix time.

    Example::

        with Client(api_key="sk_test_…", tenant_id="acme") as client:
            client.criteria.generate("job_1", "Backend Engineer", "Python and SQL, 5 years.")
            accepted = client.score("app_1", "job_1", {"name": "Ada", "resume": "…"})
            job = client.get_score(accepted.scoring_job_id)
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | Sequence[str] | None = None,
        *,
        tenant_id: str | None = None,
        timeout: float = 30.0,
        max_retries: int | None = None,
        max_concurrency: int = 10,
        throttle: bool = True,
        retry: RetryPolicy | None = None,
        http_client: httpx.Client | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        on_throttle: Callable[[ThrottleEvent], None] | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        limits = self._configure(
            api_key,
            base_url,
            tenant_id=tenant_id,
            timeout=timeout,
            max_retries=max_retries,
            max_concurrency=max_concurrency,
            throttle=throttle,
            retry=retry,
            on_retry=on_retry,
            on_throttle=on_throttle,
            rng=rng,
            clock=clock,
            owns_http=http_client is None,
        )
        self._http = http_client or httpx.Client(limits=limits)
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._sleep = sleep or time.sleep

    @property
    def criteria(self) -> CriteriaApi:
        """Job posting criteria."""
        return CriteriaApi(self)

    @property
    def analytics(self) -> AnalyticsApi:
        """Analytics: scoring volume and the metric catalogue (docs/api-shapes.md)."""
        return AnalyticsApi(self)

    @property
    def call_counts(self) -> CallCountsApi:
        """Call counts (the call-counts shape, docs/api-shapes.md)."""
        return CallCountsApi(self)

    @property
    def events(self) -> EventsApi:
        """Product events."""
        return EventsApi(self)

    @property
    def keys(self) -> KeysApi:
        """The org's own API keys (root and manager keys)."""
        return KeysApi(self)

    @property
    def webhooks(self) -> WebhooksApi:
        """Webhook endpoints and deliveries (root and manager keys)."""
        return WebhooksApi(self)

    @property
    def limits(self) -> LimitsApi:
        """The org's effective limits (root and manager keys)."""
        return LimitsApi(self)

    # --- the send loop -------------------------------------------------------------------

    def _call(self, op: Operation[T]) -> T:
        core = self._core
        call = core.start(op)
        while True:
            while (wait := core.throttle_wait(op)) > 0:
                self._sleep(wait)
            try:
                args = core.next_attempt(call)
                request = self._http.build_request(**args, timeout=self._timeout)
                with self._slots:
                    response = self._http.send(request)
            except httpx.TransportError as exc:
                delay = core.after_failure(call, exc)
                if delay is None:
                    raise core.transport_error(call, exc) from exc
            except BaseException:
                core.abandoned(call)
                raise
            else:
                delay = core.after_answer(call, response)
                if delay is None:
                    return core.finish(call, response)
            if delay > 0:
                self._sleep(delay)

    def _pages(self, pages: Pages[T]) -> Iterator[T]:
        op: Operation[T] | None = pages.first
        while op is not None:
            page = self._call(op)
            yield page
            op = pages.after(page)

    def close(self) -> None:
        """Close the connections (unless the ``http_client`` was passed in)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- endpoints -----------------------------------------------------------------------

    def health(self) -> m.Health:
        """``GET /healthz``: whether the server serves (no key needed)."""
        return self._call(ops.health())

    def rate_limit_status(self) -> m.RateLimitStatus:
        """``GET /v1/rate-limit/status``: every bucket and pool of the caller's org."""
        return self._call(ops.rate_limit_status())

    def score(
        self,
        application_id: str,
        job_id: str,
        candidate: Mapping[str, Any],
        *,
        extra: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> m.ScoreAccepted:
        """``POST /v1/score``: queue one application for scoring (202).

        Args:
            application_id: your application's id.
            job_id: the job posting (its criteria must exist).
            candidate: at least ``name`` and ``resume``.
            extra: more top-level fields, passed on.
            idempotency_key: the same key returns the same job; by default a fresh one
                per call, so the client's own retries never queue a job twice.
        """
        request = ScoreRequest(application_id, job_id, candidate, extra or {})
        return self._call(ops.score(request, idempotency_key))

    def score_batch(
        self, items: Sequence[ScoreInput], *, idempotency_key: str | None = None
    ) -> m.ScoreBatchResult:
        """``POST /v1/score/batch``: queue 1–100 applications; invalid items are rejected
        one by one (the batch is a 422 only when every item is invalid)."""
        return self._call(ops.score_batch(items, idempotency_key))

    def get_score(self, scoring_job_id: str) -> m.ScoreJob:
        """``GET /v1/score/{scoringJobId}``: the job, with its result once completed."""
        return self._call(ops.get_score(scoring_job_id))

    def get_scores(self, scoring_job_ids: Sequence[str]) -> m.ScoreJobs:
        """``GET /v1/score?ids=``: up to 100 jobs in one request (one poll's cost).

        Args:
            scoring_job_ids: 1 to 100 ids (repeats count once).

        Returns:
            The jobs found, in the order asked, and the ids not found (unknown, or of
            another org or environment).
        """
        return self._call(ops.get_scores(scoring_job_ids))

    def get_score_by_application(self, application_id: str) -> m.ScoreJob:
        """``GET /v1/score/application/{applicationId}``: the application's latest job."""
        return self._call(ops.get_score_by_application(application_id))

    def queue(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> m.QueuePage:
        """``GET /v1/queue``: the org's queue counts and one page of its jobs, newest first.

        Args:
            status: only jobs in this state (``queued``, ``running``, ``completed``,
                ``failed``).
            limit: jobs per page (1–100, default 20).
            cursor: ``next_cursor`` of the previous page.
        """
        return self._call(ops.queue(status, limit, cursor))

    def iter_queue(
        self, *, status: str | None = None, limit: int | None = None
    ) -> Iterator[m.QueuePage]:
        """Every page of ``GET /v1/queue``, following ``nextCursor``."""
        return self._pages(ops.queue_pages(status, limit))

    def webhook_deliveries(self, job_id: str | None = None) -> list[m.WebhookDelivery]:
        """``GET /v1/webhooks/deliveries``: the org's deliveries (of one job), newest first."""
        return self._call(ops.webhook_deliveries(job_id))

    def score_many(
        self,
        candidates: Iterable[ScoreInput],
        *,
        state: str | os.PathLike[str] | None = None,
        job_id: str | None = None,
        chunk_size: int = 100,
        max_pending: int = 1000,
        wait: bool = True,
        webhook: bool = False,
        poll_interval: float = 1.0,
        max_poll_interval: float = 30.0,
        key: Callable[[Mapping[str, Any]], str] | None = None,
        on_progress: Callable[[BulkProgress], None] | None = None,
    ) -> Generator[ScoreOutcome, None, None]:
        """Score many candidates within the limits, yielding outcomes as jobs finish.

        Candidates go in batches (``POST /v1/score/batch``) while fewer than
        ``max_pending`` jobs are unfinished; finished jobs are yielded as status reads
        find them, up to 100 jobs per read (``GET /v1/score?ids=``). With ``webhook``,
        it only submits and the caller's webhook receiver collects the results. With
        ``state``, the run is resumable: run it again with the same file and candidates
        already accepted are not sent again (see ``docs/sdk.md``).

        Args:
            candidates: score requests (read lazily: a generator over a file is fine).
            state: path of the state file (created when missing).
            job_id: ``jobId`` for candidates without one.
            chunk_size: candidates per batch request (1–100).
            max_pending: unfinished jobs allowed at once.
            wait: learn each job's outcome; False is the same as ``webhook=True``.
            webhook: only submit: yield ``queued`` outcomes (with their
                ``scoring_job_id``) and leave the results to your webhook receiver.
            poll_interval: shortest wait before polling a job, and between two rounds
                of status reads, in seconds.
            max_poll_interval: longest wait between polls of one job.
            key: a candidate's identity for resuming (default ``jobId/applicationId``).
            on_progress: called with the counts after every step.

        Returns:
            A generator of :class:`ScoreOutcome`; closing it early is safe (outcomes not
            yet taken are handed out again by a resumed run).
        """
        settings = BulkSettings(
            chunk_size, max_pending, wait and not webhook, poll_interval, max_poll_interval, job_id
        )
        return self._score_many(candidates, state, settings, key, on_progress)

    def _score_many(
        self,
        candidates: Iterable[ScoreInput],
        state: str | os.PathLike[str] | None,
        settings: BulkSettings,
        key: Callable[[Mapping[str, Any]], str] | None,
        on_progress: Callable[[BulkProgress], None] | None,
    ) -> Generator[ScoreOutcome, None, None]:
        clock = self._core.clock
        journal = Journal(state)
        try:
            run = BulkRun(candidates, journal, settings, clock(), key=key, on_progress=on_progress)
            while (action := run.next_action(clock())) is not None:
                if not isinstance(action, Submit | Poll):
                    # One action at a time here, so a wait always has a length.
                    self._sleep(
                        action.seconds if action.seconds is not None else settings.poll_interval
                    )
                    continue
                result: Any
                try:
                    if isinstance(action, Submit):
                        result = self.score_batch(
                            action.bodies, idempotency_key=action.idempotency_key
                        )
                    else:
                        result = self.get_scores(action.scoring_job_ids)
                except ClientError as exc:
                    result = exc
                for outcome in run.apply(action, result, clock()):
                    yield outcome
                    run.delivered(outcome)
        finally:
            journal.close()


class CriteriaApi:
    """Job posting criteria (``client.criteria``)."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def generate(self, job_id: str, title: str, description: str) -> m.JobCriteria:
        """``POST /v1/criteria/generate``: derive weighted criteria from a posting
        (replacing the job's criteria)."""
        return self._c._call(ops.generate_criteria(job_id, title, description))

    def questions(self, job_id: str, title: str, description: str) -> m.InterviewQuestions:
        """``POST /v1/criteria/questions``: interview questions for a posting."""
        return self._c._call(ops.generate_questions(job_id, title, description))

    def get(self, job_id: str) -> m.JobCriteria:
        """``GET /v1/jobs/{jobId}/criteria``."""
        return self._c._call(ops.get_criteria(job_id))

    def add(
        self,
        job_id: str,
        name: str,
        *,
        description: str | None = None,
        weight: float | None = None,
    ) -> m.Criterion:
        """``POST /v1/jobs/{jobId}/criteria``: add one criterion (not retried after it may
        have been sent: it is not idempotent)."""
        return self._c._call(ops.add_criterion(job_id, name, description, weight))

    def update(
        self,
        job_id: str,
        criterion_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        weight: float | None = None,
    ) -> m.Criterion:
        """``PATCH /v1/criteria/{jobId}/{criterionId}``: change the fields given."""
        return self._c._call(ops.update_criterion(job_id, criterion_id, name, description, weight))

    def update_many(self, job_id: str, changes: Iterable[Mapping[str, Any]]) -> m.JobCriteria:
        """``PATCH /v1/jobs/{jobId}/criteria``: ``[{"id", "name"?, "description"?,
        "weight"?}, …]``, all or nothing."""
        return self._c._call(ops.update_criteria(job_id, changes))

    def delete(self, job_id: str, criterion_id: str | None = None) -> None:
        """``DELETE /v1/criteria/{jobId}[/{criterionId}]``: one criterion, or all."""
        self._c._call(ops.delete_criteria(job_id, criterion_id))

    def archive(self, job_id: str) -> m.ArchiveResult:
        """``POST /v1/jobs/{jobId}/criteria/archive``."""
        return self._c._call(ops.archive_criteria(job_id))


class AnalyticsApi:
    """Analytics (``client.analytics``): the scoring-volume and metrics catalogue shapes."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def scoring_volume(self, time_range: TimeRange = "7d") -> m.ScoringVolume:
        """``GET /v1/analytics/scoring-volume?timeRange=``: completed and failed jobs."""
        return self._c._call(ops.scoring_volume(time_range))

    def fair_use(self, time_range: TimeRange = "24h") -> m.FairUse:
        """``GET /v1/analytics/fair-use?timeRange=``: every fair-use signal of the key's
        org and environment over the range ending now (value, threshold, status, action,
        the jobIds or keys involved, first and last seen); any role."""
        return self._c._call(ops.fair_use(time_range))

    def metric(
        self,
        name: str,
        *,
        time_start: datetime | str,
        time_end: datetime | str,
        page: int | None = None,
        page_size: int | None = None,
    ) -> m.MetricResult:
        """``GET /v1/analytics/{metric}``: one metric of the analytics catalogue.

        Args:
            name: e.g. ``flow_runs``, ``tokens_cost``, ``api_calls_log``.
            time_start: aware datetime or ISO 8601 with offset.
            time_end: likewise; after ``time_start``.
            page: page of a paginated metric (1-based).
            page_size: items per page (1–200).
        """
        return self._c._call(ops.metric(name, time_start, time_end, page, page_size))

    def iter_metric(
        self,
        name: str,
        *,
        time_start: datetime | str,
        time_end: datetime | str,
        page_size: int | None = None,
    ) -> Iterator[m.MetricResult]:
        """Every page of a paginated metric (``api_calls_log``), page 1 to the last; a
        metric that is not paginated is one page."""
        return self._c._pages(ops.metric_pages(name, time_start, time_end, page_size))


class CallCountsApi:
    """Call counts (``client.call_counts``): the call-counts shape; roles root and manager
    (scenarios also backend)."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def historical(self, *, start: Time | None = None, end: Time | None = None) -> m.CallCounts:
        """``GET /call-counts/historical/``: the org's calls over time (≤ 100 points)."""
        return self._c._call(ops.historical(start, end))

    def by_label(
        self,
        label: Label | str,
        *,
        start: Time | None = None,
        end: Time | None = None,
        amt: int | None = None,
        cursor: str | None = None,
    ) -> m.LabelCounts:
        """``GET /call-counts/historical/{label}/``: one page of series."""
        return self._c._call(ops.by_label(label, start, end, amt, cursor))

    def iter_by_label(
        self,
        label: Label | str,
        *,
        start: Time | None = None,
        end: Time | None = None,
        amt: int | None = None,
    ) -> Iterator[m.LabelCounts]:
        """Every page of a label, following ``next_cursor``.

        The end of the range is fixed when this is called (now, unless given), so every
        page describes the same range.
        """
        return self._c._pages(ops.label_pages(label, start, self._c._fixed_end(end), amt))

    def by_scenario(
        self, reco_type: str, name: str, *, start: Time | None = None, end: Time | None = None
    ) -> m.CallCounts:
        """``GET /call-counts/historical/SCENARIOS/{reco_type}/{name}/``."""
        return self._c._call(ops.by_scenario(reco_type, name, start, end))


class EventsApi:
    """Product events (``client.events``)."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def ingest(self, events: Iterable[EventInput]) -> m.EventsIngested:
        """``POST /v1/events``: store events (idempotent per id), 1,000 per request."""
        return ops.sum_ingested(
            self._c._call(ops.ingest_events(chunk)) for chunk in ops.event_chunks(events)
        )


class LimitsApi:
    """The org's effective limits (``client.limits``): root and manager keys."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def get(self) -> OrgLimits:
        """``GET /v1/limits``: the org's effective limits — each bucket's policy limit and
        the org's, overrides marked (with the key overrides of this environment's keys) —
        and the pools; root and manager keys. Read-only: overrides are the provider's."""
        return self._c._call(ops.limits())


class KeysApi:
    """The org's own API keys (``client.keys``): root and manager keys only, within the
    caller's org and environment."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def list(self) -> list[m.ApiKey]:
        """``GET /v1/keys``: the keys, newest first, with ``last_used_at`` (no secrets)."""
        return self._c._call(ops.list_keys())

    def create(
        self,
        *,
        name: str = "",
        role: str = "member",
        environment: str | None = None,
        expires_at: datetime | str | None = None,
    ) -> m.ApiKey:
        """``POST /v1/keys``: a new key; its ``secret`` is in this answer only. Never a
        role above the caller's, nor PRODUCTION from a SANDBOX key (403)."""
        return self._c._call(ops.create_key(name, role, environment, expires_at))

    def revoke(self, key_id: str) -> m.ApiKey:
        """``DELETE /v1/keys/{keyId}``: refused from then on."""
        return self._c._call(ops.revoke_key(key_id))

    def rotate(self, key_id: str, *, overlap_seconds: int | None = None) -> m.ApiKey:
        """``POST /v1/keys/{keyId}/rotate``: a new key (its ``secret`` once, ``replaces``
        the old one), the old one working ``overlap_seconds`` more (server default 1 day)."""
        return self._c._call(ops.rotate_key(key_id, overlap_seconds))


class WebhooksApi:
    """Webhooks (``client.webhooks``): ``endpoints`` and ``deliveries``."""

    def __init__(self, client: Client) -> None:
        self._c = client

    @property
    def endpoints(self) -> WebhookEndpointsApi:
        """The org's webhook endpoints."""
        return WebhookEndpointsApi(self._c)

    @property
    def deliveries(self) -> WebhookDeliveriesApi:
        """Deliveries and their attempts."""
        return WebhookDeliveriesApi(self._c)


class WebhookEndpointsApi:
    """The org's webhook endpoints (``client.webhooks.endpoints``): root and manager keys."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def list(self) -> list[m.WebhookEndpoint]:
        """``GET /v1/webhooks/endpoints`` (no secrets)."""
        return self._c._call(ops.list_endpoints())

    def create(self, url: str, *, event_types: Sequence[str] | None = None) -> m.WebhookEndpoint:
        """``POST /v1/webhooks/endpoints``: its ``whsec_`` ``secret`` is in this answer only."""
        return self._c._call(ops.create_endpoint(url, event_types))

    def update(
        self,
        endpoint_id: str,
        *,
        enabled: bool | None = None,
        event_types: Sequence[str] | None = None,
        every_event: bool = False,
    ) -> m.WebhookEndpoint:
        """``PATCH /v1/webhooks/endpoints/{endpointId}``: enable or disable it, filter its
        event types, or (``every_event``) clear the filter."""
        return self._c._call(ops.update_endpoint(endpoint_id, enabled, event_types, every_event))

    def delete(self, endpoint_id: str) -> m.WebhookEndpoint:
        """``DELETE /v1/webhooks/endpoints/{endpointId}``: its pending deliveries end."""
        return self._c._call(ops.delete_endpoint(endpoint_id))

    def rotate_secret(
        self, endpoint_id: str, *, overlap_seconds: int | None = None
    ) -> m.WebhookEndpoint:
        """``POST …/rotate-secret``: a new ``secret`` (once); the old one signs too for
        ``overlap_seconds`` (server default 1 day)."""
        return self._c._call(ops.rotate_endpoint_secret(endpoint_id, overlap_seconds))

    def test(self, endpoint_id: str) -> m.WebhookDelivery:
        """``POST …/test``: a signed ``ping``, with its first attempt."""
        return self._c._call(ops.ping_endpoint(endpoint_id))


class WebhookDeliveriesApi:
    """Webhook deliveries (``client.webhooks.deliveries``)."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def list(self, job_id: str | None = None) -> list[m.WebhookDelivery]:
        """``GET /v1/webhooks/deliveries``: newest first, with their attempts."""
        return self._c._call(ops.webhook_deliveries(job_id))

    def replay(self, delivery_id: str) -> m.WebhookDelivery:
        """``POST /v1/webhooks/deliveries/{deliveryId}/replay``: the same event (same
        ``webhook-id``) again, as a new delivery, with its first attempt."""
        return self._c._call(ops.replay_delivery(delivery_id))
