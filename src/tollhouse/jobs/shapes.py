"""Jobs as callers see them: the JSON of the 202, of a poll, and of a webhook event."""

from __future__ import annotations

from typing import Any

from tollhouse.jobs.model import Job, Standing, iso

#: ``GET /v1/score?ids=``: the most job ids one call answers (as many as one page of the
#: queue listing or one batch of submissions) ...
MAX_STATUS_IDS = 100
#: ... and what each may look like (job ids are ``sj_`` + hex; none looks otherwise).
STATUS_ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"


def resource_name(route: str) -> str:
    """The noun of an async route, for event types: ``POST /v1/score`` → ``score``."""
    path = route.split()[-1]
    for segment in reversed(path.strip("/").split("/")):
        if segment and not segment.startswith("{") and segment != "*":
            return segment
    return "job"


def event_type(job: Job) -> str:
    """``score.completed`` or ``score.failed`` (jobs of other routes use their noun)."""
    outcome = "completed" if job.state == "completed" else "failed"
    return f"{resource_name(job.route)}.{outcome}"


def accepted_json(job: Job, standing: Standing | None) -> dict[str, Any]:
    """The 202 body (the scoring API shape): id, ``queued``, position and estimated wait
    (``null`` while no worker is running: nothing would start the job)."""
    return {
        "scoringJobId": job.id,
        "status": "queued",
        "queuePosition": standing.position if standing is not None else 0,
        "estimatedWaitSeconds": standing.wait_seconds if standing is not None else 0,
    }


def job_json(job: Job, standing: Standing | None = None) -> dict[str, Any]:
    """A job as ``GET /v1/score/{scoringJobId}`` answers it (and webhooks carry it).

    Queued jobs carry ``queuePosition`` and ``estimatedWaitSeconds`` (``null`` while no
    worker is running); completed ones the
    handler's ``result``; failed ones an ``error`` object.
    """
    out: dict[str, Any] = {"scoringJobId": job.id, "status": job.status}
    if job.application_id is not None:
        out["applicationId"] = job.application_id
    posting = job.payload.get("jobId")
    if isinstance(posting, str):
        out["jobId"] = posting
    out["attempts"] = job.attempts
    out["createdAt"] = iso(job.created_at)
    if job.started_at is not None:
        out["startedAt"] = iso(job.started_at)
    if job.state == "queued":
        out["queuePosition"] = standing.position if standing is not None else 1
        out["estimatedWaitSeconds"] = standing.wait_seconds if standing is not None else 0
        if job.attempts:
            # Waiting out a retry's backoff: say when and why.
            out["nextAttemptAt"] = iso(job.run_after)
            if job.error is not None:
                out["lastError"] = job.error
    elif job.state == "completed":
        if job.finished_at is not None:
            out["completedAt"] = iso(job.finished_at)
        out["result"] = job.result
    elif job.terminal:
        if job.finished_at is not None:
            out["failedAt"] = iso(job.finished_at)
        out["error"] = job.error
    return out
