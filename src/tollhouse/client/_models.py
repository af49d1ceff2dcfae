"""Typed response models (frozen dataclasses) and the parse layer that builds them.

Field names are the wire names in snake case (``scoringJobId`` → ``scoring_job_id``);
times are aware UTC datetimes; every top-level model keeps the body it came from in
``raw`` (left out of ``repr`` and equality), so fields a newer server adds are never lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tollhouse.client._parse import Fields


def _raw() -> Any:
    """A ``raw`` field: the body as received, out of ``repr`` and equality."""
    return field(default_factory=dict, repr=False, compare=False)


# --- rate limits (partner rate-limit status + scoring API shapes) -----------------------


@dataclass(frozen=True, slots=True)
class BucketStatus:
    """One bucket in the ``buckets`` object (the partner rate-limit status shape).

    Attributes:
        limit: requests allowed per window.
        remaining: requests left in the current window.
        reset_at: Unix time the window resets.
        reset_in_seconds: seconds until then.
        shadow: a shadow bucket counts but never denies.
        shadow_denied: requests a shadow bucket would have denied (shadow buckets only).
    """

    limit: int
    remaining: int
    reset_at: int
    reset_in_seconds: int
    shadow: bool = False
    shadow_denied: int | None = None


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """An in-flight pool (e.g. ``criteria_ai_inflight``; the partner rate-limit status shape).

    Attributes:
        limit: slots.
        active: slots held now.
        retry_after_seconds: estimated seconds until a slot frees (0 when one is free).
    """

    limit: int
    active: int
    retry_after_seconds: int


@dataclass(frozen=True, slots=True)
class Category:
    """One entry of ``categories`` (the scoring API shape).

    Attributes:
        category: the bucket's machine name.
        display_name: its name for people.
        endpoints: the endpoint patterns counted against it.
        limit: requests allowed per window.
        used: requests counted in the current window.
        remaining: requests left in the current window.
        reset_at: Unix time the window resets (0 if nothing was counted yet).
        window_seconds: the window's length.
    """

    category: str
    display_name: str
    endpoints: tuple[str, ...]
    limit: int
    used: int
    remaining: int
    reset_at: int
    window_seconds: int


@dataclass(frozen=True, slots=True)
class RateLimitStatus:
    """``GET /v1/rate-limit/status``: both documented shapes in one body.

    Attributes:
        partner_id: the caller's org.
        environment: ``SANDBOX`` or ``PRODUCTION``.
        generated_at: when the server built the answer.
        degraded: True while limits are enforced locally (Redis away); values are estimates.
        buckets: per-bucket status, by bucket name (the partner rate-limit status shape).
        pools: in-flight pools, by pool name.
        categories: every bucket as a category (the scoring API shape).
        raw: the body as received.
    """

    partner_id: str
    environment: str
    generated_at: datetime
    degraded: bool
    buckets: Mapping[str, BucketStatus]
    pools: Mapping[str, PoolStatus]
    categories: tuple[Category, ...]
    raw: Mapping[str, Any] = _raw()


_STATUS_FIELDS = frozenset(
    {"partnerId", "environment", "generatedAt", "degraded", "buckets", "categories", "timestamp"}
)


def parse_rate_limit_status(f: Fields) -> RateLimitStatus:
    buckets = {}
    for name, value in f.obj("buckets").data.items():
        b = Fields(value, f"buckets.{name}", f.body)
        buckets[name] = BucketStatus(
            limit=b.integer("limit"),
            remaining=b.integer("remaining"),
            reset_at=b.integer("resetAt"),
            reset_in_seconds=b.integer("resetInSeconds"),
            shadow=b.flag("shadow", False),
            shadow_denied=b.opt_integer("shadowDenied"),
        )
    # Pools sit at the top level under their own names (e.g. criteria_ai_inflight):
    # any other object with an ``active`` count is one.
    pools = {}
    for name, value in f.data.items():
        if name not in _STATUS_FIELDS and isinstance(value, Mapping) and "active" in value:
            p = Fields(value, name, f.body)
            pools[name] = PoolStatus(
                limit=p.integer("limit"),
                active=p.integer("active"),
                retry_after_seconds=p.integer("retryAfterSeconds"),
            )
    categories = tuple(
        Category(
            category=c.text("category"),
            display_name=c.text("displayName"),
            endpoints=c.texts("endpoints"),
            limit=c.integer("limit"),
            used=c.integer("used"),
            remaining=c.integer("remaining"),
            reset_at=c.integer("resetAt"),
            window_seconds=c.integer("windowSeconds"),
        )
        for c in (f.objects("categories") if f.has("categories") else [])
    )
    return RateLimitStatus(
        partner_id=f.text("partnerId"),
        environment=f.text("environment"),
        generated_at=f.when("generatedAt"),
        degraded=f.flag("degraded", False),
        buckets=buckets,
        pools=pools,
        categories=categories,
        raw=dict(f.data),
    )


# --- scoring jobs (the scoring API shape) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    """An error inside a successful body: a rejected batch item or a failed job.

    Attributes:
        code: machine-readable code, e.g. ``VALIDATION_FAILED``.
        message: what went wrong.
        status: the HTTP status it stands for, when known.
        type: the envelope's ``type`` URI, when given.
        request_id: the request it came from, when given.
    """

    code: str
    message: str
    status: int | None = None
    type: str | None = None
    request_id: str | None = None


def parse_error_detail(f: Fields) -> ErrorDetail:
    return ErrorDetail(
        code=f.opt_text("code") or "ERROR",
        message=f.opt_text("message") or "",
        status=f.opt_integer("status"),
        type=f.opt_text("type"),
        request_id=f.opt_text("requestId"),
    )


@dataclass(frozen=True, slots=True)
class ScoreAccepted:
    """The 202 of ``POST /v1/score`` (and each accepted batch item).

    Attributes:
        scoring_job_id: the job's id, to poll or to match a webhook.
        status: ``queued``.
        queue_position: 1-based position among the org's queued jobs.
        estimated_wait_seconds: the server's estimate until the job starts (None while
            no worker is running on the server: no estimate holds).
        replayed: True when an ``Idempotency-Key`` matched an earlier request: this is
            that request's job, not a new one.
    """

    scoring_job_id: str
    status: str
    queue_position: int
    estimated_wait_seconds: int | None
    replayed: bool = False


def parse_score_accepted(f: Fields, replayed: bool = False) -> ScoreAccepted:
    return ScoreAccepted(
        scoring_job_id=f.text("scoringJobId"),
        status=f.text("status"),
        queue_position=f.integer("queuePosition"),
        estimated_wait_seconds=f.opt_integer("estimatedWaitSeconds"),
        replayed=replayed,
    )


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One item of a batch answer: accepted (with its job) or rejected (with an error).

    Attributes:
        index: the item's position in the request.
        accepted: the job, when accepted.
        error: why it was rejected, when rejected.
    """

    index: int
    accepted: ScoreAccepted | None = None
    error: ErrorDetail | None = None

    @property
    def ok(self) -> bool:
        """Whether the item was accepted."""
        return self.accepted is not None


