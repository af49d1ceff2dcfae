"""Running jobs: the :class:`Dispatcher` claims, runs, heartbeats and reaps; the
:class:`Worker` adds the webhook sender. Both run as asyncio tasks, inside ``tollhouse
serve`` (embedded) or in ``tollhouse worker`` processes (scale); ``start()`` and
``stop()`` are the whole lifecycle.

Shutdown is graceful: no new claims, jobs in flight get ``grace`` seconds to finish,
then they are cancelled and their leases released (the job is queued again, the attempt
not counted). A process that dies instead leaves its leases to expire; any dispatcher's
reaper requeues them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tollhouse.errors import StorageError
from tollhouse.jobs.handlers import JobHandler
from tollhouse.jobs.model import Finish, JobFailed, JobRetry, Lease, Outcome
from tollhouse.jobs.queue import JobQueue, Listener
from tollhouse.jobs.webhook_sender import WebhookSender
from tollhouse.jobs.webhook_store import WebhookStore
from tollhouse.jobs.webhooks import AttemptResult

logger = logging.getLogger(__name__)

#: The error of an attempt whose handler raised something unexpected (a bug, not a
#: ``JobFailed``/``JobRetry``): the same words for every such failure, in the API and in
#: webhooks; what was raised is logged with the job id.
HANDLER_ERROR: dict[str, str] = {
    "code": "HANDLER_ERROR",
    "message": "The job's handler failed unexpectedly; the operator's logs have the details.",
}
#: Outcomes written per transaction at most.
FINISH_BATCH = 200
#: Outcomes written per transaction when few are waiting: a transaction's time grows
#: with its size, and a job's slot is refilled only when its transaction commits, so
#: jobs ending together are written in a pipeline of small transactions (the first
#: slots refill after a short one) rather than one long one. A quarter of what waits
#: is taken once more than this does, so a backlog still drains in large transactions.
FINISH_BATCH_MIN = 16
#: Tries at least of a completion whose write failed (database unavailable); retries go
#: on for a lease's length before the lease is left to expire and the job retried.
FINISH_TRIES = 3


def default_worker_id() -> str:
    """``host:pid``: which process holds a lease (shown in the jobs table)."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, slots=True)
class JobEvent:
    """What a dispatcher reports after each attempt (for metrics and tests)."""

    job_id: str
    org: str
    outcome: Outcome | None
    """None: the lease was lost before the attempt ended (another worker owns the job)."""
    seconds: float


