"""What the gateway does besides passing requests on: its endpoints in the route table
(``GET /healthz``, ``GET /v1/rate-limit/status``, the forward-auth decision paths), the
405 of a table path asked with a wrong method, a CORS preflight, the ``ip``-scoped buckets
of a keyless endpoint, and the count of what shadow buckets would have refused.

Functions of the gateway (``gw``), as :mod:`tollhouse.http.gateway_ws` and
:mod:`tollhouse.http.forward_auth` are: none of this is on the path of an ordinary request
passed to the upstream, which is :mod:`tollhouse.http.gateway`'s.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tollhouse.errors import Forbidden
from tollhouse.http.answers import REQUEST_ID, error_parts, send_error, send_json
from tollhouse.http.asgi import Receive, Scope, Send
from tollhouse.http.checks import Checks, denial, keyless_checks, status_body
from tollhouse.http.context import identity_of, new_request_id
from tollhouse.http.cors import REQUEST_HEADERS, CorsHeaders, find_header
from tollhouse.http.forward_auth import AUTHORIZE_PATH, authorize
from tollhouse.http.routes import Endpoint, Resolved, method_not_allowed
from tollhouse.keys.model import Identity
from tollhouse.limits.headers import Header as LimitHeader
from tollhouse.ops.logs import request_id_var
from tollhouse.policy.match import RouteMatch

if TYPE_CHECKING:
    from tollhouse.http.gateway import Gateway

__all__ = [
    "HEALTH",
    "HEALTH_PATH",
    "STATUS_PATH",
    "admit_keyless",
    "count_shadow",
    "own_endpoints",
    "preflight",
    "refuse_method",
]

logger = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
STATUS_PATH = "/v1/rate-limit/status"
_HEALTHY = b'{"status":"ok","service":"tollhouse"}'


async def _health(scope: Scope, receive: Receive, send: Send) -> None:
    """``GET /healthz``: liveness, answered as long as the process is."""
    await send_json(send, 200, _HEALTHY, [], head=scope["method"] == "HEAD")


#: ``GET /healthz``, keyless (group ``ops``: on ``--ops-port`` when it is given).
HEALTH = Endpoint(HEALTH_PATH, ("GET",), _health, "ops", "gateway", keyless=True)


def own_endpoints(gw: Gateway) -> list[Endpoint]:
    """The gateway's own endpoints in the route table: health, rate-limit status and the
    forward-auth decision paths (which requests reach before the table)."""

    async def rate_limit_status(scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /v1/rate-limit/status``: every bucket and pool of the caller, read
        without consuming anything (its own bucket admitted it already)."""
        body = await status_body(
            gw.policy, gw.limits, gw._limit_of, gw.counters, identity_of(scope), scope, gw.clock()
        )
        await send_json(send, 200, body, [], head=scope["method"] == "HEAD")

    async def decide(scope: Scope, receive: Receive, send: Send) -> None:
        await authorize(gw, scope, send)

    return [
        HEALTH,
        Endpoint(STATUS_PATH, ("GET",), rate_limit_status, "rate-limit-status", "gateway"),
        Endpoint(AUTHORIZE_PATH, ("GET",), decide, "forward-auth", "gateway"),
        Endpoint(
            AUTHORIZE_PATH + "/{original:path}",
            ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"),
            decide,
            "forward-auth",
            "gateway",
            documented=False,
        ),
    ]


async def refuse_method(
    gw: Gateway,
    send: Send,
    match: RouteMatch,
    method: str,
    path: str,
    found: Resolved,
    request_id: str,
) -> None:
    """A 405 for a path of the table: no key read, no bucket spent, nothing metered."""
    assert found.allow is not None and found.refused is not None
    error = method_not_allowed(method, path, found.allow)
    await send_error(send, error, request_id, found.refused.error_format)
    group = match.endpoint_group
    gw.counters.answered(group.key if group is not None else None, error.status)


async def preflight(
    gw: Gateway, scope: Scope, send: Send, cors: CorsHeaders, origin: bytes, method: bytes
) -> None:
    """Answer a CORS preflight: 204 with the preflight headers, or 403 ``FORBIDDEN``
    naming the origin, method or header not allowed. No key is read, no bucket or pool is
    touched and nothing is metered; the answer is counted under its status."""
    request_id = new_request_id()
    state = scope.get("state")
    if state is None:
        state = scope["state"] = {}
    state["request_id"] = request_id
    request_id_var.set(request_id)
    headers, refused = cors.preflight(
        origin, method, find_header(scope["headers"], REQUEST_HEADERS)
    )
    if refused is None:
        status = 204
        headers.append((REQUEST_ID, request_id.encode()))
        body = b""
    else:
        error = Forbidden(refused)
        status = error.status
        error_headers, body = error_parts(error, request_id)
        headers = error_headers + headers
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    gw.counters.answered(None, status)


async def admit_keyless(
    gw: Gateway, scope: Scope, match: RouteMatch, now: float
) -> list[LimitHeader]:
    """The ``ip``-scoped buckets of a route answered without a key (the OpenAPI
    document): the rate-limit headers of its answer, or the 429."""
    client = scope.get("client")
    checks = keyless_checks(match, client[0] if client else None)
    if not checks.buckets:
        return []
    verdict = gw.limits.decide_nowait(checks.buckets, (), now)
    if verdict is None:
        verdict = await gw.limits.decide(checks.buckets, (), now)
    headers = checks.headers(verdict.outcomes, now)
    if not verdict.allowed:
        denier = verdict.denied_by or "unknown"
        gw.counters.denied[denier] = gw.counters.denied.get(denier, 0) + 1
        raise denial(verdict, headers)
    return headers


async def count_shadow(gw: Gateway, checks: Checks, identity: Identity, now: float) -> None:
    """Spend the caller's shadow buckets (they never refuse): a denial they would have
    made is counted (``/metrics``) and logged."""
    verdict = gw.limits.decide_nowait(checks.shadow, (), now)
    if verdict is None:
        verdict = await gw.limits.decide(checks.shadow, (), now)
    if not verdict.allowed:
        for c, o in zip(checks.shadow, verdict.outcomes, strict=True):
            if not o.allowed:
                key = (identity.org_scope, c.name)
                shadow = gw.counters.shadow_denials
                shadow[key] = shadow.get(key, 0) + 1
                logger.info(
                    "shadow bucket would deny", extra={"bucket": c.name, "org": identity.org_scope}
                )