@dataclass(frozen=True, slots=True)
class ScoreBatchResult:
    """The 202 of ``POST /v1/score/batch``.

    Attributes:
        results: one per item, in request order.
        accepted: items accepted.
        rejected: items rejected.
        replayed: True when an ``Idempotency-Key`` replayed an earlier batch.
        raw: the body as received.
    """

    results: tuple[BatchItem, ...]
    accepted: int
    rejected: int
    replayed: bool = False
    raw: Mapping[str, Any] = _raw()


def parse_score_batch(f: Fields, replayed: bool = False) -> ScoreBatchResult:
    items = []
    for item in f.objects("results"):
        index = item.integer("index")
        if item.opt_text("status") == "error":
            err = item.opt_obj("error")
            detail = (
                parse_error_detail(err) if err is not None else ErrorDetail("ERROR", "rejected")
            )
            items.append(BatchItem(index, error=detail))
        else:
            items.append(BatchItem(index, accepted=parse_score_accepted(item, replayed)))
    return ScoreBatchResult(
        results=tuple(items),
        accepted=f.integer("accepted"),
        rejected=f.integer("rejected"),
        replayed=replayed,
        raw=dict(f.data),
    )


#: Job states after which nothing changes.
FINAL_STATUSES = frozenset({"completed", "failed"})


