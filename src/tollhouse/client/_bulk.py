"""Bulk scoring as a state machine: what to send next, and what an answer means.

:class:`BulkRun` never does I/O. The clients' drivers ask it for the next action —
submit a batch, poll a job, wait, or stop — perform it, and hand the answer back; the
run turns answers into :class:`ScoreOutcome`s and journal records. The sync driver
performs one action at a time; the async one keeps up to ``max_concurrency`` in flight.
Both stay inside the limits through the client's own send loop (429s, throttling).

Scheduling, in order:

1. read the status of the jobs whose next poll is due, up to 100 per request
   (``GET /v1/score?ids=``; results first: they free room);
2. submit the next batch of up to ``chunk_size`` candidates, while fewer than
   ``max_pending`` accepted jobs are unfinished;
3. wait for the earliest due poll (or, async, for an action in flight);
4. stop when the input is used up and every accepted job has finished.

A job is first due after the server's ``estimatedWaitSeconds`` (at least
``poll_interval``), then at intervals growing by half each time up to
``max_poll_interval``. Due jobs are read together in *rounds* at most one per
``poll_interval``: a round is ``ceil(due / 100)`` requests, and its last, partly filled
request is topped up with the jobs due soonest after (the request costs the same).
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tollhouse.client._errors import ValidationError
from tollhouse.client._inputs import ScoreInput, body_hash, score_body
from tollhouse.client._journal import Journal
from tollhouse.client._models import ErrorDetail, ScoreBatchResult, ScoreJob, ScoreJobs

COMPLETED = "completed"
FAILED = "failed"
REJECTED = "rejected"
QUEUED = "queued"
#: Jobs read per status request (``GET /v1/score?ids=`` takes up to 100).
POLL_CHUNK = 100


@dataclass(frozen=True, slots=True)
class ScoreOutcome:
    """What became of one candidate in :meth:`~tollhouse.client.Client.score_many`.

    Attributes:
        key: the candidate's key (by default ``"{jobId}/{applicationId}"``).
        status: ``completed`` or ``failed`` (the job finished), ``rejected`` (the API
            refused the body; see ``error``), or ``queued`` (accepted; only with
            ``webhook=True`` or ``wait=False``).
        application_id: the application.
        job_id: the job posting.
        scoring_job_id: the scoring job (None when rejected).
        job: the finished job with its result (None when rejected or queued).
        error: why it was rejected or failed.
        index: the candidate's position in this run's input; None for a job accepted by
            an earlier run and finished in this one.
    """

    key: str
    status: str
    application_id: str | None
    job_id: str | None
    scoring_job_id: str | None = None
    job: ScoreJob | None = None
    error: ErrorDetail | None = None
    index: int | None = None

    @property
    def ok(self) -> bool:
        """Completed (or, with ``webhook=True``/``wait=False``, accepted)."""
        return self.status in (COMPLETED, QUEUED)

    @property
    def score(self) -> float | None:
        """The overall score of a completed job, if its result has one."""
        return self.job.score if self.job is not None else None


@dataclass(frozen=True, slots=True)
class BulkProgress:
    """Counts of a bulk run so far, passed to ``on_progress`` after every step.

    Attributes:
        read: candidates read from the input.
        skipped: candidates not sent, and with no outcome to come in this run: an earlier
            run with the same state file handed theirs out (or, with ``wait=False``,
            had them accepted), or the input repeats a key.
        accepted: candidates accepted by the API in this run.
        rejected: candidates the API refused.
        completed: jobs completed (handed out).
        failed: jobs failed (handed out).
        pending: accepted jobs not finished yet (those of earlier runs included).
        resumed: unfinished jobs taken over from the state file at the start.
    """

    read: int = 0
    skipped: int = 0
    accepted: int = 0
    rejected: int = 0
    completed: int = 0
    failed: int = 0
    pending: int = 0
    resumed: int = 0


@dataclass(frozen=True, slots=True)
class BulkSettings:
    """How a bulk run paces itself (validated up front).

    Attributes:
        chunk_size: candidates per ``POST /v1/score/batch`` (1–100).
        max_pending: accepted jobs allowed to be unfinished at once.
        wait: learn each job's outcome; False (webhook mode) yields ``queued`` outcomes
            and leaves results to the caller's webhook receiver.
        poll_interval: the shortest wait before a poll, in seconds.
        max_poll_interval: the longest wait between polls of one job.
        job_id: ``jobId`` for candidates that have none.
    """

    chunk_size: int = 100
    max_pending: int = 1000
    wait: bool = True
    poll_interval: float = 1.0
    max_poll_interval: float = 30.0
    job_id: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_size <= 100:
            raise ValueError("chunk_size must be from 1 to 100 (the batch endpoint's limit)")
        if self.max_pending < self.chunk_size:
            raise ValueError("max_pending must be at least chunk_size")
        if self.poll_interval <= 0 or self.max_poll_interval < self.poll_interval:
            raise ValueError("need 0 < poll_interval <= max_poll_interval")


def default_key(body: Mapping[str, Any]) -> str:
    """``"{jobId}/{applicationId}"``, or the body's hash when either is missing."""
    job, app = body.get("jobId"), body.get("applicationId")
    if isinstance(job, str) and isinstance(app, str):
        return f"{job}/{app}"
    return "sha256:" + body_hash(body)


