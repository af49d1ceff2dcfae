"""Retention of the job queue's and the webhooks' finished rows.

Finished jobs (completed, failed, dead) are deleted ``jobs_retention_days`` after they
finished, finished webhook deliveries (delivered, failed, cancelled) and their recorded
attempts ``deliveries_retention_days`` after theirs (:class:`QueueSettings`; None keeps
them forever). Queued and running jobs and pending deliveries are never touched,
whatever their age, and neither are the orgs' counters.

The finished-jobs rollup (``job_volume``) is not pruned with the jobs: the scoring volume
keeps counting jobs whose rows are gone. Its rows are trimmed once no range can read them
(:data:`tollhouse.jobs.volume.ROLLUP_KEEP`: minute rows after a day, hour rows after 92
days), whatever the jobs' retention.

Deletes run ``prune_batch`` rows per write transaction and loop until nothing old is
left, so a large backlog never holds the write lock (SQLite) or row locks (PostgreSQL)
for long. The dispatcher's retention task runs :func:`prune` (through
:meth:`tollhouse.jobs.queue.JobQueue.prune`); it is kept out of the queue's state
machine, which has no business with the webhook tables.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.jobs.model import TERMINAL, QueueSettings
from tollhouse.jobs.schema import job_volume, jobs, webhook_attempts, webhook_deliveries
from tollhouse.jobs.volume import ROLLUP_KEEP
from tollhouse.storage.transactions import write_transaction

logger = logging.getLogger(__name__)


async def prune_jobs(engine: AsyncEngine, settings: QueueSettings, now: datetime) -> int:
    """Delete finished jobs past ``settings.jobs_retention_days``; returns how many."""
    if settings.jobs_retention_days is None:
        return 0
    cutoff = now - timedelta(days=settings.jobs_retention_days)
    deleted = 0
    while True:
        async with write_transaction(engine, "job queue") as conn:
            old = (
                select(jobs.c.seq)
                .where(jobs.c.status.in_(TERMINAL), jobs.c.finished_at < cutoff)
                .limit(settings.prune_batch)
            )
            seqs = (await conn.execute(old)).scalars().all()
            if seqs:
                await conn.execute(delete(jobs).where(jobs.c.seq.in_(seqs)))
        deleted += len(seqs)
        if len(seqs) < settings.prune_batch:
            return deleted


async def prune_deliveries(
    engine: AsyncEngine, settings: QueueSettings, now: datetime
) -> tuple[int, int]:
    """Delete finished deliveries past ``settings.deliveries_retention_days`` with their
    attempts; returns ``(deliveries, attempts)`` deleted."""
    if settings.deliveries_retention_days is None:
        return 0, 0
    cutoff = now - timedelta(days=settings.deliveries_retention_days)
    d = webhook_deliveries.c
    deliveries = attempts = 0
    while True:
        async with write_transaction(engine, "job queue") as conn:
            old = (
                select(d.id)
                .where(d.status != "pending", d.finished_at < cutoff)
                .limit(settings.prune_batch)
            )
            ids = (await conn.execute(old)).scalars().all()
            if ids:
                gone = await conn.execute(
                    delete(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(ids))
                )
                attempts += max(0, gone.rowcount or 0)
                await conn.execute(delete(webhook_deliveries).where(d.id.in_(ids)))
        deliveries += len(ids)
        if len(ids) < settings.prune_batch:
            return deliveries, attempts


async def prune_volume(engine: AsyncEngine, now: datetime) -> int:
    """Delete rollup rows no scoring-volume range reads any more; returns how many."""
    v = job_volume.c
    deleted = 0
    async with write_transaction(engine, "job queue") as conn:
        for span, keep in ROLLUP_KEEP.items():
            gone = await conn.execute(
                delete(job_volume).where(v.span == span, v.bucket < now - keep)
            )
            deleted += max(0, gone.rowcount or 0)
    return deleted


async def prune(engine: AsyncEngine, settings: QueueSettings, now: datetime) -> dict[str, int]:
    """Delete finished jobs and finished deliveries past their retention; returns the
    rows deleted per table (``jobs``, ``job_volume``, ``webhook_deliveries``,
    ``webhook_attempts``)."""
    deleted = {jobs.name: 0, webhook_deliveries.name: 0, webhook_attempts.name: 0}
    deleted[jobs.name] = await prune_jobs(engine, settings, now)
    deleted[job_volume.name] = await prune_volume(engine, now)
    deliveries, attempts = await prune_deliveries(engine, settings, now)
    deleted[webhook_deliveries.name] = deliveries
    deleted[webhook_attempts.name] = attempts
    if any(deleted.values()):
        logger.info("pruned finished jobs and deliveries", extra={"deleted": deleted})
    return deleted