@dataclass(frozen=True, slots=True)
class ScoreJob:
    """A scoring job as ``GET /v1/score/{scoringJobId}`` shows it (webhooks carry the same).

    Attributes:
        scoring_job_id: the job's id.
        status: ``queued``, ``running``, ``completed`` or ``failed``.
        application_id: the application scored.
        job_id: the job posting it was scored against.
        attempts: attempts so far.
        created_at: when it was accepted.
        started_at: when its latest attempt started.
        completed_at: when it completed.
        failed_at: when it failed for good.
        queue_position: while queued.
        estimated_wait_seconds: while queued.
        next_attempt_at: while waiting to retry.
        result: the scoring result (the upstream's body) once completed.
        error: why it failed, once failed.
        raw: the body as received.
    """

    scoring_job_id: str
    status: str
    application_id: str | None
    job_id: str | None
    attempts: int
    created_at: datetime | None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    queue_position: int | None = None
    estimated_wait_seconds: int | None = None
    next_attempt_at: datetime | None = None
    result: Mapping[str, Any] | None = None
    error: ErrorDetail | None = None
    raw: Mapping[str, Any] = _raw()

    @property
    def done(self) -> bool:
        """Whether the job has finished (completed or failed)."""
        return self.status in FINAL_STATUSES

    @property
    def score(self) -> float | None:
        """The overall score of a completed job, when its result has a numeric ``score``."""
        value = self.result.get("score") if self.result is not None else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return None


def parse_score_job(f: Fields) -> ScoreJob:
    error = None
    if f.has("error"):
        raw_error = f.data["error"]
        error = (
            parse_error_detail(f.obj("error"))
            if isinstance(raw_error, Mapping)
            else ErrorDetail("ERROR", str(raw_error))
        )
    return ScoreJob(
        scoring_job_id=f.text("scoringJobId"),
        status=f.text("status"),
        application_id=f.opt_text("applicationId"),
        job_id=f.opt_text("jobId"),
        attempts=f.opt_integer("attempts") or 0,
        created_at=f.opt_when("createdAt"),
        started_at=f.opt_when("startedAt"),
        completed_at=f.opt_when("completedAt"),
        failed_at=f.opt_when("failedAt"),
        queue_position=f.opt_integer("queuePosition"),
        estimated_wait_seconds=f.opt_integer("estimatedWaitSeconds"),
        next_attempt_at=f.opt_when("nextAttemptAt"),
        result=f.mapping("result") if f.has("result") else None,
        error=error,
        raw=dict(f.data),
    )


@dataclass(frozen=True, slots=True)
class QueueSummary:
    """The org's queue in ``GET /v1/queue``'s ``queue`` object.

    Attributes:
        queued: the org's jobs waiting now.
        running: the org's jobs running now.
        cap: how many of the org's jobs may run at once.
        mean_processing_seconds: the measured mean time a job runs (None when unknown).
        estimated_wait_seconds: the wait a job submitted now would be quoted (None
            while no worker is running on the server).
    """

    queued: int
    running: int
    cap: int
    mean_processing_seconds: float | None
    estimated_wait_seconds: float | None


@dataclass(frozen=True, slots=True)
class ScoreJobs:
    """``GET /v1/score?ids=``: many jobs' status in one call.

    Attributes:
        data: the jobs found, in the order asked, as ``GET /v1/score/{scoringJobId}``
            shows each.
        not_found: the ids asked for that the key's org and environment have no job of.
        raw: the body as received.
    """

    data: tuple[ScoreJob, ...]
    not_found: tuple[str, ...]
    raw: Mapping[str, Any] = _raw()


