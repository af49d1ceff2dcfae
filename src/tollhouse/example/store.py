"""In-memory state of the example upstream: criteria per job, scoring results, per org.

Everything is keyed by org first, so one org can never reach another's jobs or results: a
lookup with the wrong org finds nothing. Each org keeps at most ``max_jobs_per_org`` jobs and
``max_results_per_org`` results; past that the oldest go first (jobs by last change, results
by creation). State lives in one process and is lost on restart, which is what an example
needs.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

from tollhouse.example.scoring import CriterionScore

#: Default bounds per org (jobs with criteria; scoring results).
MAX_JOBS_PER_ORG = 10_000
MAX_RESULTS_PER_ORG = 10_000


@dataclass(frozen=True, slots=True)
class Criterion:
    """One stored criterion of a job."""

    id: str
    """``crit_`` + 12 hex characters."""
    name: str
    description: str
    weight: float
    """Share of the score; hand edits may leave a job's weights not summing to 1."""


@dataclass(frozen=True, slots=True)
class JobCriteria:
    """A job's criteria and whether they are archived."""

    job_id: str
    criteria: tuple[Criterion, ...]
    archived_at: datetime | None = None
    """When the criteria were archived, or None while active."""


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """One completed scoring of an application."""

    scoring_job_id: str
    """``sj_`` + 16 random hex characters."""
    application_id: str
    job_id: str
    score: float
    breakdown: tuple[CriterionScore, ...]
    completed_at: datetime


@dataclass(slots=True)
class _OrgState:
    jobs: OrderedDict[str, JobCriteria] = field(default_factory=OrderedDict)
    results: OrderedDict[str, ScoreResult] = field(default_factory=OrderedDict)
    latest: dict[str, str] = field(default_factory=dict)
    """application id → scoring job id of its latest result."""


class ExampleStore:
    """Jobs' criteria and scoring results, per org, bounded.

    Args:
        max_jobs_per_org: jobs an org keeps; the least recently changed go first.
        max_results_per_org: results an org keeps; the oldest go first.
    """

    def __init__(
        self,
        *,
        max_jobs_per_org: int = MAX_JOBS_PER_ORG,
        max_results_per_org: int = MAX_RESULTS_PER_ORG,
    ) -> None:
        if max_jobs_per_org < 1 or max_results_per_org < 1:
            raise ValueError("store bounds must be at least 1")
        self.max_jobs_per_org = max_jobs_per_org
        self.max_results_per_org = max_results_per_org
        self._orgs: dict[str, _OrgState] = {}

    def _org(self, org: str) -> _OrgState:
        state = self._orgs.get(org)
        if state is None:
            state = self._orgs[org] = _OrgState()
        return state

    def get_job(self, org: str, job_id: str) -> JobCriteria | None:
        """The job's criteria in this org, or None."""
        state = self._orgs.get(org)
        return state.jobs.get(job_id) if state else None

    def save_job(self, org: str, job: JobCriteria) -> None:
        """Insert or replace a job; it becomes the most recently changed."""
        jobs = self._org(org).jobs
        jobs[job.job_id] = job
        jobs.move_to_end(job.job_id)
        while len(jobs) > self.max_jobs_per_org:
            jobs.popitem(last=False)

    def delete_job(self, org: str, job_id: str) -> bool:
        """Remove a job; whether it was there. Its results stay readable."""
        state = self._orgs.get(org)
        return state is not None and state.jobs.pop(job_id, None) is not None

    def save_result(self, org: str, result: ScoreResult) -> None:
        """Keep a result; it becomes its application's latest."""
        state = self._org(org)
        state.results[result.scoring_job_id] = result
        state.latest[result.application_id] = result.scoring_job_id
        while len(state.results) > self.max_results_per_org:
            _, evicted = state.results.popitem(last=False)
            # Results are evicted oldest first, so an application's latest result goes only
            # once all its older ones have gone: dropping the index entry leaves nothing behind.
            if state.latest.get(evicted.application_id) == evicted.scoring_job_id:
                del state.latest[evicted.application_id]

    def get_result(self, org: str, scoring_job_id: str) -> ScoreResult | None:
        """A result by its scoring job id in this org, or None."""
        state = self._orgs.get(org)
        return state.results.get(scoring_job_id) if state else None

    def latest_result(self, org: str, application_id: str) -> ScoreResult | None:
        """The latest result for an application in this org, or None."""
        state = self._orgs.get(org)
        if state is None:
            return None
        scoring_job_id = state.latest.get(application_id)
        return state.results.get(scoring_job_id) if scoring_job_id else None


def criterion_id(org: str, job_id: str, name: str) -> str:
    """A criterion's id: ``crit_`` + the first 12 hex characters of sha1(org + jobId + name).

    Deterministic, so generating criteria twice for a job gives the same ids.
    """
    return "crit_" + _digest(org, job_id, name)


def question_id(org: str, job_id: str, name: str) -> str:
    """An interview question's id: ``q_`` + the same digest as its criterion's id."""
    return "q_" + _digest(org, job_id, name)


def _digest(org: str, job_id: str, name: str) -> str:
    # Not a security boundary: sha1 only spreads ids; lookups are scoped by org and job anyway.
    return hashlib.sha1((org + job_id + name).encode(), usedforsecurity=False).hexdigest()[:12]
