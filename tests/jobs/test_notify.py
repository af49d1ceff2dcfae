"""PostgreSQL LISTEN/NOTIFY: a dispatcher picks up a job another process (another engine,
another session) enqueued without waiting for its poll, and keeps doing so after its
listening session is killed. The poll interval is an hour here, so only a notification
(or the reconnect's catch-up look) can start the job."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text

from tests.jobs.conftest import database, run
from tests.jobs.test_worker import until
from tollhouse.jobs import Dispatcher, Job, NewJob, open_queue
from tollhouse.jobs.sql import PgListener

HOUR = 3600.0


def _new(n: int = 1) -> NewJob:
    return NewJob(org="acme", route="POST /v1/score", payload={"n": n})


@pytest.mark.postgres
def test_another_process_enqueue_wakes_the_dispatcher(pg_url: str) -> None:
    ran: list[str] = []

    async def handler(job: Job) -> dict[str, Any]:
        ran.append(job.id)
        return {}

    async def go() -> None:
        async with database(pg_url) as worker_engine, database(pg_url) as api_engine:
            worker_queue = open_queue(worker_engine)
            api_queue = open_queue(api_engine)
            d = Dispatcher(worker_queue, handler, poll_interval=HOUR, reap_interval=HOUR)
            await d.start()
            try:
                listener = d.listener
                assert isinstance(listener, PgListener) and listener.listening
                # The start's first claim found nothing; it now waits an hour to poll.
                await asyncio.sleep(0.05)
                [first] = await api_queue.enqueue([_new(1)])
                await until(lambda: _has(ran, first.job.id), "the notified claim")

                # Kill the listening session: the listener reconnects and, since
                # notifications sent meanwhile are lost, looks for work once.
                pid = listener.backend_pid
                async with api_engine.connect() as conn:
                    await conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                    await conn.commit()
                await until(lambda: _true(listener.connects >= 2), "the reconnect")
                assert listener.backend_pid not in (None, pid)
                [second] = await api_queue.enqueue([_new(2)])
                await until(lambda: _has(ran, second.job.id), "a claim after reconnecting")
            finally:
                await d.stop()
            assert listener.backend_pid is None

    run(go())


@pytest.mark.postgres
def test_without_listening_the_job_waits_for_the_poll(pg_url: str) -> None:
    """The counter-test: with ``listen=False`` the same enqueue does not start the job
    (so the test above really measures the notification path)."""
    ran: list[str] = []

    async def handler(job: Job) -> dict[str, Any]:
        ran.append(job.id)
        return {}

    async def go() -> None:
        async with database(pg_url) as worker_engine, database(pg_url) as api_engine:
            d = Dispatcher(open_queue(worker_engine), handler, poll_interval=HOUR, listen=False)
            assert d.listener is None
            await d.start()
            try:
                await asyncio.sleep(0.05)
                await open_queue(api_engine).enqueue([_new()])
                # Enough time for a notified claim to have run many times over.
                await asyncio.sleep(1.0)
                assert ran == []
            finally:
                await d.stop()

    run(go())


def test_sqlite_has_no_listener(sqlite_url: str) -> None:
    async def go() -> None:
        async with database(sqlite_url) as engine:
            assert open_queue(engine).listen() is None

    run(go())


async def _has(ran: list[str], job_id: str) -> bool:
    return job_id in ran


async def _true(value: bool) -> bool:
    return value