class _Finisher:
    """Writes attempt outcomes in batches: whatever finishes while one transaction is
    being written goes into the next, so a thousand jobs ending at once cost a handful
    of transactions, not a thousand (group commit, with no added delay). The same
    transaction claims jobs for the slots it frees (``refill``), handed to ``spawn``.
    Each transaction takes a quarter of what waits, between ``min_batch`` and
    ``max_batch`` outcomes (see :data:`FINISH_BATCH_MIN`)."""

    def __init__(
        self,
        queue: JobQueue,
        refill: Callable[[int], tuple[str, int]],
        spawn: Callable[[Lease], None],
        settled: Callable[[Sequence[Finish]], None],
        max_batch: int = FINISH_BATCH,
        min_batch: int = FINISH_BATCH_MIN,
    ) -> None:
        self.queue = queue
        self.refill = refill
        self.spawn = spawn
        self.settled = settled
        self.max_batch = max_batch
        self.min_batch = min(min_batch, max_batch)
        self._pending: list[tuple[Finish, asyncio.Future[Outcome | None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for _, future in self._pending:
            if not future.done():
                future.set_exception(StorageError("the dispatcher stopped"))
        self._pending.clear()

    async def finish(self, item: Finish) -> Outcome | None:
        future: asyncio.Future[Outcome | None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            # One pass of the event loop first: jobs that ended at the same moment (their
            # callbacks already queued) join this batch instead of needing another.
            await asyncio.sleep(0)
            self._wake.clear()
            while self._pending:
                size = min(self.max_batch, max(self.min_batch, len(self._pending) // 4))
                batch = self._pending[:size]
                del self._pending[:size]
                try:
                    outcomes, leases = await self.queue.finish_and_claim(
                        [item for item, _ in batch], *self.refill(len(batch))
                    )
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                # Their slots are free from now on, before their tasks get to run
                # again: the next batch may refill them without waiting.
                self.settled([item for item, _ in batch])
                for lease in leases:
                    self.spawn(lease)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if not future.done():
                        future.set_result(outcome)


class Dispatcher:
    """Claims jobs from ``queue`` and runs ``handler`` on each, ``slots`` at a time.

    Args:
        queue: the job queue.
        handler: runs one attempt.
        slots: jobs this process runs at once (orgs' caps apply on top, across processes).
        worker_id: recorded on leases; ``host:pid`` by default.
        poll_interval: seconds between claims when idle (a same-process enqueue wakes it
            at once).
        heartbeat_interval: seconds between lease extensions; a third of the lease.
        reap_interval: seconds between runs of the reaper.
        prune_interval: seconds between runs of the retention prune (finished jobs and
            webhook deliveries past :class:`~tollhouse.jobs.model.QueueSettings`' ages).
        presence_interval: seconds between records of this worker in ``job_workers``
            (wait estimates are None while no worker recorded itself within
            ``worker_seen_seconds``); a sixth of that by default.
        listen: on PostgreSQL, also wake on other processes' new work (``LISTEN``);
            False: this process's own wakeups and the poll only.
        on_event: called after every attempt.
    """

    def __init__(
        self,
        queue: JobQueue,
        handler: JobHandler,
        *,
        slots: int = 500,
        worker_id: str | None = None,
        poll_interval: float = 0.5,
        heartbeat_interval: float | None = None,
        reap_interval: float = 5.0,
        prune_interval: float = 3600.0,
        presence_interval: float | None = None,
        listen: bool = True,
        on_event: Callable[[JobEvent], None] | None = None,
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.queue = queue
        self.handler = handler
        self.slots = slots
        self.worker_id = worker_id or default_worker_id()
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval or queue.settings.lease_seconds / 3
        self.reap_interval = reap_interval
        self.prune_interval = prune_interval
        self.presence_interval = presence_interval or queue.settings.worker_seen_seconds / 6
        self.on_event = on_event
        self._wake = asyncio.Event()
        self._running: dict[str, tuple[Lease, asyncio.Task[None]]] = {}
        self._lost: set[str] = set()
        # Jobs whose outcome is written but whose task has not yet left ``_running``.
        self._settled: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._finisher = _Finisher(queue, self._refill, self._spawn, self._on_settled)
        queue.subscribe(self.wake)
        # PostgreSQL: other processes' enqueues wake this one through LISTEN/NOTIFY;
        # the poll stays as the fallback.
        self.listener: Listener | None = queue.listen() if listen else None

    @property
    def active(self) -> int:
        """Jobs running in this dispatcher now."""
        return len(self._running)

    def wake(self) -> None:
        """Claim now rather than at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        """Start claiming, heartbeating and reaping."""
        if self._tasks:
            return
        self._stopping = False
        loop = asyncio.get_running_loop()
        # Recorded before the first claim: jobs accepted from now on get a wait estimate.
        await self._present()
        self._finisher.start()
        self._tasks = [
            loop.create_task(self._claim_loop()),
            loop.create_task(self._every(self.presence_interval, self._present)),
            loop.create_task(self._every(self.heartbeat_interval, self._heartbeat)),
            loop.create_task(self._every(self.reap_interval, self._reap)),
            loop.create_task(self._every(self.prune_interval, self._prune)),
        ]
        # The first claim runs while the listener connects (it needs no notification:
        # it takes whatever is queued already).
        if self.listener is not None:
            await self.listener.start()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; wait up to ``grace`` seconds for running jobs, then cancel them
        and release their leases."""
        if not self._tasks:
            return
        self._stopping = True
        self._wake.set()
        claim_loop, *background = self._tasks
        with contextlib.suppress(asyncio.CancelledError):
            await claim_loop
        # Heartbeats keep running while jobs finish, so no lease expires during the grace.
        # A finish written just before the stop may still hand out new leases (its
        # refill): wait for those too, so none is left running unrecorded at exit.
        deadline = time.monotonic() + grace
        while self._running and time.monotonic() < deadline:
            tasks = [t for _, t in self._running.values()]
            await asyncio.wait(tasks, timeout=deadline - time.monotonic())
        if self._running:
            leftover = [lease for lease, _ in self._running.values()]
            pending = [t for _, t in self._running.values()]
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for lease in leftover:
                try:
                    await self.queue.release(lease)
                except StorageError:
                    logger.exception("could not release a lease", extra={"job": lease.job.id})
        for t in background:
            t.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await self._finisher.stop()
        if self.listener is not None:
            await self.listener.stop()
        self._tasks = []
        try:
            await self.queue.forget_worker(self.worker_id)
        except StorageError:  # its record expires by itself
            logger.warning("could not remove this worker's record", exc_info=True)

    def _busy(self) -> int:
        """Slots in use: running jobs, less those whose outcome is already written."""
        return len(self._running) - len(self._settled)

    def _on_settled(self, items: Sequence[Finish]) -> None:
        for item in items:
            if item.lease.job.id in self._running:
                self._settled.add(item.lease.job.id)

    def _refill(self, freed: int) -> tuple[str, int]:
        """What a finishing batch may claim: the slots it frees plus any idle ones
        (nothing once stopping). The batch's jobs still count as running here."""
        if self._stopping:
            return self.worker_id, 0
        return self.worker_id, max(0, self.slots - self._busy() + freed)

    def _spawn(self, lease: Lease) -> None:
        task = asyncio.get_running_loop().create_task(self._run(lease))
        self._running[lease.job.id] = (lease, task)
        self._settled.discard(lease.job.id)

    async def _claim_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            free = self.slots - self._busy()
            leases: list[Lease] = []
            if free > 0:
                try:
                    leases = await self.queue.claim(self.worker_id, free)
                except StorageError:
                    logger.exception("could not claim jobs")
            for lease in leases:
                self._spawn(lease)
            if leases and len(leases) == free:
                continue  # slots were the limit, not work: a finished job wakes us
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def _run(self, lease: Lease) -> None:
        job = lease.job
        started = time.monotonic()
        outcome: Outcome | None = None
        try:
            try:
                result = await self.handler(job)
            except asyncio.CancelledError:
                raise
            except JobFailed as exc:
                outcome = await self._finish(lease, exc.error(), retryable=False)
            except JobRetry as exc:
                outcome = await self._finish(lease, exc.error(), retryable=True)
            except Exception as exc:
                # The exception's text stays in the log (with the job id): it can name
                # internals, or echo the caller's data, so the job's error never carries it.
                logger.exception(
                    "job handler failed", extra={"job": job.id, "error": type(exc).__name__}
                )
                error = dict(HANDLER_ERROR)
                outcome = await self._finish(lease, error, retryable=True)
            else:
                outcome = await self._finish(lease, result)
            if outcome is None:
                logger.warning("lease lost before the job finished", extra={"job": job.id})
        finally:
            entry = self._running.get(job.id)
            if entry is not None and entry[0] is lease:
                # (Not when a newer claim of the same job already runs here.)
                del self._running[job.id]
                self._settled.discard(job.id)
            self._lost.discard(job.id)
            if outcome is None:
                # No outcome written, so no transaction refilled this slot: claim for
                # it. (A written outcome's transaction claimed for the slot already;
                # waking the claim loop then only costs an empty claim, which on
                # SQLite waits for, and delays, the next finishing batch.)
                self._wake.set()
        if self.on_event is not None:
            self.on_event(JobEvent(job.id, job.org, outcome, time.monotonic() - started))

    async def _finish(
        self, lease: Lease, payload: dict[str, Any], *, retryable: bool | None = None
    ) -> Outcome | None:
        # While the database is away, keep the outcome and retry for as long as the lease
        # could still be ours (heartbeats keep it once the database is back): the job is
        # then recorded once, not run again after its lease expires.
        give_up = time.monotonic() + self.queue.settings.lease_seconds
        attempt = 0
        while True:
            item = (
                Finish(lease, result=payload)
                if retryable is None
                else Finish(lease, error=payload, retryable=retryable)
            )
            try:
                return await self._finisher.finish(item)
            except StorageError:
                attempt += 1
                if attempt >= FINISH_TRIES and time.monotonic() >= give_up:
                    logger.exception(
                        "could not record a job's outcome", extra={"job": lease.job.id}
                    )
                    return None
                logger.warning(
                    "could not record a job's outcome; retrying", extra={"job": lease.job.id}
                )
                await asyncio.sleep(min(1.0, 0.2 * attempt))

    async def _every(self, interval: float, fn: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await fn()
            except StorageError:
                logger.exception("background queue step failed")

    async def _heartbeat(self) -> None:
        leases = [lease for lease, _ in self._running.values()]
        if not leases:
            return
        held = await self.queue.heartbeat(leases)
        for lease in leases:
            if lease.job.id in held:
                continue
            entry = self._running.get(lease.job.id)
            if entry is not None and entry[0] is lease:
                # Reaped (we stalled) or taken over: someone else owns the job now. Stop
                # working on it; its outcome would be refused anyway.
                logger.warning("lease lost; cancelling the job here", extra={"job": lease.job.id})
                self._lost.add(lease.job.id)
                entry[1].cancel()

    async def _present(self) -> None:
        try:
            await self.queue.record_worker(self.worker_id)
        except StorageError:
            # Not fatal: a worker that cannot reach the database cannot run jobs either;
            # its estimates read null until the next record succeeds.
            logger.warning("could not record this worker's presence", exc_info=True)

    async def _reap(self) -> None:
        await self.queue.reap()

    async def _prune(self) -> None:
        await self.queue.prune()


class Worker:
    """Job dispatch plus webhook sending, started and stopped together.

    Args:
        queue: the job queue.
        handler: runs one attempt of a job.
        webhooks: the webhook store; None runs no sender (deliveries wait for another
            process's sender).
        slots: jobs run at once by this worker.
        webhook_concurrency: webhook attempts in flight at once.
        webhook_timeout: seconds one webhook attempt may take.
        on_webhook_attempt: called after every recorded webhook attempt (the sender's
            ``on_attempt``).
        dispatcher_options: passed on to :class:`Dispatcher` (poll/heartbeat/reap intervals).
    """

    def __init__(
        self,
        queue: JobQueue,
        handler: JobHandler,
        *,
        webhooks: WebhookStore | None = None,
        slots: int = 500,
        webhook_concurrency: int = 50,
        webhook_timeout: float = 15.0,
        on_webhook_attempt: Callable[[AttemptResult, str], None] | None = None,
        **dispatcher_options: Any,
    ) -> None:
        self.dispatcher = Dispatcher(queue, handler, slots=slots, **dispatcher_options)
        self.sender = (
            WebhookSender(
                webhooks,
                concurrency=webhook_concurrency,
                timeout=webhook_timeout,
                on_attempt=on_webhook_attempt,
            )
            if webhooks is not None
            else None
        )
        if self.sender is not None:
            queue.subscribe(self.sender.wake, "deliveries")

    async def start(self) -> None:
        """Start dispatching jobs and sending webhooks."""
        await self.dispatcher.start()
        if self.sender is not None:
            await self.sender.start()

    async def stop(self, grace: float = 10.0) -> None:
        """Finish (or release) running jobs, then stop sending webhooks."""
        await self.dispatcher.stop(grace)
        if self.sender is not None:
            await self.sender.stop(min(grace, 5.0))
