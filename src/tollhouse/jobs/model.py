"""What a job is: plain, frozen values shared by the queue, the worker and the HTTP app.

A job moves through these states (``dead`` and ``failed`` both read as ``failed`` on the
wire)::

    queued ──claim──▶ running ──complete──▶ completed
      ▲                 │ ├───fail (permanent)──▶ failed
      │                 │ └───fail / lease lost, attempts left? no──▶ dead
      └──retry, release, reap (attempts left)──┘

The few callable shapes every part of the jobs package passes around (:data:`Clock`,
:data:`Wakeup`, :data:`Topic`) live here too, beside the values: the queue, its SQL parts
and the webhook store all use them, and none of those should have to import another
just for a type alias.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from tollhouse.errors import TollhouseError

#: Internal states; ``dead`` = gave up after ``max_attempts`` retryable failures.
JobState = Literal["queued", "running", "completed", "failed", "dead"]
#: What callers see: ``dead`` is reported as ``failed``.
WireStatus = Literal["queued", "running", "completed", "failed"]
#: How a finished attempt left the job (None from the queue: the lease was stale).
Outcome = Literal["completed", "retrying", "failed", "dead"]

#: Returns the current time, timezone-aware UTC; tests inject a fake one and never sleep.
Clock = Callable[[], datetime]
#: Called (in-process, synchronously) when there may be new work: jobs or deliveries.
Wakeup = Callable[[], None]
#: What a wakeup is about: ``jobs`` (enqueued, retried) or ``deliveries`` (staged webhooks).
Topic = Literal["jobs", "deliveries"]
TOPICS: tuple[Topic, ...] = ("jobs", "deliveries")

#: The environment of a job enqueued (or an endpoint added) without one: production, as
#: for every row made before environments were kept apart.
PRODUCTION = "PRODUCTION"

STATES: tuple[JobState, ...] = ("queued", "running", "completed", "failed", "dead")
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "dead"})


def utc_now() -> datetime:
    """The current time, timezone-aware UTC (the default clock everywhere in jobs)."""
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """UTC ISO 8601 with ``Z`` and milliseconds: ``2026-03-01T00:00:00.000Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def wire_status(state: str) -> WireStatus:
    """The status callers see for an internal state."""
    if state == "dead":
        return "failed"
    assert state in ("queued", "running", "completed", "failed"), state
    return state  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """How the queue behaves; one frozen value per process."""

    default_cap: int = 500
    """Jobs of one org running at once unless the org has its own cap (the scoring
    API shape's 500)."""
    lease_seconds: float = 30.0
    """A claim is held this long; workers heartbeat well before it runs out."""
    max_attempts: int = 5
    """Attempts before a job that keeps failing (or losing its worker) is ``dead``."""
    retry_base_seconds: float = 1.0
    """Backoff before the second attempt; doubled per attempt after that."""
    retry_max_seconds: float = 300.0
    """Longest backoff between two attempts."""
    default_processing_seconds: float = 30.0
    """Assumed processing time before any job of an org has been measured (the
    scoring API shape's 30 s)."""
    ewma_alpha: float = 0.2
    """Weight of the newest measurement in the moving average of processing time."""
    reap_batch: int = 500
    """Expired leases handled per reaper transaction."""
    jobs_retention_days: float | None = 91
    """Finished jobs (completed, failed, dead) are deleted this many days after they
    finished; None keeps them forever. The scoring volume does not depend on it: it reads
    the finished-jobs rollup, which keeps its counts when the jobs are deleted."""
    deliveries_retention_days: float | None = 30
    """Finished webhook deliveries (delivered, failed, cancelled) and their recorded
    attempts are deleted this many days after they finished; None keeps them forever.
    Pending deliveries are never deleted."""
    prune_batch: int = 1000
    """Rows deleted per retention transaction (short transactions; loops until done)."""
    worker_seen_seconds: float = 30.0
    """A worker counts as running while it recorded itself (``job_workers``) within this
    many seconds; workers record themselves every sixth of it (5 s by default). While
    none does, ``estimatedWaitSeconds`` is ``null``: no estimate holds with nothing to
    run the jobs."""

    def __post_init__(self) -> None:
        if self.default_cap < 1:
            raise ValueError("default_cap must be at least 1")
        if self.lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 < self.ewma_alpha <= 1:
            raise ValueError("ewma_alpha must be in (0, 1]")
        for name in ("jobs_retention_days", "deliveries_retention_days"):
            days = getattr(self, name)
            if days is not None and not days > 0:
                raise ValueError(f"{name} must be positive (or None to keep forever)")
        if self.prune_batch < 1:
            raise ValueError("prune_batch must be at least 1")
        if not self.worker_seen_seconds > 0:
            raise ValueError("worker_seen_seconds must be positive")


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to enqueue, as the HTTP app hands it to the queue."""

    org: str
    """The org the job belongs to; every read is scoped to it and to ``environment``."""
    route: str
    """The async route that accepted it, e.g. ``POST /v1/score``."""
    payload: dict[str, Any]
    """The request body, handed to the handler as is."""
    environment: str = PRODUCTION
    """SANDBOX or PRODUCTION (the key's environment). The job is queued, read, counted and
    sent to webhooks within its org *and* environment only; the handler forwards it to
    the upstream (``x-tollhouse-environment``)."""
    tenant: str | None = None
    """The ``X-Tenant-Id`` the request carried, forwarded to the upstream."""
    application_id: str | None = None
    """For ``GET …/application/{applicationId}``: the latest job of an application."""
    idempotency_key: str | None = None
    """Same org + environment + key → the same job (and the same 202 body)."""
    request_hash: str | None = None
    """Fingerprint of route + body; a reused key with another body is refused."""
    request_id: str | None = None
    """The accepting request's id, forwarded to the handler for correlation."""


@dataclass(frozen=True, slots=True)
class Job:
    """One stored job."""

    id: str
    """Public id (``sj_…``): the ``scoringJobId``."""
    seq: int
    """Submission order (per database); FIFO per org follows it."""
    org: str
    route: str
    payload: dict[str, Any]
    state: JobState
    attempts: int
    """Attempts started so far (a claim starts one)."""
    max_attempts: int
    created_at: datetime
    run_after: datetime
    """Not claimed before this time (backoff after a failed attempt)."""
    environment: str = PRODUCTION
    """SANDBOX or PRODUCTION: with ``org``, who may see the job."""
    tenant: str | None = None
    application_id: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    request_id: str | None = None
    started_at: datetime | None = None
    """When the first attempt started."""
    claimed_at: datetime | None = None
    """When the current (or last) attempt started."""
    finished_at: datetime | None = None
    result: dict[str, Any] | None = None
    """The handler's result once completed."""
    error: dict[str, Any] | None = None
    """``{"code", "message", …}`` of the last failure."""
    accepted_position: int | None = None
    """``queuePosition`` as first answered (replayed for the same Idempotency-Key)."""
    accepted_wait: int | None = None
    """``estimatedWaitSeconds`` as first answered (None: no worker was running)."""
    place: int | None = None
    """Its number in its queue (1, 2, 3… per org and environment, in ``seq`` order); where
    it stands is read from this and the queue's counters
    (:func:`tollhouse.jobs.eta.place_position`)."""

    @property
    def status(self) -> WireStatus:
        """The status callers see."""
        return wire_status(self.state)

    @property
    def terminal(self) -> bool:
        """True once the job will never run again."""
        return self.state in TERMINAL


@dataclass(frozen=True, slots=True)
class Lease:
    """A claimed job: only the holder of ``token`` may heartbeat, complete or fail it."""

    job: Job
    token: str
    """Fencing token; replaced on every claim and cleared when the lease ends."""
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Finish:
    """How one attempt ended, for :meth:`JobQueue.finish_many`."""

    lease: Lease
    result: dict[str, Any] | None = None
    """The result of a completed attempt (when ``error`` is None)."""
    error: dict[str, Any] | None = None
    """Set for a failed attempt."""
    retryable: bool = True
    """For a failure: may another attempt succeed?"""


@dataclass(frozen=True, slots=True)
class Standing:
    """Where a queued job stands: what the 202 and every poll report."""

    position: int
    """1-based place among the org's queued jobs (the scoring API shape's ``queuePosition``)."""
    wait_seconds: int | None
    """Estimated seconds until it starts; None while no worker is running
    (:attr:`QueueSettings.worker_seen_seconds`)."""


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What :meth:`JobQueue.enqueue` returns per job."""

    job: Job
    created: bool
    """False when an Idempotency-Key matched an existing job."""
    standing: Standing | None = None
    """Where the job stood when accepted (None for a replay whose job is no longer queued)."""


@dataclass(frozen=True, slots=True)
class OrgCounters:
    """An org's row in the queue for one environment: counters kept in step with job
    states (an org's SANDBOX and PRODUCTION jobs queue apart, each under its own cap)."""

    org: str
    environment: str
    running: int
    queued: int
    cap: int | None
    """The org's own cap, or None for the queue's default."""
    avg_seconds: float | None
    """Moving average of processing time, None before any measurement."""


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of an org's jobs, newest first (``GET /v1/queue``)."""

    jobs: list[Job]
    standings: dict[str, Standing]
    """Where each queued job of the page stands, by job id."""
    has_more: bool
    """True when older jobs match too (ask again from the last job's (created_at, id))."""


class JobFailed(TollhouseError):
    """Raise from a handler to fail a job for good (no retry).

    Args:
        message: what went wrong, shown to the caller in the job's ``error``.
        code: machine-readable code, e.g. ``UPSTREAM_REJECTED``.
        details: extra JSON-able fields merged into the job's ``error``.
    """

    def __init__(self, message: str, code: str = "JOB_FAILED", **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details

    def error(self) -> dict[str, Any]:
        """The job's ``error`` object."""
        return {"code": self.code, "message": self.message, **self.details}


class JobRetry(TollhouseError):
    """Raise from a handler for a failure worth another attempt (the default for any
    other exception too).

    Args:
        message: what went wrong.
        code: machine-readable code, e.g. ``UPSTREAM_UNAVAILABLE``.
    """

    def __init__(self, message: str, code: str = "JOB_RETRY", **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details

    def error(self) -> dict[str, Any]:
        """The job's ``error`` object."""
        return {"code": self.code, "message": self.message, **self.details}


class IdempotencyKeyReused(TollhouseError):
    """An Idempotency-Key was reused for a different request."""
