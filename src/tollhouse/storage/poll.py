"""A task that re-reads something from storage every few tenths of a second.

The key cache (revocations) and the override cache use it: the request path reads their
in-memory snapshots, and this task keeps those fresh without ever blocking a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from tollhouse.errors import StorageError

logger = logging.getLogger(__name__)


class Poller:
    """Calls ``poll`` every ``interval`` seconds; a :class:`StorageError` is logged and the
    next round tries again (the last good snapshot stays in use meanwhile).

    Args:
        poll: the coroutine function to call.
        interval: seconds between two calls.
        what: a few words for the log line when a round fails.
    """

    def __init__(self, poll: Callable[[], Awaitable[object]], interval: float, what: str) -> None:
        self.poll = poll
        self.interval = interval
        self.what = what
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll()
            except StorageError:
                logger.warning("poll failed; will retry", extra={"poll": self.what})

    def start(self) -> None:
        """Start polling (from a running event loop); idempotent."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop polling and wait for the task to end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
