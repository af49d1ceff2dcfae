"""``tollhouse worker --metrics-port``: the worker's metrics on their own small HTTP
server (workers serve no other HTTP).

Reports what the process does — job durations, webhook attempts — and the queue depth.
prometheus-client's server answers from a thread; the counters it reads are plain ints
changed on the event loop, and the queue depth is refreshed on the loop every
:data:`~tollhouse.ops.metrics.QUEUE_TTL` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from prometheus_client.exposition import start_http_server

from tollhouse.ops.metrics import QUEUE_TTL, OpsMetrics

if TYPE_CHECKING:
    from tollhouse.jobs.queue import JobQueue
    from tollhouse.jobs.worker import Worker

logger = logging.getLogger(__name__)


class WorkerMetrics:
    """Metrics of one worker process, served on ``host:port`` until :meth:`stop`.

    Args:
        worker: the job worker (its dispatcher and webhook sender report to the metrics).
        queue: the job queue (depth).
        host: interface to listen on (loopback by default: scrape locally or open it
            deliberately).
        port: TCP port.
    """

    def __init__(self, worker: Worker, queue: JobQueue, host: str, port: int) -> None:
        self.metrics = OpsMetrics(None, queue=queue)
        worker.dispatcher.on_event = self.metrics.job_finished
        if worker.sender is not None:
            worker.sender.on_attempt = self.metrics.webhook_attempt
        self.server, self.thread = start_http_server(port, host, registry=self.metrics.registry)
        self._refresh = asyncio.get_running_loop().create_task(self._refresh_loop())
        logger.info("worker metrics listening", extra={"host": host, "port": port})

    async def _refresh_loop(self) -> None:
        while True:
            await self.metrics.refresh()
            await asyncio.sleep(QUEUE_TTL)

    async def stop(self) -> None:
        """Stop serving and refreshing."""
        self._refresh.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._refresh
        self.server.shutdown()
        self.server.server_close()
