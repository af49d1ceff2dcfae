"""Sending webhook deliveries: one signed attempt (:func:`send_attempt`) and the
:class:`WebhookSender` that claims due deliveries and sends them in its own tasks.

* :class:`WebhookSender` runs attempts with its own concurrency, never in a job worker's
  slot, so a slow receiver holds up no job; it claims from and records to a
  :class:`~tollhouse.jobs.webhook_store.WebhookStore`.
* Redirects are not followed (a 3xx is a failed attempt): the signed body goes only to
  the URL the org registered. Unless private targets are allowed, its client connects
  only to checked public addresses (:func:`tollhouse.security.net.webhook_client`).
* :func:`send_attempt` never raises for the receiver's failures: a timeout, a refused
  connection or a non-2xx answer is an :class:`~tollhouse.jobs.webhooks.AttemptResult`
  with the first :data:`EXCERPT_CHARS` characters of the answer and its ``Retry-After``.

The values, signing and schedule are in :mod:`tollhouse.jobs.webhooks`, with the overview
of how webhooks work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime

import httpx

from tollhouse.errors import StorageError
from tollhouse.jobs.webhook_store import WebhookStore
from tollhouse.jobs.webhooks import AttemptResult, DeliveryTask, signed_headers
from tollhouse.security.net import webhook_client
from tollhouse.times import parse_retry_after

logger = logging.getLogger(__name__)

__all__ = ["EXCERPT_CHARS", "WebhookSender", "send_attempt"]

#: Characters of a receiver's answer kept with each attempt.
EXCERPT_CHARS = 500


async def send_attempt(
    client: httpx.AsyncClient, task: DeliveryTask, now: datetime
) -> AttemptResult:
    """POST one signed attempt; never raises for the receiver's failures."""
    timestamp = int(now.timestamp())
    headers = signed_headers(
        task.secret, task.message_id, timestamp, task.body, task.previous_secret
    )
    started = time.perf_counter()
    try:
        response = await client.post(task.url, content=task.body, headers=headers)
    except httpx.TimeoutException:
        return AttemptResult(None, _ms(started), "timed out")
    except httpx.HTTPError as exc:
        return AttemptResult(None, _ms(started), f"{type(exc).__name__}: {exc}"[:500])
    duration = _ms(started)
    status = response.status_code
    # PostgreSQL text holds no NUL.
    text = response.content[: EXCERPT_CHARS * 4].decode("utf-8", "replace")
    excerpt = text[:EXCERPT_CHARS].replace("\x00", "\ufffd")
    if 200 <= status < 300:
        return AttemptResult(status, duration, None, response_excerpt=excerpt or None)
    error = f"HTTP {status}"
    if 300 <= status < 400:
        error += " (redirects are not followed)"
    retry_after = parse_retry_after(response.headers.get("retry-after"), now.timestamp())
    return AttemptResult(status, duration, error, retry_after, excerpt or None)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


class WebhookSender:
    """Sends due deliveries in its own tasks (never in a job worker's slot).

    Args:
        store: where deliveries live.
        concurrency: attempts in flight at once.
        timeout: seconds one attempt may take (connect + response).
        poll_interval: seconds between looks for due deliveries when not woken.
        client: an httpx client to send with (tests); one is made otherwise.
    """

    def __init__(
        self,
        store: WebhookStore,
        *,
        concurrency: int = 50,
        timeout: float = 15.0,
        poll_interval: float = 1.0,
        client: httpx.AsyncClient | None = None,
        on_attempt: Callable[[AttemptResult, str], None] | None = None,
    ) -> None:
        self.store = store
        self.concurrency = concurrency
        self.timeout = timeout
        self.poll_interval = poll_interval
        self._client = client
        self._own_client = client is None
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._stopping = False
        #: Called after every recorded attempt with its result and the delivery's new
        #: status (``/metrics`` counts attempts by outcome through it).
        self.on_attempt = on_attempt

    def wake(self) -> None:
        """Look for due deliveries now (called when a job finishes in this process)."""
        self._wake.set()

    async def start(self) -> None:
        """Start the send loop."""
        if self._loop_task is not None:
            return
        if self._client is None:
            # Redirects never followed; unless allowed, connections only to checked public
            # addresses, resolved once per connection (tollhouse.security.net).
            self._client = webhook_client(
                allow_private=self.store.allow_private_targets,
                timeout=self.timeout,
                max_connections=self.concurrency,
            )
        self._stopping = False
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, grace: float = 5.0) -> None:
        """Stop claiming; let attempts in flight finish for ``grace`` seconds, then cancel
        them (a cancelled delivery is retried after its lease by any sender)."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=grace)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            free = self.concurrency - len(self._inflight)
            claimed: Sequence[DeliveryTask] = ()
            if free > 0:
                try:
                    claimed = await self.store.claim(free)
                except StorageError:
                    logger.exception("could not claim webhook deliveries")
            for task in claimed:
                t = asyncio.get_running_loop().create_task(self._deliver(task))
                self._inflight.add(t)
                t.add_done_callback(self._done)
            if claimed and len(claimed) == free:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()

    async def _deliver(self, task: DeliveryTask) -> None:
        assert self._client is not None
        started_at = self.store.clock()
        result = await send_attempt(self._client, task, started_at)
        try:
            status = await self.store.record(task, result, started_at)
        except StorageError:
            # The attempt happened but is not recorded; the lease runs out and it is retried.
            logger.exception("could not record a webhook attempt", extra={"delivery": task.id})
            if self.on_attempt is not None:
                self.on_attempt(result, "unrecorded")
            return
        if self.on_attempt is not None:
            self.on_attempt(result, status)
        logger.info(
            "webhook attempt",
            extra={
                "delivery": task.id,
                "attempt": task.attempts + 1,
                "status_code": result.status_code,
                "outcome": status,
            },
        )