@dataclass(frozen=True, slots=True)
class _Candidate:
    key: str
    hash: str
    body: dict[str, Any]
    index: int


@dataclass(slots=True)
class _Tracked:
    key: str
    scoring_job_id: str
    index: int | None
    polls: int = 0
    polling: bool = False


@dataclass(frozen=True, slots=True)
class Submit:
    """Send these candidates as one batch, with this ``Idempotency-Key``."""

    candidates: tuple[_Candidate, ...]
    idempotency_key: str

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """The batch's items."""
        return [c.body for c in self.candidates]


@dataclass(frozen=True, slots=True)
class Poll:
    """Read these jobs (1 to 100) in one request."""

    scoring_job_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to send for ``seconds`` (None: until an action in flight finishes)."""

    seconds: float | None


Action = Submit | Poll | Wait


@dataclass(slots=True)
class _Counts:
    read: int = 0
    skipped: int = 0
    accepted: int = 0
    rejected: int = 0
    completed: int = 0
    failed: int = 0
    resumed: int = 0


class BulkRun:
    """One bulk scoring run over ``items`` (pure: no I/O but the journal's appends).

    Args:
        items: the candidates, read lazily.
        journal: what earlier runs did; this run's records go there too.
        settings: pacing.
        now: the time the run starts (Unix seconds).
        key: a candidate's key from its body (default :func:`default_key`).
        on_progress: called with the counts after every step.
    """

    def __init__(
        self,
        items: Iterable[ScoreInput],
        journal: Journal,
        settings: BulkSettings,
        now: float,
        *,
        key: Callable[[Mapping[str, Any]], str] | None = None,
        on_progress: Callable[[BulkProgress], None] | None = None,
    ) -> None:
        self.journal = journal
        self.settings = settings
        self._source: Iterator[ScoreInput] = iter(items)
        self._key = key or default_key
        self._on_progress = on_progress
        self._exhausted = False
        self._claimed: set[str] = set()
        self._tracked: dict[str, _Tracked] = {}
        self._due: list[tuple[float, int, str]] = []
        self._seq = 0
        #: No new poll round starts before this (Unix seconds).
        self._next_round = now
        self._submitting = 0
        self._in_flight = 0
        self._rejected_hash: dict[str, str] = {}
        self._counts = _Counts()
        #: keys of earlier runs' unfinished jobs that this run polls (read once, at start:
        #: they leave ``journal.pending`` as they finish).
        self._resumed: frozenset[str] = frozenset(journal.pending if settings.wait else ())
        for k in self._resumed:
            self._track(_Tracked(k, journal.pending[k], None), now)
        self._counts.resumed = len(self._resumed)
        self._report()

    # --- the next action -----------------------------------------------------------------

    def next_action(self, now: float) -> Action | None:
        """What to do now; None when the run is over."""
        self._drop_stale()
        if self._due and self._due[0][0] <= now and now >= self._next_round:
            return self._poll(now)
        room = (
            not self.settings.wait
            or len(self._tracked) + self._submitting + self.settings.chunk_size
            <= self.settings.max_pending
        )
        if not self._exhausted and room:
            chunk = self._take(self.settings.chunk_size)
            self._report()
            if chunk:
                self._submitting += len(chunk)
                self._in_flight += 1
                return Submit(chunk, self._idempotency_key(chunk))
        if self._due:
            return Wait(max(self._due[0][0] - now, self._next_round - now, 0.0))
        if self._in_flight:
            return Wait(None)
        if not self._exhausted:
            # Full of pending jobs that are all being polled right now: unreachable with
            # in-flight accounting, but never report "done" with input left.
            return Wait(self.settings.poll_interval)
        return None

    def _drop_stale(self) -> None:
        """Pop heap entries of jobs finished or being read (they are pushed again)."""
        while self._due:
            tracked = self._tracked.get(self._due[0][2])
            if tracked is not None and not tracked.polling:
                return
            heapq.heappop(self._due)

    def _poll(self, now: float) -> Poll:
        """The next request of this round: up to 100 due jobs, topped up with the jobs
        due soonest after them when fewer are due (the request costs the same)."""
        ids: list[str] = []
        while self._due and len(ids) < POLL_CHUNK:
            _, _, scoring_job_id = heapq.heappop(self._due)
            tracked = self._tracked.get(scoring_job_id)
            if tracked is None or tracked.polling:
                continue
            tracked.polling = True
            ids.append(scoring_job_id)
        self._drop_stale()
        # Due jobs come off the heap first: with none left due, the round is over (with
        # some, the request was full of due ones and the round goes on).
        if not self._due or self._due[0][0] > now:
            self._next_round = now + self.settings.poll_interval
        self._in_flight += 1
        return Poll(tuple(ids))

    def _take(self, n: int) -> tuple[_Candidate, ...]:
        chunk: list[_Candidate] = []
        journal = self.journal
        for item in self._source:
            index = self._counts.read
            self._counts.read += 1
            body = score_body(item, self.settings.job_id)
            k = self._key(body)
            if k in self._resumed:
                continue  # an earlier run's job, polled by this one: its outcome follows
            if k in journal.pending or k in journal.finished or k in self._claimed:
                self._counts.skipped += 1
                continue
            h = body_hash(body)
            if journal.rejected.get(k) == h:
                self._counts.skipped += 1  # refused before, and unchanged since
                continue
            self._claimed.add(k)
            chunk.append(_Candidate(k, h, body, index))
            if len(chunk) == n:
                break
        else:
            self._exhausted = True
        return tuple(chunk)

    def _idempotency_key(self, chunk: tuple[_Candidate, ...]) -> str:
        # From the run id and the batch's content only: a rerun that sends the same batch
        # (accepted before a crash, never journaled) gets the same jobs back.
        digest = hashlib.sha256(self.journal.run_id.encode())
        for c in chunk:
            digest.update(c.hash.encode())
        return f"bulk-{self.journal.run_id}-{digest.hexdigest()[:40]}"

    def _track(self, tracked: _Tracked, at: float) -> None:
        self._tracked[tracked.scoring_job_id] = tracked
        self._seq += 1
        heapq.heappush(self._due, (at, self._seq, tracked.scoring_job_id))

    # --- answers ---------------------------------------------------------------------------

    def apply(self, action: Submit | Poll, result: Any, now: float) -> list[ScoreOutcome]:
        """Take the answer to an action: its result, or the exception it raised.

        Returns:
            Outcomes to hand out now, each then passed to :meth:`delivered`.

        Raises:
            Exception: an error that ends the run (the journal keeps what was done).
        """
        self._in_flight -= 1
        try:
            if isinstance(action, Submit):
                self._submitting -= len(action.candidates)
                return self._submitted(action, result, now)
            return self._polled(action, result, now)
        finally:
            self._report()

    def _submitted(self, action: Submit, result: Any, now: float) -> list[ScoreOutcome]:
        chunk = action.candidates
        if isinstance(result, ValidationError) and result.code == "VALIDATION_FAILED":
            # Every item was invalid: the batch as a whole is a 422.
            detail = ErrorDetail(
                result.code, result.message, result.status, result.type, result.request_id
            )
            return [self._reject(c, detail) for c in chunk]
        if isinstance(result, BaseException):
            raise result
        assert isinstance(result, ScoreBatchResult)
        outcomes: list[ScoreOutcome] = []
        accepted: list[tuple[str, str]] = []
        for item in result.results:
            if not 0 <= item.index < len(chunk):
                continue
            c = chunk[item.index]
            if item.accepted is not None:
                scoring_job_id = item.accepted.scoring_job_id
                accepted.append((c.key, scoring_job_id))
                self._counts.accepted += 1
                if self.settings.wait:
                    delay = min(
                        max(item.accepted.estimated_wait_seconds or 0, self.settings.poll_interval),
                        self.settings.max_poll_interval,
                    )
                    self._track(_Tracked(c.key, scoring_job_id, c.index), now + delay)
                else:
                    outcomes.append(
                        ScoreOutcome(
                            c.key,
                            QUEUED,
                            _text(c.body, "applicationId"),
                            _text(c.body, "jobId"),
                            scoring_job_id,
                            index=c.index,
                        )
                    )
            else:
                error = item.error or ErrorDetail("ERROR", "rejected")
                outcomes.append(self._reject(c, error))
        # Journaled before anything is handed out: a crash from here on never resubmits.
        self.journal.accepted(accepted)
        return outcomes

    def _reject(self, c: _Candidate, error: ErrorDetail) -> ScoreOutcome:
        self._counts.rejected += 1
        self._rejected_hash[c.key] = c.hash
        return ScoreOutcome(
            c.key,
            REJECTED,
            _text(c.body, "applicationId"),
            _text(c.body, "jobId"),
            error=error,
            index=c.index,
        )

    def _polled(self, action: Poll, result: Any, now: float) -> list[ScoreOutcome]:
        polled = [self._tracked[i] for i in action.scoring_job_ids if i in self._tracked]
        for tracked in polled:
            tracked.polling = False
        if isinstance(result, BaseException):
            for tracked in polled:
                self._track(tracked, now + self.settings.poll_interval)
            raise result
        assert isinstance(result, ScoreJobs)
        outcomes: list[ScoreOutcome] = []
        answered = {job.scoring_job_id: job for job in result.data}
        missing = set(result.not_found)
        for tracked in polled:
            job = answered.get(tracked.scoring_job_id)
            if job is not None and job.done:
                outcomes.append(self._finished(tracked, job))
            elif job is None and tracked.scoring_job_id in missing:
                outcomes.append(self._vanished(tracked))
            else:
                tracked.polls += 1
                interval = min(
                    self.settings.poll_interval * 1.5**tracked.polls,
                    self.settings.max_poll_interval,
                )
                wait = job.estimated_wait_seconds if job is not None else None
                if wait:
                    interval = max(interval, min(wait, self.settings.max_poll_interval))
                self._track(tracked, now + interval)
        return outcomes

    def _finished(self, tracked: _Tracked, job: ScoreJob) -> ScoreOutcome:
        del self._tracked[tracked.scoring_job_id]
        status = COMPLETED if job.status == COMPLETED else FAILED
        if status == COMPLETED:
            self._counts.completed += 1
        else:
            self._counts.failed += 1
        return ScoreOutcome(
            tracked.key,
            status,
            job.application_id,
            job.job_id,
            job.scoring_job_id,
            job=job,
            error=job.error,
            index=tracked.index,
        )

    def _vanished(self, tracked: _Tracked) -> ScoreOutcome:
        # The job is gone for this key's org (e.g. a state file used with another org's
        # key, or pruned): report it rather than poll forever.
        del self._tracked[tracked.scoring_job_id]
        self._counts.failed += 1
        detail = ErrorDetail("NOT_FOUND", f'scoring job "{tracked.scoring_job_id}" not found', 404)
        return ScoreOutcome(
            tracked.key,
            FAILED,
            None,
            None,
            tracked.scoring_job_id,
            error=detail,
            index=tracked.index,
        )

    def delivered(self, outcome: ScoreOutcome) -> None:
        """Record that the caller took ``outcome`` (a crash before this hands it out again)."""
        if outcome.status in (COMPLETED, FAILED):
            self.journal.finish(outcome.key, outcome.status)
        elif outcome.status == REJECTED:
            found = self._rejected_hash.pop(outcome.key, None)
            if found is not None:
                self.journal.reject(outcome.key, found)

    # --- progress --------------------------------------------------------------------------

    @property
    def progress(self) -> BulkProgress:
        """The counts so far."""
        c = self._counts
        return BulkProgress(
            read=c.read,
            skipped=c.skipped,
            accepted=c.accepted,
            rejected=c.rejected,
            completed=c.completed,
            failed=c.failed,
            pending=len(self._tracked),
            resumed=c.resumed,
        )

    def _report(self) -> None:
        if self._on_progress is not None:
            self._on_progress(self.progress)


def _text(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    return value if isinstance(value, str) else None