def parse_score_jobs(f: Fields) -> ScoreJobs:
    return ScoreJobs(
        data=tuple(parse_score_job(j) for j in f.objects("data")),
        not_found=f.texts("notFound"),
        raw=dict(f.data),
    )


@dataclass(frozen=True, slots=True)
class QueuePage:
    """One page of ``GET /v1/queue``: the queue's counts and the org's jobs, newest first.

    Attributes:
        queue: the org's counts now.
        data: this page's jobs, as ``GET /v1/score/{scoringJobId}`` shows each.
        has_more: whether more pages follow.
        next_cursor: the cursor of the next page (None on the last).
        raw: the body as received.
    """

    queue: QueueSummary
    data: tuple[ScoreJob, ...]
    has_more: bool
    next_cursor: str | None
    raw: Mapping[str, Any] = _raw()


def parse_queue_page(f: Fields) -> QueuePage:
    q = f.obj("queue")
    return QueuePage(
        queue=QueueSummary(
            queued=q.integer("queued"),
            running=q.integer("running"),
            cap=q.integer("cap"),
            mean_processing_seconds=q.opt_number("meanProcessingSeconds"),
            estimated_wait_seconds=q.opt_number("estimatedWaitSeconds"),
        ),
        data=tuple(parse_score_job(j) for j in f.objects("data")),
        has_more=f.flag("hasMore"),
        next_cursor=f.opt_text("nextCursor"),
        raw=dict(f.data),
    )


@dataclass(frozen=True, slots=True)
class Health:
    """``GET /healthz`` (no key needed).

    Attributes:
        status: ``ok`` while the server serves.
        raw: the body as received.
    """

    status: str
    raw: Mapping[str, Any] = _raw()

    @property
    def ok(self) -> bool:
        """Whether the server says it is healthy."""
        return self.status == "ok"


def parse_health(f: Fields) -> Health:
    return Health(status=f.text("status"), raw=dict(f.data))


# --- criteria (the example upstream) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Criterion:
    """A weighted criterion of a job posting (also the shape of an interview question).

    Attributes:
        id: stable id (``crit_…``; ``q_…`` for questions).
        name: short name.
        description: what it means (for a question: the question).
        weight: its share of the overall score.
    """

    id: str
    name: str
    description: str
    weight: float


def parse_criterion(f: Fields) -> Criterion:
    return Criterion(
        id=f.text("id"),
        name=f.text("name"),
        description=f.opt_text("description") or "",
        weight=f.number("weight"),
    )


@dataclass(frozen=True, slots=True)
class JobCriteria:
    """A job posting's criteria.

    Attributes:
        job_id: the job posting.
        criteria: its criteria.
        archived: whether the posting's criteria are archived.
        raw: the body as received.
    """

    job_id: str
    criteria: tuple[Criterion, ...]
    archived: bool = False
    raw: Mapping[str, Any] = _raw()


def parse_job_criteria(f: Fields) -> JobCriteria:
    return JobCriteria(
        job_id=f.text("jobId"),
        criteria=tuple(parse_criterion(c) for c in f.objects("criteria")),
        archived=f.flag("archived", False),
        raw=dict(f.data),
    )


@dataclass(frozen=True, slots=True)
class InterviewQuestions:
    """``POST /v1/criteria/questions``.

    Attributes:
        job_id: the job posting.
        questions: the questions (``description`` holds the question's text).
        raw: the body as received.
    """

    job_id: str
    questions: tuple[Criterion, ...]
    raw: Mapping[str, Any] = _raw()


def parse_questions(f: Fields) -> InterviewQuestions:
    return InterviewQuestions(
        job_id=f.text("jobId"),
        questions=tuple(parse_criterion(q) for q in f.objects("questions")),
        raw=dict(f.data),
    )


@dataclass(frozen=True, slots=True)
class ArchiveResult:
    """``POST /v1/jobs/{jobId}/criteria/archive``.

    Attributes:
        job_id: the job posting.
        archived: True.
        archived_at: when it was (first) archived.
    """

    job_id: str
    archived: bool
    archived_at: datetime | None


