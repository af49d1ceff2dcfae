"""The bulk-scoring state machine on its own: actions, answers, journal, no I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tollhouse.client import NotFoundError, ValidationError
from tollhouse.client._bulk import BulkRun, BulkSettings, Poll, Submit, Wait
from tollhouse.client._journal import Journal
from tollhouse.client._models import (
    BatchItem,
    ErrorDetail,
    ScoreAccepted,
    ScoreBatchResult,
    ScoreJob,
    ScoreJobs,
)

T0 = 1_800_000_000.0


def cand(i: int, resume: str = "Python") -> dict[str, Any]:
    return {"applicationId": f"a{i}", "jobId": "j", "candidate": {"name": "N", "resume": resume}}


def accept(action: Submit, reject: frozenset[int] = frozenset(), wait: int = 0) -> ScoreBatchResult:
    items = []
    for i, c in enumerate(action.candidates):
        if i in reject:
            items.append(BatchItem(i, error=ErrorDetail("VALIDATION_FAILED", "bad")))
        else:
            sj = "sj_" + c.body["applicationId"]
            items.append(BatchItem(i, accepted=ScoreAccepted(sj, "queued", i + 1, wait)))
    return ScoreBatchResult(tuple(items), len(items) - len(reject), len(reject))


def job(sj: str, status: str = "completed", estimate: int | None = None) -> ScoreJob:
    return ScoreJob(
        scoring_job_id=sj,
        status=status,
        application_id=sj.removeprefix("sj_"),
        job_id="j",
        attempts=1,
        created_at=None,
        estimated_wait_seconds=estimate,
        result={"score": 50.0} if status == "completed" else None,
    )


def jobs(*found: ScoreJob, not_found: tuple[str, ...] = ()) -> ScoreJobs:
    return ScoreJobs(tuple(found), not_found)


def drive(run: BulkRun, now: float = T0) -> list[Any]:
    """Run to the end: accept every batch, complete every poll; return the outcomes."""
    out = []
    while (action := run.next_action(now)) is not None:
        if isinstance(action, Wait):
            now += action.seconds or 1.0
            continue
        result = (
            accept(action)
            if isinstance(action, Submit)
            else jobs(*(job(i) for i in action.scoring_job_ids))
        )
        for o in run.apply(action, result, now):
            out.append(o)
            run.delivered(o)
    return out


def test_batches_polls_and_results() -> None:
    settings = BulkSettings(chunk_size=2, max_pending=4, poll_interval=1.0)
    run = BulkRun([cand(i) for i in range(5)], Journal(None), settings, T0)
    first = run.next_action(T0)
    second = run.next_action(T0)
    assert isinstance(first, Submit) and isinstance(second, Submit)
    assert [c.body["applicationId"] for c in first.candidates] == ["a0", "a1"]
    assert isinstance(run.next_action(T0), Wait)  # 4 pending: no room for another batch
    assert run.apply(first, accept(first), T0) == []
    assert run.apply(second, accept(second), T0) == []
    wait = run.next_action(T0)
    assert isinstance(wait, Wait) and wait.seconds == 1.0  # first poll after poll_interval
    poll = run.next_action(T0 + 1)
    # The four due jobs in one status read.
    assert isinstance(poll, Poll) and poll.scoring_job_ids == ("sj_a0", "sj_a1", "sj_a2", "sj_a3")
    outcomes = run.apply(poll, jobs(job("sj_a0"), job("sj_a1", "running")), T0 + 1)
    assert [(o.key, o.status, o.score, o.index) for o in outcomes] == [
        ("j/a0", "completed", 50.0, 0)
    ]
    run.delivered(outcomes[0])
    rest = drive(run, T0 + 1)
    assert sorted(o.key for o in rest) == ["j/a1", "j/a2", "j/a3", "j/a4"]
    assert run.progress.completed == 5 and run.progress.pending == 0


def test_unfinished_jobs_are_polled_again_later() -> None:
    run = BulkRun([cand(0)], Journal(None), BulkSettings(chunk_size=1, max_pending=1), T0)
    submit = run.next_action(T0)
    assert isinstance(submit, Submit)
    run.apply(submit, accept(submit, wait=5), T0)
    assert run.next_action(T0) == Wait(5.0)  # the server's estimate
    poll = run.next_action(T0 + 5)
    assert isinstance(poll, Poll)
    assert run.apply(poll, jobs(job("sj_a0", "queued", estimate=12)), T0 + 5) == []
    assert run.next_action(T0 + 5) == Wait(12.0)


def test_rejections_are_reported_and_remembered(tmp_path: Path) -> None:
    state = tmp_path / "s"
    journal = Journal(state)
    run = BulkRun([cand(0), cand(1)], journal, BulkSettings(chunk_size=2, max_pending=2), T0)
    submit = run.next_action(T0)
    assert isinstance(submit, Submit)
    [rejected] = run.apply(submit, accept(submit, reject=frozenset({1})), T0)
    assert rejected.status == "rejected" and rejected.error is not None and not rejected.ok
    run.delivered(rejected)
    drive(run)
    journal.close()
    # Unchanged, it is skipped next time; changed, it is sent again.
    again = BulkRun([cand(0), cand(1)], Journal(state), BulkSettings(), T0)
    assert again.next_action(T0) is None and again.progress.skipped == 2
    again.journal.close()
    fixed = BulkRun(
        [cand(0), cand(1, resume="Python, 5 years")], Journal(state), BulkSettings(), T0
    )
    action = fixed.next_action(T0)
    assert isinstance(action, Submit) and [c.key for c in action.candidates] == ["j/a1"]
    fixed.journal.close()


def test_a_wholly_invalid_batch_rejects_each_item() -> None:
    run = BulkRun([cand(0), cand(1)], Journal(None), BulkSettings(chunk_size=2, max_pending=2), T0)
    submit = run.next_action(T0)
    assert isinstance(submit, Submit)
    error = ValidationError(422, "VALIDATION_FAILED", "items[0]: field …", request_id="req_1")
    outcomes = run.apply(submit, error, T0)
    assert [o.status for o in outcomes] == ["rejected", "rejected"]
    assert outcomes[0].error is not None and outcomes[0].error.request_id == "req_1"


def test_other_errors_end_the_run() -> None:
    run = BulkRun([cand(0)], Journal(None), BulkSettings(chunk_size=1, max_pending=1), T0)
    submit = run.next_action(T0)
    assert isinstance(submit, Submit)
    with pytest.raises(ValidationError, match="IDEMPOTENCY_KEY_REUSED"):
        run.apply(submit, ValidationError(422, "IDEMPOTENCY_KEY_REUSED", "reused"), T0)


def test_a_vanished_job_is_reported_failed() -> None:
    run = BulkRun([cand(0)], Journal(None), BulkSettings(chunk_size=1, max_pending=1), T0)
    submit = run.next_action(T0)
    assert isinstance(submit, Submit)
    run.apply(submit, accept(submit), T0)
    poll = run.next_action(T0 + 1)
    assert isinstance(poll, Poll)
    [outcome] = run.apply(poll, jobs(not_found=("sj_a0",)), T0 + 1)
    assert outcome.status == "failed" and outcome.error is not None
    assert (outcome.error.code, outcome.error.status) == ("NOT_FOUND", 404)
    assert run.next_action(T0 + 1) is None


def test_a_failed_status_read_ends_the_run_and_keeps_the_jobs() -> None:
    run = BulkRun([cand(0)], Journal(None), BulkSettings(chunk_size=1, max_pending=1), T0)
    submit = run.next_action(T0)
    assert isinstance(submit, Submit)
    run.apply(submit, accept(submit), T0)
    poll = run.next_action(T0 + 1)
    assert isinstance(poll, Poll)
    with pytest.raises(NotFoundError):
        run.apply(poll, NotFoundError(404, "NOT_FOUND", "no route"), T0 + 1)
    assert run.progress.pending == 1


def test_due_jobs_are_read_100_per_request_in_rounds() -> None:
    """250 jobs due at once: one round of ceil(250 / 100) = 3 reads; the last, partly
    filled read is topped up with jobs due later; the next round waits poll_interval."""
    settings = BulkSettings(chunk_size=50, max_pending=400, poll_interval=2.0)
    run = BulkRun([cand(i) for i in range(300)], Journal(None), settings, T0)
    for _ in range(5):  # 250 accepted at T0
        submit = run.next_action(T0)
        assert isinstance(submit, Submit)
        run.apply(submit, accept(submit), T0)
    submit = run.next_action(T0)
    assert isinstance(submit, Submit)  # 50 more, due a second later
    run.apply(submit, accept(submit), T0 + 1)
    reads = []
    while isinstance(action := run.next_action(T0 + 2), Poll):
        reads.append(action.scoring_job_ids)
    assert [len(r) for r in reads] == [100, 100, 100]  # 250 due, topped up with 50 more
    assert len({i for r in reads for i in r}) == 300
    assert action == Wait(None)  # every job is being read: wait for the answers
    # Every job still running: each read again no earlier than its own backoff.
    for r in reads:
        run.apply(Poll(r), jobs(*(job(i, "running") for i in r)), T0 + 2)
    wait = run.next_action(T0 + 2)
    assert isinstance(wait, Wait) and wait.seconds == 3.0  # 2 × 1.5
    reads = []
    while isinstance(action := run.next_action(T0 + 5), Poll):
        reads.append(action.scoring_job_ids)
    assert [len(r) for r in reads] == [100, 100, 100]
    for r in reads:
        outcomes = run.apply(Poll(r), jobs(*(job(i) for i in r)), T0 + 5)
        assert len(outcomes) == len(r)
    assert run.next_action(T0 + 5) is None
    assert run.progress.completed == 300


def test_duplicates_in_the_input_are_sent_once() -> None:
    run = BulkRun([cand(0), cand(0), cand(1)], Journal(None), BulkSettings(), T0)
    submit = run.next_action(T0)
    assert isinstance(submit, Submit) and len(submit.candidates) == 2
    assert run.progress.skipped == 1


def test_without_waiting_accepted_jobs_come_out_queued() -> None:
    settings = BulkSettings(chunk_size=2, max_pending=2, wait=False)
    run = BulkRun([cand(i) for i in range(3)], Journal(None), settings, T0)
    outcomes = drive(run)
    assert [(o.key, o.status, o.scoring_job_id) for o in outcomes] == [
        ("j/a0", "queued", "sj_a0"),
        ("j/a1", "queued", "sj_a1"),
        ("j/a2", "queued", "sj_a2"),
    ]


def test_idempotency_keys_depend_on_run_and_content_only(tmp_path: Path) -> None:
    def key_of(journal: Journal, items: list[dict[str, Any]]) -> str:
        run = BulkRun(items, journal, BulkSettings(chunk_size=2, max_pending=2), T0)
        action = run.next_action(T0)
        assert isinstance(action, Submit)
        return action.idempotency_key

    state = tmp_path / "s"
    j1 = Journal(state)
    k1 = key_of(j1, [cand(0), cand(1)])
    j1.close()
    j2 = Journal(state)  # the same run, resumed
    assert key_of(j2, [cand(0), cand(1)]) == k1
    assert key_of(j2, [cand(0), cand(2)]) != k1
    j2.close()
    assert key_of(Journal(None), [cand(0), cand(1)]) != k1  # another run


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        BulkSettings(chunk_size=101)
    with pytest.raises(ValueError, match="max_pending"):
        BulkSettings(chunk_size=10, max_pending=5)
    with pytest.raises(ValueError, match="poll_interval"):
        BulkSettings(poll_interval=0)
