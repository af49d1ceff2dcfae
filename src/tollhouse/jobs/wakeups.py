"""How the queue tells dispatchers and webhook senders that there is work.

Two channels, one per reach:

* **In this process**: :class:`Wakeups` calls the subscribers of a topic synchronously
  once a write committed (the queue calls :meth:`Wakeups.notify` after its transaction).
* **Across processes, PostgreSQL only**: :func:`announce` sends ``NOTIFY`` on
  :data:`NOTIFY_CHANNEL` *inside* the writing transaction, so listeners hear of work only
  once it is committed; :class:`PgListener` ``LISTEN``\\ s on one connection and relays
  each notification to the same :class:`Wakeups`.

SQLite has no such feed: dispatchers poll, and :func:`announce` does nothing there.
Polling stays the fallback on PostgreSQL too (a dropped listener loses notifications).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollhouse.jobs.model import TOPICS, Topic, Wakeup

logger = logging.getLogger(__name__)

#: PostgreSQL ``NOTIFY`` channel for new work; the payload is the topic (``jobs`` or
#: ``deliveries``).
NOTIFY_CHANNEL = "tollhouse_work"


class Wakeups:
    """The in-process subscribers of each topic."""

    def __init__(self) -> None:
        self._subscribers: dict[Topic, list[Wakeup]] = {topic: [] for topic in TOPICS}

    def subscribe(self, wakeup: Wakeup, topic: Topic = "jobs") -> None:
        """Call ``wakeup`` whenever work of ``topic`` may be there."""
        self._subscribers[topic].append(wakeup)

    def notify(self, topic: Topic) -> None:
        """Wake every subscriber of ``topic`` (after the write committed)."""
        for wakeup in self._subscribers[topic]:
            wakeup()


async def announce(conn: AsyncConnection, topic: Topic) -> None:
    """Tell listening processes about new work, at this transaction's commit (PostgreSQL;
    nothing on SQLite, where nobody listens)."""
    if conn.dialect.name != "sqlite":
        await conn.execute(select(func.pg_notify(NOTIFY_CHANNEL, topic)))


class PgListener:
    """``LISTEN`` on :data:`NOTIFY_CHANNEL` over one connection of the engine's pool; each
    notification wakes the subscribers of its topic, so a dispatcher picks up a job
    another process enqueued without waiting for its poll interval.

    Polling stays the fallback: when the connection drops, the listener reconnects with
    backoff (1 s doubling to 30 s) and wakes every subscriber once connected again, since
    notifications sent meanwhile are lost.

    Args:
        engine: the queue's engine (PostgreSQL).
        wakeups: the subscribers to wake.
        retry_seconds: first delay before reconnecting.
    """

    def __init__(self, engine: AsyncEngine, wakeups: Wakeups, retry_seconds: float = 1.0) -> None:
        self.engine = engine
        self.wakeups = wakeups
        self.retry_seconds = retry_seconds
        self.backend_pid: int | None = None
        """The listening session's server pid while connected (None otherwise)."""
        self.connects = 0
        """Successful connections so far (reconnects included)."""
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @property
    def listening(self) -> bool:
        """True while connected and listening."""
        return self.backend_pid is not None

    async def start(self, wait: float = 5.0) -> None:
        """Start listening; returns once the first connection attempt succeeded or
        failed, or after ``wait`` seconds (it goes on trying in the background)."""
        if self._task is not None:
            return
        self._ready.clear()
        self._task = asyncio.get_running_loop().create_task(self._run())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), wait)

    async def stop(self) -> None:
        """Stop listening; the connection is closed, not returned to the pool."""
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.wakeups.notify(payload if payload in TOPICS else "jobs")

    async def _run(self) -> None:
        delay = self.retry_seconds
        while True:
            try:
                await self._listen()
                delay = self.retry_seconds
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "job notifications unavailable; polling until reconnected",
                    extra={"error": str(exc), "retry_in": delay},
                )
            finally:
                self.backend_pid = None
                self._ready.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _listen(self) -> None:
        conn = await self.engine.connect()
        try:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            lost = asyncio.Event()
            driver.add_termination_listener(lambda _c: lost.set())
            await driver.add_listener(NOTIFY_CHANNEL, self._on_notify)
            self.backend_pid = driver.get_server_pid()
            self.connects += 1
            self._ready.set()
            # Work added while nobody listened (first start, or a reconnect) is not
            # announced again: look once now.
            for topic in TOPICS:
                self.wakeups.notify(topic)
            while not lost.is_set() and not driver.is_closed():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), 5.0)
            logger.warning("job notification connection lost; reconnecting")
        finally:
            # A session that LISTENs must not go back to the pool.
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()
