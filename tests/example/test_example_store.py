"""The example upstream's in-memory store: per-org scoping and bounds."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from tollhouse.example.store import (
    Criterion,
    ExampleStore,
    JobCriteria,
    ScoreResult,
    criterion_id,
    question_id,
)

NOW = datetime(2025, 1, 15, 10, 30, tzinfo=UTC)


def _job(job_id: str) -> JobCriteria:
    return JobCriteria(job_id, (Criterion("crit_x", "Python", "", 1.0),))


def _result(scoring_job_id: str, application_id: str) -> ScoreResult:
    return ScoreResult(scoring_job_id, application_id, "job", 50.0, (), NOW)


def test_ids_are_sha1_of_org_job_and_name() -> None:
    digest = hashlib.sha1(b"acmejob-1Python").hexdigest()[:12]
    assert criterion_id("acme", "job-1", "Python") == "crit_" + digest
    assert question_id("acme", "job-1", "Python") == "q_" + digest


def test_orgs_do_not_see_each_others_data() -> None:
    store = ExampleStore()
    store.save_job("a", _job("j"))
    store.save_result("a", _result("sj_1", "app"))
    assert store.get_job("b", "j") is None
    assert store.get_result("b", "sj_1") is None
    assert store.latest_result("b", "app") is None
    assert not store.delete_job("b", "j")
    assert store.get_job("a", "j") is not None


def test_jobs_past_the_bound_evict_the_least_recently_changed() -> None:
    store = ExampleStore(max_jobs_per_org=2)
    store.save_job("a", _job("j1"))
    store.save_job("a", _job("j2"))
    store.save_job("a", _job("j1"))  # j1 changed again: j2 is now the oldest
    store.save_job("a", _job("j3"))
    assert store.get_job("a", "j2") is None
    assert store.get_job("a", "j1") is not None
    assert store.get_job("a", "j3") is not None
    store.save_job("b", _job("j9"))  # bounds are per org
    assert store.get_job("a", "j1") is not None


def test_results_past_the_bound_evict_the_oldest_and_their_latest_index() -> None:
    store = ExampleStore(max_results_per_org=2)
    store.save_result("a", _result("sj_1", "app-1"))
    store.save_result("a", _result("sj_2", "app-2"))
    store.save_result("a", _result("sj_3", "app-2"))
    assert store.get_result("a", "sj_1") is None
    assert store.latest_result("a", "app-1") is None
    latest = store.latest_result("a", "app-2")
    assert latest is not None
    assert latest.scoring_job_id == "sj_3"


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ExampleStore(max_jobs_per_org=0)
