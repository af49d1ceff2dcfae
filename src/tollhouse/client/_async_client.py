"""The asynchronous client: the same calls as :class:`~tollhouse.client.Client`, awaited.

Only the send loop, the waits and the bulk driver differ from the sync client; request
building, parsing, retry decisions, throttling and the bulk state machine are shared.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
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


class AsyncClient(ClientBase):
    """An asynchronous tollhouse API client (httpx); see :class:`~tollhouse.client.Client`
    for the behaviour and the arguments, which are the same except:

    Args:
        http_client: an ``httpx.AsyncClient`` to send with; not closed by :meth:`aclose`.
        sleep: an async wait, e.g. a fake for tests.

    Example::

        async with AsyncClient(api_key="sk_test_…", tenant_id="acme") as client:
            status = await client.rate_limit_status()
            async for outcome in client.score_many(candidates, state="run.state"):
                print(outcome.key, outcome.status, outcome.score)
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
        http_client: httpx.AsyncClient | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        on_throttle: Callable[[ThrottleEvent], None] | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
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
        self._http = http_client or httpx.AsyncClient(limits=limits)
        self._slots = asyncio.Semaphore(max_concurrency)
        self._sleep = sleep or asyncio.sleep

    @property
    def criteria(self) -> AsyncCriteriaApi:
        """Job posting criteria."""
        return AsyncCriteriaApi(self)

    @property
    def analytics(self) -> AsyncAnalyticsApi:
        """Analytics: scoring volume and the metric catalogue (docs/api-shapes.md)."""
        return AsyncAnalyticsApi(self)

    @property
    def call_counts(self) -> AsyncCallCountsApi:
        """Call counts (the call-counts shape, docs/api-shapes.md)."""
        return AsyncCallCountsApi(self)

    @property
    def events(self) -> AsyncEventsApi:
        """Product events."""
        return AsyncEventsApi(self)

    @property
    def keys(self) -> AsyncKeysApi:
        """The org's own API keys (root and manager keys)."""
        return AsyncKeysApi(self)

    @property
    def webhooks(self) -> AsyncWebhooksApi:
        """Webhook endpoints and deliveries (root and manager keys)."""
        return AsyncWebhooksApi(self)

    @property
    def limits(self) -> AsyncLimitsApi:
        """The org's effective limits (root and manager keys)."""
        return AsyncLimitsApi(self)

    # --- the send loop -------------------------------------------------------------------

    async def _call(self, op: Operation[T]) -> T:
        core = self._core
        call = core.start(op)
        while True:
            while (wait := core.throttle_wait(op)) > 0:
                await self._sleep(wait)
            try:
                args = core.next_attempt(call)
                request = self._http.build_request(**args, timeout=self._timeout)
                async with self._slots:
                    response = await self._http.send(request)
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
                await self._sleep(delay)

    async def _pages(self, pages: Pages[T]) -> AsyncIterator[T]:
        op: Operation[T] | None = pages.first
        while op is not None:
            page = await self._call(op)
            yield page
            op = pages.after(page)

    async def aclose(self) -> None:
        """Close the connections (unless the ``http_client`` was passed in)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- endpoints -----------------------------------------------------------------------

    async def health(self) -> m.Health:
        """``GET /healthz``: whether the server serves (no key needed)."""
        return await self._call(ops.health())

    async def rate_limit_status(self) -> m.RateLimitStatus:
        """``GET /v1/rate-limit/status``: every bucket and pool of the caller's org."""
        return await self._call(ops.rate_limit_status())

    async def score(
        self,
        application_id: str,
        job_id: str,
        candidate: Mapping[str, Any],
        *,
        extra: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> m.ScoreAccepted:
        """``POST /v1/score``; see :meth:`tollhouse.client.Client.score`."""
        request = ScoreRequest(application_id, job_id, candidate, extra or {})
        return await self._call(ops.score(request, idempotency_key))

    async def score_batch(
        self, items: Sequence[ScoreInput], *, idempotency_key: str | None = None
    ) -> m.ScoreBatchResult:
        """``POST /v1/score/batch``: queue 1–100 applications."""
        return await self._call(ops.score_batch(items, idempotency_key))

    async def get_score(self, scoring_job_id: str) -> m.ScoreJob:
        """``GET /v1/score/{scoringJobId}``."""
        return await self._call(ops.get_score(scoring_job_id))

    async def get_scores(self, scoring_job_ids: Sequence[str]) -> m.ScoreJobs:
        """``GET /v1/score?ids=``: up to 100 jobs in one request; see
        :meth:`tollhouse.client.Client.get_scores`."""
        return await self._call(ops.get_scores(scoring_job_ids))

    async def get_score_by_application(self, application_id: str) -> m.ScoreJob:
        """``GET /v1/score/application/{applicationId}``: the application's latest job."""
        return await self._call(ops.get_score_by_application(application_id))

    async def queue(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> m.QueuePage:
        """``GET /v1/queue``: the org's queue counts and one page of its jobs, newest first.

        Args:
            status: only jobs in this state (``queued``, ``running``, ``completed``,
                ``failed``).
            limit: jobs per page (1–100, default 20).
            cursor: ``next_cursor`` of the previous page.
        """
        return await self._call(ops.queue(status, limit, cursor))

    def iter_queue(
        self, *, status: str | None = None, limit: int | None = None
    ) -> AsyncIterator[m.QueuePage]:
        """Every page of ``GET /v1/queue``, following ``nextCursor``."""
        return self._pages(ops.queue_pages(status, limit))

    async def webhook_deliveries(self, job_id: str | None = None) -> list[m.WebhookDelivery]:
        """``GET /v1/webhooks/deliveries``: the org's deliveries (of one job), newest first."""
        return await self._call(ops.webhook_deliveries(job_id))

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
    ) -> AsyncGenerator[ScoreOutcome, None]:
        """Score many candidates; see :meth:`tollhouse.client.Client.score_many`.

        Up to ``max_concurrency`` submissions and polls run at once.

        Returns:
            An async generator of :class:`ScoreOutcome` (``async for``); ``aclose()`` it
            when stopping early, so the requests in flight are cancelled at once.
        """
        settings = BulkSettings(
            chunk_size, max_pending, wait and not webhook, poll_interval, max_poll_interval, job_id
        )
        return self._score_many(candidates, state, settings, key, on_progress)

    async def _perform(self, action: Submit | Poll) -> Any:
        try:
            if isinstance(action, Submit):
                return await self.score_batch(action.bodies, idempotency_key=action.idempotency_key)
            return await self.get_scores(action.scoring_job_ids)
        except ClientError as exc:
            return exc

    async def _score_many(
        self,
        candidates: Iterable[ScoreInput],
        state: str | os.PathLike[str] | None,
        settings: BulkSettings,
        key: Callable[[Mapping[str, Any]], str] | None,
        on_progress: Callable[[BulkProgress], None] | None,
    ) -> AsyncGenerator[ScoreOutcome, None]:
        clock = self._core.clock
        journal = Journal(state)
        tasks: dict[asyncio.Future[Any], Submit | Poll] = {}
        try:
            run = BulkRun(candidates, journal, settings, clock(), key=key, on_progress=on_progress)
            while True:
                action = None
                timeout: float | None = None
                while len(tasks) < self._max_concurrency:
                    action = run.next_action(clock())
                    if action is None:
                        break
                    if not isinstance(action, Submit | Poll):
                        timeout = action.seconds
                        break
                    tasks[asyncio.ensure_future(self._perform(action))] = action
                if not tasks:
                    if action is None:
                        return
                    await self._sleep(timeout if timeout is not None else settings.poll_interval)
                    continue
                done, _ = await asyncio.wait(
                    tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                fatal: BaseException | None = None
                # Submissions first: their accepted jobs must reach the journal even when
                # another answer of this round ends the run.
                for task in sorted(done, key=lambda t: not isinstance(tasks[t], Submit)):
                    performed = tasks.pop(task)
                    try:
                        outcomes = run.apply(performed, task.result(), clock())
                    except Exception as exc:
                        fatal = fatal or exc
                        continue
                    for outcome in outcomes:
                        yield outcome
                        run.delivered(outcome)
                if fatal is not None:
                    raise fatal
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            journal.close()


class AsyncCriteriaApi:
    """Job posting criteria (``client.criteria``); see :class:`~tollhouse.client.Client`."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def generate(self, job_id: str, title: str, description: str) -> m.JobCriteria:
        """``POST /v1/criteria/generate``."""
        return await self._c._call(ops.generate_criteria(job_id, title, description))

    async def questions(self, job_id: str, title: str, description: str) -> m.InterviewQuestions:
        """``POST /v1/criteria/questions``."""
        return await self._c._call(ops.generate_questions(job_id, title, description))

    async def get(self, job_id: str) -> m.JobCriteria:
        """``GET /v1/jobs/{jobId}/criteria``."""
        return await self._c._call(ops.get_criteria(job_id))

    async def add(
        self,
        job_id: str,
        name: str,
        *,
        description: str | None = None,
        weight: float | None = None,
    ) -> m.Criterion:
        """``POST /v1/jobs/{jobId}/criteria`` (not idempotent)."""
        return await self._c._call(ops.add_criterion(job_id, name, description, weight))

    async def update(
        self,
        job_id: str,
        criterion_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        weight: float | None = None,
    ) -> m.Criterion:
        """``PATCH /v1/criteria/{jobId}/{criterionId}``."""
        return await self._c._call(
            ops.update_criterion(job_id, criterion_id, name, description, weight)
        )

    async def update_many(self, job_id: str, changes: Iterable[Mapping[str, Any]]) -> m.JobCriteria:
        """``PATCH /v1/jobs/{jobId}/criteria``."""
        return await self._c._call(ops.update_criteria(job_id, changes))

    async def delete(self, job_id: str, criterion_id: str | None = None) -> None:
        """``DELETE /v1/criteria/{jobId}[/{criterionId}]``."""
        await self._c._call(ops.delete_criteria(job_id, criterion_id))

    async def archive(self, job_id: str) -> m.ArchiveResult:
        """``POST /v1/jobs/{jobId}/criteria/archive``."""
        return await self._c._call(ops.archive_criteria(job_id))


class AsyncAnalyticsApi:
    """Analytics (``client.analytics``): the scoring-volume and metrics catalogue shapes."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def scoring_volume(self, time_range: TimeRange = "7d") -> m.ScoringVolume:
        """``GET /v1/analytics/scoring-volume?timeRange=``."""
        return await self._c._call(ops.scoring_volume(time_range))

    async def fair_use(self, time_range: TimeRange = "24h") -> m.FairUse:
        """``GET /v1/analytics/fair-use?timeRange=``: every fair-use signal of the key's
        org and environment over the range ending now (value, threshold, status, action,
        the jobIds or keys involved, first and last seen); any role."""
        return await self._c._call(ops.fair_use(time_range))

    async def metric(
        self,
        name: str,
        *,
        time_start: datetime | str,
        time_end: datetime | str,
        page: int | None = None,
        page_size: int | None = None,
    ) -> m.MetricResult:
        """``GET /v1/analytics/{metric}``; see :meth:`tollhouse.client.AnalyticsApi.metric`."""
        return await self._c._call(ops.metric(name, time_start, time_end, page, page_size))

    def iter_metric(
        self,
        name: str,
        *,
        time_start: datetime | str,
        time_end: datetime | str,
        page_size: int | None = None,
    ) -> AsyncIterator[m.MetricResult]:
        """Every page of a paginated metric (``api_calls_log``), page 1 to the last; a
        metric that is not paginated is one page."""
        return self._c._pages(ops.metric_pages(name, time_start, time_end, page_size))


class AsyncCallCountsApi:
    """Call counts (``client.call_counts``): the call-counts shape."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def historical(
        self, *, start: Time | None = None, end: Time | None = None
    ) -> m.CallCounts:
        """``GET /call-counts/historical/``."""
        return await self._c._call(ops.historical(start, end))

    async def by_label(
        self,
        label: Label | str,
        *,
        start: Time | None = None,
        end: Time | None = None,
        amt: int | None = None,
        cursor: str | None = None,
    ) -> m.LabelCounts:
        """``GET /call-counts/historical/{label}/``: one page of series."""
        return await self._c._call(ops.by_label(label, start, end, amt, cursor))

    def iter_by_label(
        self,
        label: Label | str,
        *,
        start: Time | None = None,
        end: Time | None = None,
        amt: int | None = None,
    ) -> AsyncIterator[m.LabelCounts]:
        """Every page of a label, following ``next_cursor``.

        The end of the range is fixed when this is called (now, unless given), so every
        page describes the same range.
        """
        return self._c._pages(ops.label_pages(label, start, self._c._fixed_end(end), amt))

    async def by_scenario(
        self, reco_type: str, name: str, *, start: Time | None = None, end: Time | None = None
    ) -> m.CallCounts:
        """``GET /call-counts/historical/SCENARIOS/{reco_type}/{name}/``."""
        return await self._c._call(ops.by_scenario(reco_type, name, start, end))


class AsyncEventsApi:
    """Product events (``client.events``)."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def ingest(self, events: Iterable[EventInput]) -> m.EventsIngested:
        """``POST /v1/events``: store events (idempotent per id), 1,000 per request."""
        return ops.sum_ingested(
            [await self._c._call(ops.ingest_events(chunk)) for chunk in ops.event_chunks(events)]
        )


class AsyncLimitsApi:
    """The org's effective limits (``client.limits``): root and manager keys."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def get(self) -> OrgLimits:
        """``GET /v1/limits``: the org's effective limits — each bucket's policy limit and
        the org's, overrides marked (with the key overrides of this environment's keys) —
        and the pools; root and manager keys. Read-only: overrides are the provider's."""
        return await self._c._call(ops.limits())


class AsyncKeysApi:
    """The org's own API keys (``client.keys``): root and manager keys only, within the
    caller's org and environment."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def list(self) -> list[m.ApiKey]:
        """``GET /v1/keys``: the keys, newest first, with ``last_used_at`` (no secrets)."""
        return await self._c._call(ops.list_keys())

    async def create(
        self,
        *,
        name: str = "",
        role: str = "member",
        environment: str | None = None,
        expires_at: datetime | str | None = None,
    ) -> m.ApiKey:
        """``POST /v1/keys``: a new key; its ``secret`` is in this answer only. Never a
        role above the caller's, nor PRODUCTION from a SANDBOX key (403)."""
        return await self._c._call(ops.create_key(name, role, environment, expires_at))

    async def revoke(self, key_id: str) -> m.ApiKey:
        """``DELETE /v1/keys/{keyId}``: refused from then on."""
        return await self._c._call(ops.revoke_key(key_id))

    async def rotate(self, key_id: str, *, overlap_seconds: int | None = None) -> m.ApiKey:
        """``POST /v1/keys/{keyId}/rotate``: a new key (its ``secret`` once, ``replaces``
        the old one), the old one working ``overlap_seconds`` more (server default 1 day)."""
        return await self._c._call(ops.rotate_key(key_id, overlap_seconds))


class AsyncWebhooksApi:
    """Webhooks (``client.webhooks``): ``endpoints`` and ``deliveries``."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    @property
    def endpoints(self) -> AsyncWebhookEndpointsApi:
        """The org's webhook endpoints."""
        return AsyncWebhookEndpointsApi(self._c)

    @property
    def deliveries(self) -> AsyncWebhookDeliveriesApi:
        """Deliveries and their attempts."""
        return AsyncWebhookDeliveriesApi(self._c)


class AsyncWebhookEndpointsApi:
    """The org's webhook endpoints (``client.webhooks.endpoints``): root and manager keys."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def list(self) -> list[m.WebhookEndpoint]:
        """``GET /v1/webhooks/endpoints`` (no secrets)."""
        return await self._c._call(ops.list_endpoints())

    async def create(
        self, url: str, *, event_types: Sequence[str] | None = None
    ) -> m.WebhookEndpoint:
        """``POST /v1/webhooks/endpoints``: its ``whsec_`` ``secret`` is in this answer only."""
        return await self._c._call(ops.create_endpoint(url, event_types))

    async def update(
        self,
        endpoint_id: str,
        *,
        enabled: bool | None = None,
        event_types: Sequence[str] | None = None,
        every_event: bool = False,
    ) -> m.WebhookEndpoint:
        """``PATCH /v1/webhooks/endpoints/{endpointId}``: enable or disable it, filter its
        event types, or (``every_event``) clear the filter."""
        return await self._c._call(
            ops.update_endpoint(endpoint_id, enabled, event_types, every_event)
        )

    async def delete(self, endpoint_id: str) -> m.WebhookEndpoint:
        """``DELETE /v1/webhooks/endpoints/{endpointId}``: its pending deliveries end."""
        return await self._c._call(ops.delete_endpoint(endpoint_id))

    async def rotate_secret(
        self, endpoint_id: str, *, overlap_seconds: int | None = None
    ) -> m.WebhookEndpoint:
        """``POST …/rotate-secret``: a new ``secret`` (once); the old one signs too for
        ``overlap_seconds`` (server default 1 day)."""
        return await self._c._call(ops.rotate_endpoint_secret(endpoint_id, overlap_seconds))

    async def test(self, endpoint_id: str) -> m.WebhookDelivery:
        """``POST …/test``: a signed ``ping``, with its first attempt."""
        return await self._c._call(ops.ping_endpoint(endpoint_id))


class AsyncWebhookDeliveriesApi:
    """Webhook deliveries (``client.webhooks.deliveries``)."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def list(self, job_id: str | None = None) -> list[m.WebhookDelivery]:
        """``GET /v1/webhooks/deliveries``: newest first, with their attempts."""
        return await self._c._call(ops.webhook_deliveries(job_id))

    async def replay(self, delivery_id: str) -> m.WebhookDelivery:
        """``POST /v1/webhooks/deliveries/{deliveryId}/replay``: the same event (same
        ``webhook-id``) again, as a new delivery, with its first attempt."""
        return await self._c._call(ops.replay_delivery(delivery_id))