def parse_archive(f: Fields) -> ArchiveResult:
    return ArchiveResult(
        job_id=f.text("jobId"), archived=f.flag("archived"), archived_at=f.opt_when("archivedAt")
    )


# --- analytics (scoring-volume, call-counts, metrics catalogue) -------------------------


@dataclass(frozen=True, slots=True)
class VolumePoint:
    """One bucket of scoring volume.

    Attributes:
        timestamp: the bucket's start.
        total: completed + failed.
        completed: jobs that completed.
        failed: jobs that failed.
    """

    timestamp: datetime
    total: int
    completed: int
    failed: int


@dataclass(frozen=True, slots=True)
class ScoringVolume:
    """``GET /v1/analytics/scoring-volume`` (the scoring-volume shape).

    Attributes:
        period_start: start of the period.
        period_end: end of the period (now).
        granularity: ``minute``, ``hour`` or ``day``.
        data: every bucket of the period, zeros included.
        raw: the body as received.
    """

    period_start: datetime
    period_end: datetime
    granularity: str
    data: tuple[VolumePoint, ...]
    raw: Mapping[str, Any] = _raw()


def parse_scoring_volume(f: Fields) -> ScoringVolume:
    period = f.obj("period")
    return ScoringVolume(
        period_start=period.when("start"),
        period_end=period.when("end"),
        granularity=f.text("granularity"),
        data=tuple(
            VolumePoint(
                timestamp=p.when("timestamp"),
                total=p.integer("total"),
                completed=p.integer("completed"),
                failed=p.integer("failed"),
            )
            for p in f.objects("data")
        ),
        raw=dict(f.data),
    )


@dataclass(frozen=True, slots=True)
class FairUseSubject:
    """A jobId or key involved in a fair-use signal.

    Attributes:
        id: the jobId or key id.
        count: how often it was involved (generations, polls, early retries…).
    """

    id: str
    count: float


@dataclass(frozen=True, slots=True)
class FairUseSignal:
    """One fair-use signal over the range (docs/analytics.md#fair-use).

    Attributes:
        signal: e.g. ``regeneration_loop``, ``polling_instead_of_webhooks``.
        value: what was measured (a count, a ratio or a share, per signal).
        threshold: the policy's threshold: above it the signal is ``flagged``.
        status: ``ok``, ``watch`` (above half the threshold) or ``flagged``.
        action: ``flag`` or ``throttle`` (the policy's action once flagged).
        involved: the jobIds or keys involved, most involved first (at most 20).
        involved_count: how many were involved in all.
        first_seen: the first occurrence counted in ``value`` (None when none was).
        last_seen: the last one.
        detail: what the value was computed from.
    """

    signal: str
    value: float
    threshold: float
    status: str
    action: str
    involved: tuple[FairUseSubject, ...]
    involved_count: int
    first_seen: datetime | None
    last_seen: datetime | None
    detail: Mapping[str, Any]

    @property
    def flagged(self) -> bool:
        """Whether the value is above the threshold."""
        return self.status == "flagged"


@dataclass(frozen=True, slots=True)
class FairUse:
    """``GET /v1/analytics/fair-use`` (and the provider's ``GET
    /v1/admin/orgs/{orgId}/fair-use``): every fair-use signal of one org and environment.

    Attributes:
        time_range: the ``timeRange`` asked for.
        period_start: start of the range.
        period_end: its end (now).
        environment: ``SANDBOX`` or ``PRODUCTION``.
        signals: every signal of the server's policy (empty: it watches none).
        org: the org (the provider's answer only; None in an org's own).
        raw: the body as received.
    """

    time_range: str
    period_start: datetime
    period_end: datetime
    environment: str
    signals: tuple[FairUseSignal, ...]
    org: str | None = None
    raw: Mapping[str, Any] = _raw()

    def signal(self, name: str) -> FairUseSignal:
        """The signal called ``name``.

        Raises:
            KeyError: the server's policy does not watch it.
        """
        for s in self.signals:
            if s.signal == name:
                return s
        raise KeyError(name)

    @property
    def flagged(self) -> tuple[FairUseSignal, ...]:
        """The signals above their threshold."""
        return tuple(s for s in self.signals if s.flagged)


