"""``tollhouse worker`` — job workers and webhook senders in their own process.

Run as many as needed against PostgreSQL (claims use ``FOR UPDATE SKIP LOCKED``); on
SQLite they work too, one writer at a time. ``SIGTERM``/``SIGINT`` stop gracefully: no
new claims, running jobs get ``--grace`` seconds, the rest are released to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging.config
import signal
from typing import Annotated, Any, cast

import typer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.cli.common import (
    ConfigOpt,
    DatabaseOpt,
    console,
    fail,
    run,
    settings_from,
)
from tollhouse.jobs import Worker, build_handler, create_job_schema, open_queue
from tollhouse.jobs.model import QueueSettings
from tollhouse.jobs.webhook_store import WebhookStore
from tollhouse.ops.exporter import WorkerMetrics
from tollhouse.ops.logs import LogFormat, log_config
from tollhouse.settings import LOG_FORMAT, LOG_LEVEL, Settings
from tollhouse.storage.engine import make_engine


def worker(
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", help="Jobs run at once by this process (default: the cap)."),
    ] = None,
    worker_id: Annotated[
        str | None, typer.Option("--id", help="Name recorded on leases (default host:pid).")
    ] = None,
    grace: Annotated[
        float, typer.Option("--grace", help="Seconds running jobs get to finish on stop.")
    ] = 10.0,
    lease_seconds: Annotated[
        float, typer.Option("--lease-seconds", help="How long a claim is held between heartbeats.")
    ] = 30.0,
    poll_interval: Annotated[
        float, typer.Option("--poll-interval", help="Seconds between claims when idle.")
    ] = 0.5,
    reap_interval: Annotated[
        float, typer.Option("--reap-interval", help="Seconds between looks for expired leases.")
    ] = 5.0,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", help="Serve Prometheus /metrics on this port."),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="Interface for --metrics-port.")
    ] = "127.0.0.1",
    log_format: Annotated[
        str,
        typer.Option("--log-format", envvar=LOG_FORMAT.env, help="text or json."),
    ] = LOG_FORMAT.default,
    log_level: Annotated[
        str, typer.Option("--log-level", envvar=LOG_LEVEL.env, help="e.g. info, debug.")
    ] = LOG_LEVEL.default,
) -> None:
    """Run the policy's async jobs and send webhooks until stopped."""
    settings = settings_from(config, database_url)
    try:
        logging.config.dictConfig(
            log_config(cast(LogFormat, log_format), log_level, log_bodies=settings.log_bodies)
        )
    except ValueError as exc:
        fail(f"{exc} (--log-format / --log-level)", 2)
    policy = settings.policy
    if not policy.async_routes:
        fail(
            f"the policy ({policy.source}) has no [[async_routes]]: there are no jobs to run",
            2,
        )
    if concurrency is not None and concurrency < 1:
        fail("--concurrency must be at least 1", 2)
    if lease_seconds <= 0 or poll_interval <= 0 or reap_interval <= 0:
        fail("--lease-seconds, --poll-interval and --reap-interval must be positive", 2)
    queue_settings = QueueSettings(
        default_cap=policy.async_routes[0].concurrency, lease_seconds=lease_seconds
    )
    options: dict[str, Any] = {
        "worker_id": worker_id,
        "poll_interval": poll_interval,
        "reap_interval": reap_interval,
    }
    metrics_at = (metrics_host, metrics_port) if metrics_port is not None else None
    run(
        lambda: _work(settings, queue_settings, concurrency, grace, options, metrics_at),
        service=True,
    )


def _upstream_app(settings: Settings, engine: AsyncEngine) -> Any:
    up = settings.policy.upstream
    if up.url:
        return None
    from tollhouse.http.app import build_upstream

    # The bundled example keeps its state in this database, so the worker's copy sees the
    # criteria created through any `tollhouse serve` on it.
    return build_upstream(settings.policy, engine)


async def _work(
    settings: Settings,
    queue_settings: QueueSettings,
    concurrency: int | None,
    grace: float,
    options: dict[str, Any],
    metrics_at: tuple[str, int] | None = None,
) -> None:
    engine = make_engine(settings.database_url, log_parameters=settings.log_bodies)
    try:
        try:
            await create_job_schema(engine)
        except SQLAlchemyError:
            # Workers starting together may race to create the tables; the loser retries.
            await asyncio.sleep(0.5)
            await create_job_schema(engine)
        queue = open_queue(engine, queue_settings)
        slots = concurrency or queue_settings.default_cap
        # One upstream connection per job slot: a job never waits for a connection.
        handler = build_handler(
            settings.policy, _upstream_app(settings, engine), min_connections=slots
        )
        webhooks = WebhookStore(engine, allow_private_targets=settings.allow_private_targets)
        job_worker = Worker(queue, handler, webhooks=webhooks, slots=slots, **options)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        exporter = WorkerMetrics(job_worker, queue, *metrics_at) if metrics_at else None
        await job_worker.start()
        console.print(
            f"[bold]tollhouse worker[/] {job_worker.dispatcher.worker_id} running "
            f"{', '.join(r.route for r in settings.policy.async_routes)} "
            f"({slots} at once) on {settings.database_url}",
            highlight=False,
        )
        try:
            await stop.wait()
        finally:
            console.print("stopping: finishing running jobs…", highlight=False)
            await job_worker.stop(grace)
            await handler.aclose()
            if exporter is not None:
                await exporter.stop()
    finally:
        await engine.dispose()


def main() -> None:
    """Run ``tollhouse worker`` on its own (``python -m tollhouse.cli.worker``)."""
    typer.run(worker)


if __name__ == "__main__":
    main()
