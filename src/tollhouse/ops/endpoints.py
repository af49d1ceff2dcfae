"""``GET /metrics`` and ``GET /readyz``: raw ASGI, keyless endpoints of the route table
(no API key, no limit bucket, not metered; on their own listener with
``tollhouse serve --ops-port``).

* ``/metrics`` — Prometheus text exposition (see :mod:`tollhouse.ops.metrics`). Open by
  default like ``/healthz`` (it carries no org, key or tenant label); with a metrics
  token set (``TOLLHOUSE_METRICS_TOKEN``) a scrape must send
  ``Authorization: Bearer <token>``.
* ``/readyz`` — readiness: 200 ``{"status":"ready","checks":{"database":"ok",
  "limits":"ok"|"degraded"}}`` while the database answers (degraded limits still serve,
  on local limits), 503 ``{"status":"unavailable",…}`` naming the failed check otherwise.
  ``/healthz`` stays the liveness probe: it answers as long as the process does.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.errors import ApiError, MethodNotAllowed, Unauthorized, error_json
from tollhouse.http.asgi import Receive, Scope, Send
from tollhouse.http.context import request_id_of
from tollhouse.limits.store import LimitStore
from tollhouse.ops.metrics import CONTENT_TYPE, OpsMetrics

logger = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
READY_PATH = "/readyz"
OPS_PATHS = frozenset({METRICS_PATH, READY_PATH})
#: Seconds the database gets to answer ``SELECT 1`` before it counts as unavailable.
READY_TIMEOUT = 2.0


async def readiness(engine: AsyncEngine, limits: LimitStore) -> tuple[bool, dict[str, str]]:
    """Check the stores: ``(ready, {"database": …, "limits": …})``."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    except Exception as exc:
        logger.warning("readiness: the database does not answer", extra={"error": str(exc)})
        checks["database"] = "unavailable"
    else:
        checks["database"] = "ok"
    checks["limits"] = "degraded" if limits.degraded else "ok"
    return checks["database"] == "ok", checks


class OpsEndpoints:
    """Raw ASGI app for :data:`OPS_PATHS`.

    Args:
        metrics: the process's metrics.
        engine: the database checked by readiness.
        limits: the limit store (``degraded`` is reported, not a failure).
        metrics_token: when set, ``/metrics`` needs ``Authorization: Bearer <token>``.
    """

    def __init__(
        self,
        metrics: OpsMetrics,
        engine: AsyncEngine,
        limits: LimitStore,
        metrics_token: str | None = None,
    ) -> None:
        self.metrics = metrics
        self.engine = engine
        self.limits = limits
        self._token = metrics_token.encode() if metrics_token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        head = method == "HEAD"
        if method != "GET" and not head:
            refused = MethodNotAllowed(f"{scope['path']} answers GET (and HEAD) only.")
            await _send(
                send,
                refused.status,
                error_json(refused, request_id_of(scope)),
                b"application/json",
                [(b"allow", b"GET, HEAD")],
            )
            return
        if scope["path"] == READY_PATH:
            ready, checks = await readiness(self.engine, self.limits)
            body: dict[str, Any] = {"status": "ready" if ready else "unavailable"}
            body["checks"] = checks
            await _send(
                send, 200 if ready else 503, orjson.dumps(body), b"application/json", head=head
            )
            return
        if self._token is not None and not self._authorized(scope):
            exc: ApiError = Unauthorized(
                "GET /metrics needs the metrics token: send "
                '"Authorization: Bearer <TOLLHOUSE_METRICS_TOKEN>".'
            )
            await _send(
                send,
                exc.status,
                error_json(exc, request_id_of(scope)),
                b"application/json",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        await _send(send, 200, await self.metrics.render(), CONTENT_TYPE.encode(), head=head)

    def _authorized(self, scope: Scope) -> bool:
        assert self._token is not None
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                return hmac.compare_digest(value[7:].strip(), self._token)
        return False


async def _send(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    head: bool = False,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *(headers or ()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})