def parse_fair_use(f: Fields) -> FairUse:
    period = f.obj("period")
    return FairUse(
        time_range=f.text("timeRange"),
        period_start=period.when("start"),
        period_end=period.when("end"),
        environment=f.text("environment"),
        signals=tuple(
            FairUseSignal(
                signal=s.text("signal"),
                value=s.number("value"),
                threshold=s.number("threshold"),
                status=s.text("status"),
                action=s.text("action"),
                involved=tuple(
                    FairUseSubject(i.text("id"), i.number("count")) for i in s.objects("involved")
                ),
                involved_count=s.integer("involvedCount"),
                first_seen=s.opt_when("firstSeen"),
                last_seen=s.opt_when("lastSeen"),
                detail=s.mapping("detail"),
            )
            for s in f.objects("signals")
        ),
        org=f.opt_text("org"),
        raw=dict(f.data),
    )


@dataclass(frozen=True, slots=True)
class MetricResult:
    """``GET /v1/analytics/{metric}`` (the metrics catalogue shape): an ``AnalyticsResponse``.

    ``value``'s shape depends on ``type`` (``simple``, ``table``, ``barchart``,
    ``horizontal-barchart``, ``empty``); the properties read the common cases.

    Attributes:
        type: the response type.
        value: the metric data as the server sent it.
    """

    type: str
    value: Mapping[str, Any]
    raw: Mapping[str, Any] = _raw()

    @property
    def empty(self) -> bool:
        """Nothing in the range matched."""
        return self.type == "empty"

    @property
    def scalar(self) -> Any:
        """A ``simple`` metric's value (None for other types)."""
        return self.value.get("value") if self.type == "simple" else None

    @property
    def rows(self) -> list[Mapping[str, Any]]:
        """A table's rows (``items`` of a paginated table); ``[]`` for other types."""
        found = self.value.get("rows", self.value.get("items"))
        return list(found) if isinstance(found, list) else []

    @property
    def bars(self) -> list[Mapping[str, Any]]:
        """A bar chart's buckets (``{"name", "values", "value_mapping"}``); ``[]`` otherwise."""
        found = self.value.get("values") if "barchart" in self.type else None
        return list(found) if isinstance(found, list) else []

    @property
    def page(self) -> int | None:
        """A paginated table's page (1-based); None for other metrics."""
        return _whole(self.value.get("page"))

    @property
    def pages(self) -> int | None:
        """A paginated table's page count; None for other metrics."""
        return _whole(self.value.get("pages"))

    @property
    def total(self) -> int | None:
        """A paginated table's item count over every page; None for other metrics."""
        return _whole(self.value.get("total"))


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_metric(f: Fields) -> MetricResult:
    return MetricResult(type=f.text("type"), value=f.mapping("value"), raw=dict(f.data))


@dataclass(frozen=True, slots=True)
class CallCounts:
    """An organisation's or scenario's call counts over time (the call-counts shape).

    Attributes:
        timestamps: bucket starts (Unix seconds).
        counts: calls per bucket.
        warnings: e.g. that a coarser rollup was used.
    """

    timestamps: tuple[float, ...]
    counts: tuple[float, ...]
    warnings: tuple[str, ...] = ()
    raw: Mapping[str, Any] = _raw()


def parse_call_counts(f: Fields) -> CallCounts:
    return CallCounts(
        timestamps=f.numbers("timestamps"),
        counts=f.numbers("counts"),
        warnings=f.texts("warnings") if f.has("warnings") else (),
        raw=dict(f.data),
    )


