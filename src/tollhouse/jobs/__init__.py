"""Async jobs (the scoring API shape, docs/api-shapes.md) and signed webhooks: queue,
workers, handlers, webhooks.

Integration in a nutshell::

    from tollhouse.jobs import WebhookStore, Worker, build_handler, open_queue, settings_for
    from tollhouse.http.jobs_app import create_jobs_app
    from tollhouse.schema import create_schema

    await create_schema(engine)   # every table, the jobs' included (migration step 7)
    queue = open_queue(engine, settings_for(policy))
    webhooks = WebhookStore(engine)
    app = create_jobs_app(queue=queue, policy=policy, webhooks=webhooks, fallback=upstream)
    worker = Worker(queue, build_handler(policy, upstream), webhooks=webhooks)
    await worker.start()   # … await worker.stop()
"""

from __future__ import annotations

from tollhouse.jobs.handlers import (
    FunctionHandler,
    JobHandler,
    RoutedHandler,
    UpstreamHandler,
    build_handler,
)
from tollhouse.jobs.model import (
    Enqueued,
    Job,
    JobFailed,
    JobRetry,
    Lease,
    NewJob,
    QueueSettings,
    Standing,
)
from tollhouse.jobs.queue import JobQueue, open_queue
from tollhouse.jobs.schema import create_job_schema
from tollhouse.jobs.webhook_sender import WebhookSender
from tollhouse.jobs.webhook_store import WebhookStore
from tollhouse.jobs.worker import Dispatcher, Worker
from tollhouse.policy.model import Policy

__all__ = [
    "Dispatcher",
    "Enqueued",
    "FunctionHandler",
    "Job",
    "JobFailed",
    "JobHandler",
    "JobQueue",
    "JobRetry",
    "Lease",
    "NewJob",
    "QueueSettings",
    "RoutedHandler",
    "Standing",
    "UpstreamHandler",
    "WebhookSender",
    "WebhookStore",
    "Worker",
    "build_handler",
    "create_job_schema",
    "open_queue",
    "settings_for",
]


def settings_for(policy: Policy, **overrides: float | None) -> QueueSettings:
    """Queue settings for a policy: the default per-org cap is its first async route's
    ``concurrency`` (500 in the scoring API shape); ``overrides`` set any other field (e.g.
    ``jobs_retention_days=None`` keeps finished jobs forever)."""
    cap = policy.async_routes[0].concurrency if policy.async_routes else 500
    fields: dict[str, float | None] = {"default_cap": cap, **overrides}
    return QueueSettings(**fields)  # type: ignore[arg-type]
