"""Drive an inner ASGI app's lifespan from the outer app's (startup and shutdown)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from tollhouse.errors import ConfigError
from tollhouse.http.asgi import ASGIApp, Message

logger = logging.getLogger(__name__)


class InnerLifespan:
    """Runs ``app``'s lifespan protocol in a task so wrapped apps get startup/shutdown.

    Apps that do not speak lifespan (they raise or return at once) are tolerated, as
    uvicorn's ``lifespan="auto"`` does.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._supported = True

    async def _run(self) -> None:
        scope: dict[str, Any] = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        try:
            await self.app(scope, self._inbox.get, self._outbox.put)
        except Exception:
            logger.debug("inner app does not support lifespan", exc_info=True)
        finally:
            self._supported = False
            await self._outbox.put({"type": "lifespan.gone"})

    async def _exchange(self, kind: str) -> None:
        if not self._supported:
            return
        await self._inbox.put({"type": f"lifespan.{kind}"})
        reply = await self._outbox.get()
        if reply["type"] == f"lifespan.{kind}.failed":
            raise ConfigError(f"the upstream app failed to {kind}: {reply.get('message', '')}")

    async def startup(self) -> None:
        """Start the inner app; raises ConfigError if it reports a failed startup."""
        self._task = asyncio.get_running_loop().create_task(self._run())
        await self._exchange("startup")

    async def shutdown(self) -> None:
        """Shut the inner app down and wait for its lifespan task."""
        await self._exchange("shutdown")
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, timeout=5)