@dataclass(frozen=True, slots=True)
class Series:
    """One series of a label (an endpoint group, an account, a scenario …).

    Attributes:
        key: the series' key.
        description: what it counts.
        counts: calls per timestamp of the page.
        extra_data: label-specific data (``db_id``, ``reco_type`` …).
    """

    key: str
    description: str
    counts: tuple[float, ...]
    extra_data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LabelCounts:
    """One page of ``GET /call-counts/historical/{label}/``.

    Attributes:
        timestamps: bucket starts (Unix seconds), shared by every page of the label.
        series: this page's series, sorted by key.
        has_next: whether more pages follow.
        next_cursor: the cursor of the next page (None on the last).
        warnings: e.g. that a coarser rollup was used.
    """

    timestamps: tuple[float, ...]
    series: tuple[Series, ...]
    has_next: bool
    next_cursor: str | None
    warnings: tuple[str, ...] = ()
    raw: Mapping[str, Any] = _raw()


def parse_label_counts(f: Fields) -> LabelCounts:
    return LabelCounts(
        timestamps=f.numbers("timestamps"),
        series=tuple(
            Series(
                key=s.text("key"),
                description=s.opt_text("description") or "",
                counts=s.numbers("counts"),
                extra_data=s.mapping("extra_data") if s.has("extra_data") else {},
            )
            for s in f.objects("series")
        ),
        has_next=f.flag("has_next", False),
        next_cursor=f.opt_text("next_cursor"),
        warnings=f.texts("warnings") if f.has("warnings") else (),
        raw=dict(f.data),
    )


# --- events and webhooks ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventsIngested:
    """``POST /v1/events``.

    Attributes:
        received: events in the request.
        inserted: events stored now.
        duplicates: events whose id was already stored (ignored: ingestion is idempotent).
    """

    received: int
    inserted: int
    duplicates: int


def parse_events_ingested(f: Fields) -> EventsIngested:
    return EventsIngested(
        received=f.integer("received"),
        inserted=f.integer("inserted"),
        duplicates=f.integer("duplicates"),
    )


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One attempt to deliver a webhook.

    Attributes:
        attempt: 1 for the first.
        at: when it started.
        status_code: the receiver's status (None when it never answered).
        duration_ms: how long it took.
        error: e.g. ``timed out`` or ``HTTP 500`` (None when delivered).
        response_body: the start of the receiver's answer (None when it sent none, or
            from a server that does not report it).
    """

    attempt: int
    at: datetime
    status_code: int | None
    duration_ms: float | None
    error: str | None
    response_body: str | None = None


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One event's delivery to one endpoint, with every attempt.

    Attributes:
        id: the delivery's id.
        message_id: the ``webhook-id`` receivers see (the same on every retry).
        endpoint_id: the endpoint (``we_…``).
        url: where it is sent.
        job_id: the job it reports.
        event_type: ``score.completed`` or ``score.failed``.
        status: ``pending``, ``delivered``, ``failed`` or ``cancelled``.
        created_at: when it was staged.
        next_attempt_at: when the next attempt is due (pending only).
        finished_at: when it was delivered or given up.
        attempts: the attempts so far, oldest first.
    """

    id: str
    message_id: str
    endpoint_id: str
    url: str
    job_id: str | None
    event_type: str
    status: str
    created_at: datetime
    next_attempt_at: datetime | None
    finished_at: datetime | None
    attempts: tuple[DeliveryAttempt, ...]


def parse_delivery(d: Fields) -> WebhookDelivery:
    return WebhookDelivery(
        id=d.text("id"),
        message_id=d.text("messageId"),
        endpoint_id=d.text("endpointId"),
        url=d.text("url"),
        job_id=d.opt_text("jobId"),
        event_type=d.text("eventType"),
        status=d.text("status"),
        created_at=d.when("createdAt"),
        next_attempt_at=d.opt_when("nextAttemptAt"),
        finished_at=d.opt_when("finishedAt"),
        attempts=tuple(
            DeliveryAttempt(
                attempt=a.integer("attempt"),
                at=a.when("at"),
                status_code=a.opt_integer("statusCode"),
                duration_ms=a.opt_number("durationMs"),
                error=a.opt_text("error"),
                response_body=a.opt_text("responseBody"),
            )
            for a in d.objects("attempts")
        ),
    )


