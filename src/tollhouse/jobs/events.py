"""Jobs emit their own product events (docs/jobs.md): one ``job`` event per finished job.

The event goes into the same ``product_events`` table ``POST /v1/events`` writes, inside
the transaction that moves the job to its terminal state, so an outcome and its event
are stored together or not at all. It has the job's org and environment, so it counts
where the job was submitted (a sandbox job never in production's metrics). Its id is the
job id: the table is unique per ``(org, environment, event_id)`` and the insert ignores a
conflict, so a job can never be counted twice (a replayed finish, a reaper racing a
worker).

``data`` = ``{"job_id", "route", "status": "completed"|"failed", "attempts",
"duration_ms", "queue_ms"}``: ``queue_ms`` from submission to the first attempt's start,
``duration_ms`` from that start to the outcome (retries and their backoff included).
``status`` and ``duration_ms`` are also copied into the typed columns the metric
catalogue reads, as ``POST /v1/events`` does for its own types.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from tollhouse.analytics.events import epoch_us
from tollhouse.jobs.model import Job
from tollhouse.metering.schema import product_events

#: The product event type of a finished job.
JOB_EVENT_TYPE = "job"


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round(max(0.0, (end - start).total_seconds() * 1000), 3)


def job_event_data(job: Job) -> dict[str, Any]:
    """The ``data`` of a finished job's ``job`` event."""
    return {
        "job_id": job.id,
        "route": job.route,
        "status": job.status,
        "attempts": job.attempts,
        "duration_ms": _ms(job.started_at, job.finished_at),
        "queue_ms": _ms(job.created_at, job.started_at or job.finished_at),
    }


def job_event_row(job: Job, now: datetime) -> dict[str, Any]:
    """A ``product_events`` row for a finished job (its time is the outcome's)."""
    data = job_event_data(job)
    duration = data["duration_ms"]
    return {
        "org": job.org,
        "environment": job.environment,
        "event_id": job.id,
        "type": JOB_EVENT_TYPE,
        "time_us": epoch_us(job.finished_at or now),
        "received_us": epoch_us(now),
        "status": data["status"],
        "duration_us": round(duration * 1000) if duration is not None else None,
        "data": data,
    }


async def record_job_events(conn: AsyncConnection, finished: Sequence[Job], now: datetime) -> None:
    """Insert the ``job`` events of ``finished`` jobs inside the caller's transaction; a
    job id already recorded is skipped.

    Args:
        conn: a connection in the transaction that finished the jobs.
        finished: jobs in a terminal state.
        now: when they finished.
    """
    if not finished:
        return
    stmt = _INSERTS["sqlite" if conn.dialect.name == "sqlite" else "postgresql"]
    await conn.execute(stmt, [job_event_row(job, now) for job in finished])


# Built once per dialect: every batch of finished jobs runs one.
_INSERTS = {
    name: insert(product_events).on_conflict_do_nothing(
        index_elements=[
            product_events.c.org,
            product_events.c.environment,
            product_events.c.event_id,
        ]
    )
    for name, insert in (("sqlite", sqlite_insert), ("postgresql", pg_insert))
}