def parse_deliveries(f: Fields) -> list[WebhookDelivery]:
    return [parse_delivery(d) for d in f.objects("data")]


# --- the self-serve API: keys and webhook endpoints ---------------------------------------


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key of the caller's org (``client.keys``).

    Attributes:
        id: ``key_…``.
        name: free text given at creation.
        role: ``root``, ``manager``, ``backend`` or ``member``.
        environment: ``SANDBOX`` or ``PRODUCTION``.
        prefix: the secret's first characters, to recognise it.
        status: ``active``, ``revoked`` or ``expired``.
        created_at: when it was made.
        expires_at: when it stops working (a rotation's overlap, or its expiry).
        revoked_at: when it was revoked.
        last_used_at: start of the latest minute (hour, day) it made a call in.
        secret: the key itself — only in the answer that made it, never again.
        replaces: after a rotation, the key it replaces (as it is now).
        raw: the JSON object as received.
    """

    id: str
    name: str
    role: str
    environment: str
    prefix: str
    status: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    secret: str | None = None
    replaces: ApiKey | None = None
    raw: Mapping[str, Any] = _raw()


def parse_api_key(f: Fields) -> ApiKey:
    replaced = f.opt_obj("replaces")
    return ApiKey(
        id=f.text("id"),
        name=f.text("name"),
        role=f.text("role"),
        environment=f.text("environment"),
        prefix=f.text("prefix"),
        status=f.text("status"),
        created_at=f.when("createdAt"),
        expires_at=f.opt_when("expiresAt"),
        revoked_at=f.opt_when("revokedAt"),
        last_used_at=f.opt_when("lastUsedAt"),
        secret=f.opt_text("secret"),
        replaces=parse_api_key(replaced) if replaced is not None else None,
        raw=f.data,
    )


def parse_api_keys(f: Fields) -> list[ApiKey]:
    return [parse_api_key(k) for k in f.objects("data")]


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """A URL the org receives its environment's events at (``client.webhooks.endpoints``).

    Attributes:
        id: ``we_…``.
        url: where deliveries are sent.
        environment: ``SANDBOX`` or ``PRODUCTION``: whose events it gets.
        enabled: False once disabled (by the org, or a 410 from the receiver).
        disabled_reason: why it was disabled.
        event_types: the event types sent here; None sends every type.
        created_at: when it was registered.
        previous_secret_expires_at: after a secret rotation, until when the old secret
            signs too.
        secret: the ``whsec_…`` secret — only in the answer that made (or rotated) it.
        raw: the JSON object as received.
    """

    id: str
    url: str
    environment: str
    enabled: bool
    disabled_reason: str | None
    event_types: tuple[str, ...] | None
    created_at: datetime
    previous_secret_expires_at: datetime | None
    secret: str | None = None
    raw: Mapping[str, Any] = _raw()


def webhook_endpoint_fields(f: Fields) -> dict[str, Any]:
    """The :class:`WebhookEndpoint` fields of an endpoint object, as keyword arguments
    (the provider API's :class:`~tollhouse.client.AdminWebhookEndpoint` adds its own)."""
    return {
        "id": f.text("id"),
        "url": f.text("url"),
        "environment": f.text("environment"),
        "enabled": f.flag("enabled"),
        "disabled_reason": f.opt_text("disabledReason"),
        "event_types": f.texts("eventTypes") if f.has("eventTypes") else None,
        "created_at": f.when("createdAt"),
        "previous_secret_expires_at": f.opt_when("previousSecretExpiresAt"),
        "secret": f.opt_text("secret"),
        "raw": f.data,
    }


def parse_webhook_endpoint(f: Fields) -> WebhookEndpoint:
    return WebhookEndpoint(**webhook_endpoint_fields(f))


def parse_webhook_endpoints(f: Fields) -> list[WebhookEndpoint]:
    return [parse_webhook_endpoint(e) for e in f.objects("data")]
