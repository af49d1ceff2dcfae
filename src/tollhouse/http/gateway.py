"""The gateway: raw ASGI middleware on the hot path — auth → route → limit → pass.

For every HTTP request it

1. authenticates the key (``Authorization: Bearer sk_…`` or ``X-API-Key``) from the
   in-memory key cache;
2. matches the route against the policy (cached per method and path) on the canonical
   path, which is also the path passed on (:mod:`tollhouse.policy.paths`; a path with no
   single canonical form is refused with 400);
3. checks the role and the ``X-Tenant-Id`` rule of the matching access rules;
4. asks the limit store, in one atomic call, whether every bucket and pool admits the
   request — a rejected request consumes nothing;
5. passes the request to the inner app (reverse proxy, in-process app or the bundled
   example) with ``X-RateLimit-*``, ``RateLimit-Policy``, ``RateLimit`` and
   ``X-Request-Id`` added to its response, holding any pool slot until the request ends,
   errors or the client disconnects.

``GET /healthz`` needs no key. ``GET /v1/rate-limit/status`` is answered here, after its
own ``rate_limit_status`` bucket admitted it.

With ``[cors]`` allowing some origin, a CORS preflight is answered here before step 1
(no key, no bucket), and every answer gets the policy's CORS headers
(:mod:`tollhouse.http.cors`); with it off, that costs one attribute check.

A WebSocket handshake is admitted by the same steps, as ``GET`` on its path, and its pool
slots are held until the connection ends; a refused one gets the usual error answer
through the ``websocket.http.response`` extension, or a ``websocket.close`` (1008) on
servers without it. Other scopes (lifespan) pass through.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from datetime import UTC, datetime
from time import perf_counter
from typing import Any
from urllib.parse import parse_qs

import orjson

from tollhouse.errors import (
    ApiError,
    ConcurrencyLimited,
    Forbidden,
    InternalError,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    StorageError,
    TenantRequired,
    Unauthorized,
    error_json,
)
from tollhouse.http.cors import ORIGIN, REQUEST_HEADERS, REQUEST_METHOD, CorsHeaders, find_header
from tollhouse.keys.cache import MISS, KeyCache
from tollhouse.keys.model import Identity
from tollhouse.limits.headers import (
    Header,
    limit_headers,
    policy_header,
    pool_headers,
    retry_after_header,
)
from tollhouse.limits.maths import Outcome
from tollhouse.limits.naming import bucket_key, pool_key
from tollhouse.limits.overrides import OverrideCache
from tollhouse.limits.store import BucketCheck, Lease, LimitStore, PoolCheck, Verdict
from tollhouse.metering.record import CallRecord, Meter
from tollhouse.ops.logs import request_id_var
from tollhouse.policy.match import RouteMatch, Router
from tollhouse.policy.model import Bucket, Policy, Pool
from tollhouse.policy.paths import canonical, encode_path, needs_canonical, respell

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: What admitting a request yields: the caller's identity, the rate-limit headers for its
#: answer, the pool slots it holds, its declared body length (see ``Gateway._admit``).
Admission = tuple[Identity, list[Header], tuple[Lease, ...], int | None]

HEALTH_PATH = "/healthz"
STATUS_PATH = "/v1/rate-limit/status"
REQUEST_ID = b"x-request-id"
JSON = (b"content-type", b"application/json")
#: Per-match cache of built checks, per caller; emptied when it fills.
CHECKS_PER_MATCH = 1024
#: An ``X-Request-Id`` sent by the caller is kept when it looks like an id.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


_REQUEST_PREFIX = "req_" + os.urandom(4).hex()
_request_seq = itertools.count(int.from_bytes(os.urandom(3), "big"))


def new_request_id() -> str:
    """``req_`` + 16 hex characters: 8 random per process, then a counter.

    Unique across processes and cheap (no system call per request); request ids are
    for correlation, not secrets.
    """
    return f"{_REQUEST_PREFIX}{next(_request_seq) & 0xFFFFFFFF:08x}"


def iso(ts: float) -> str:
    """Epoch seconds → ISO 8601 UTC with ``Z`` and milliseconds."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Checks:
    """What one caller's request on one route asks of the limit store, and the constant
    parts of its headers (built once per caller and route, reused)."""

    __slots__ = ("buckets", "decided", "limits", "names", "policy", "pools", "shadow")

    def __init__(
        self,
        buckets: tuple[BucketCheck, ...],
        pools: tuple[PoolCheck, ...],
        shadow: tuple[BucketCheck, ...] = (),
    ) -> None:
        self.buckets = buckets
        self.pools = pools
        self.shadow = shadow
        self.policy = policy_header(buckets) if buckets else None
        self.names = tuple(f'"{c.name}";r='.encode() for c in buckets)
        #: Every bucket and pool an admitted request passed (the metrics' counter key).
        self.decided = tuple(c.name for c in buckets) + tuple(p.name for p in pools)
        self.limits = tuple(str(c.limit).encode() for c in buckets)

    def headers(self, outcomes: list[Outcome], now: float) -> list[Header]:
        """All rate-limit headers for one decided request (without ``Retry-After``)."""
        assert self.policy is not None
        return limit_headers(outcomes, self.names, self.limits, self.policy, now)


def _bucket_check(b: Bucket, identity: Identity, client_ip: str | None, limit: int) -> BucketCheck:
    return BucketCheck(
        bucket_key(b, identity, client_ip), b.name, limit, b.window, b.algorithm, b.cost
    )


def _pool_check(p: Pool, identity: Identity) -> PoolCheck:
    return PoolCheck(pool_key(p, identity), p.name, p.limit, p.lease)


class Gateway:
    """Raw ASGI middleware enforcing a policy in front of ``app``.

    Args:
        app: the inner ASGI app requests are passed to once admitted.
        policy: the loaded policy.
        limits: the limit store (memory or Redis).
        keys: the auth cache.
        clock: wall clock in epoch seconds (injected in tests).
        meter: takes one :class:`CallRecord` per answered call of an authenticated key.
        overrides: per-org and per-key limits from the database.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: Policy,
        limits: LimitStore,
        keys: KeyCache,
        clock: Callable[[], float] = time.time,
        meter: Meter | None = None,
        overrides: OverrideCache | None = None,
    ) -> None:
        self.app = app
        self.policy = policy
        self.router = Router(policy)
        self.limits = limits
        self.keys = keys
        self.clock = clock
        self.max_body = policy.limits.max_body_bytes
        self.forward_authorization = policy.upstream.forward_authorization
        self.meter = meter
        self.overrides = overrides
        #: ``[cors]``, compiled; None when no origin is allowed (CORS off).
        self.cors = CorsHeaders(policy.cors) if policy.cors.enabled else None
        #: (org scope, bucket) → requests a shadow bucket would have denied (this process).
        self.shadow_denials: dict[tuple[str, str], int] = {}
        # Plain counters read by /metrics at scrape time (tollhouse.ops.metrics): the
        # hot path only adds to ints here.
        #: (endpoint group key, status) → answered requests.
        self.responses: dict[tuple[str | None, int], int] = {}
        #: buckets and pools of an admitted request → admitted requests.
        self.admitted: dict[tuple[str, ...], int] = {}
        #: the bucket or pool that denied → denied requests.
        self.denied: dict[str, int] = {}
        #: Told of every 429 sent (identity, arrival, its headers): the fair-use tap.
        self.on_refused: Callable[[object, float, dict[str, str]], None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, send)
            else:
                await self.app(scope, receive, send)  # lifespan
            return
        path: str = scope["path"]
        if self.cors is not None:
            # [cors]: a preflight is answered here, before auth, and every other answer,
            # the gateway's own errors included, gets the CORS headers.
            origin = find_header(scope["headers"], ORIGIN)
            if origin is not None and scope["method"] == "OPTIONS":
                asked = find_header(scope["headers"], REQUEST_METHOD)
                if asked is not None:
                    await self._preflight(scope, send, self.cors, origin, asked)
                    return
            send = self.cors.wrap(send, origin)
        if path == HEALTH_PATH:
            await _send_json(send, 200, b'{"status":"ok","service":"tollhouse"}', [])
            return
        t0 = perf_counter()
        arrived = self.clock()
        request_id = new_request_id()
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["request_id"] = request_id
        request_id_var.set(request_id)  # every log line of this request carries it
        match: RouteMatch | None = None
        method: str = scope["method"]
        try:
            # Route here, then auth, access and limits in _admit (shared with websockets).
            match, path = self._route(scope, method, path)
            admitted = self._admit(scope, state, match, method, path, arrived)
            if not isinstance(admitted, tuple):
                admitted = await admitted  # a key to look up, a store to wait for
            identity, headers, leases, length = admitted
        except ApiError as exc:
            request_id = state["request_id"]
            await _send_error(
                send, exc, request_id, match.error_format if match is not None else "envelope"
            )
            if exc.status == 429 and self.on_refused is not None:
                self.on_refused(state.get("identity"), arrived, exc.headers)
            self._account(match, state.get("identity"), method, exc.status, arrived, t0, scope)
            return
        request_id = state["request_id"]
        is_status = path == STATUS_PATH and (method == "GET" or method == "HEAD")
        if headers:
            state["limited"] = True  # the proxy drops an upstream's own rate-limit headers
        headers.append((REQUEST_ID, request_id.encode()))

        if is_status:
            body = await self.status_body(identity, scope)
            await _send_json(send, 200, body, headers, head=method == "HEAD")
            status = 200
        elif leases or (length is None and method in _BODY_METHODS):
            status = await self._pass(scope, receive, send, headers, leases, length, request_id)
        else:
            status = await self._pass_plain(scope, receive, send, headers, request_id)
        if "aborted" in state:
            # The reverse proxy cut the answer off: 502 when the upstream failed mid-body
            # (whatever status had started), 499 when the caller left first.
            status = state["aborted"]
        group = match.endpoint_group
        counted = (group.key if group is not None else None, status)
        self.responses[counted] = self.responses.get(counted, 0) + 1
        if self.meter is not None:
            self._record(identity, match, method, status, arrived, t0, scope)

    async def _preflight(
        self, scope: Scope, send: Send, cors: CorsHeaders, origin: bytes, method: bytes
    ) -> None:
        """Answer a CORS preflight: 204 with the preflight headers, or 403 ``FORBIDDEN``
        naming the origin, method or header not allowed. No key is read, no bucket or
        pool is touched and nothing is metered; the answer is counted under its status."""
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
            error_headers, body = _error_parts(error, request_id)
            headers = error_headers + headers
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        counted = (None, status)
        self.responses[counted] = self.responses.get(counted, 0) + 1

    def _route(self, scope: Scope, method: str, path: str) -> tuple[RouteMatch, str]:
        """The policy's match for a request, and the path it was matched on.

        The policy is matched on the canonical path, and the scope is rewritten to it, so
        the inner app is given that very path (:mod:`tollhouse.policy.paths`); a path that
        is canonical already costs one check.

        Raises:
            PathRefused: the path has no single canonical form (400).
        """
        raw: bytes = scope.get("raw_path") or encode_path(path)
        if needs_canonical(raw, self.router.strict_slash):
            path, raw = canonical(path, raw, self.router.strict_slash)
            scope["path"], scope["raw_path"] = path, raw
        match = self.router.match(method, path)
        if match.respelled is not None:
            path = scope["path"] = match.respelled
            scope["raw_path"] = respell(raw, match.spellings)
        return match, path

    def _admit(
        self,
        scope: Scope,
        state: dict[str, Any],
        match: RouteMatch,
        method: str,
        path: str,
        now: float,
        found: Identity | object | None = MISS,
    ) -> Admission | Coroutine[Any, Any, Admission]:
        """Auth, access and limits for a request (or a WebSocket handshake) on ``match``.

        Returns ``(identity, headers, leases, length)`` — the rate-limit headers to add
        to the answer, the pool slots taken, the declared body length — when nothing had
        to be waited for (the key was cached, the store answered without I/O), else a
        coroutine finishing the admission, for the caller to await: the hot path makes no
        coroutine and awaits nothing here.

        Raises :class:`ApiError` when the request is refused, having put the request id in
        ``state["request_id"]`` and, once the key is known, the identity in
        ``state["identity"]`` (the caller meters refusals with them).

        ``found`` is the key's identity when the caller looked it up already (None: no
        such key); by default the key cache is asked.
        """
        secret: bytes | None = None
        tenant: str | None = None
        length: int | None = None
        # With [upstream] forward_authorization, a key in X-API-Key leaves the
        # Authorization header to the upstream.
        api_key_first = self.forward_authorization and any(
            name == b"x-api-key" for name, _ in scope["headers"]
        )
        for name, value in scope["headers"]:
            if name == b"authorization":
                if api_key_first:
                    continue  # the caller's own credentials for the upstream
                token = value[7:].strip() if value[:7].lower() == b"bearer " else b""
                if token:
                    secret = token
                elif secret is None:
                    raise Unauthorized(
                        'The Authorization header must be "Bearer sk_test_…" or "Bearer sk_live_…".'
                    )
            elif name == b"x-api-key":
                if secret is None or api_key_first:
                    secret = value.strip() or None
            elif name == b"x-tenant-id":
                tenant = value.decode("latin-1").strip() or None
            elif name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = -1
            elif name == REQUEST_ID:
                # The caller's (or the load balancer's) id, when it is a sane one.
                given = value.decode("latin-1")
                if _CLIENT_REQUEST_ID.fullmatch(given):
                    state["request_id"] = given
                    request_id_var.set(given)
        if secret is None:
            raise Unauthorized(
                'No API key: send "Authorization: Bearer sk_test_…" (or sk_live_…) or '
                '"X-API-Key: sk_…".'
            )
        identity = self.keys.cached(secret) if found is MISS else found
        if identity is MISS:
            return self._admit_uncached(scope, state, match, method, path, now, secret)
        if not isinstance(identity, Identity):
            raise Unauthorized(
                "The API key is not valid or has been revoked; check the key or create "
                "one with `tollhouse keys create`."
            )
        if tenant is not None:
            identity = self.keys.with_tenant(identity, tenant)
        state["identity"] = identity

        if match.roles is not None and identity.role not in match.roles:
            raise Forbidden(
                f"This key's role {identity.role!r} may not call {method} {path}; "
                f"allowed roles: {', '.join(sorted(match.roles))}."
            )
        if (
            match.tenant_required
            and tenant is None
            and not (path == STATUS_PATH and (method == "GET" or method == "HEAD"))
        ):
            raise TenantRequired(
                f"{method} {path} acts for one of your customers: send the X-Tenant-Id header."
            )
        if length is not None and (length > self.max_body or length < 0):
            raise PayloadTooLarge(
                f"The request body is {length} bytes; the limit is {self.max_body} bytes."
                if length > 0
                else "The Content-Length header is not a valid number."
            )

        checks = self._checks(match, identity, scope)
        if checks.shadow:
            return self._admit_waiting(checks, identity, now, length)
        if not (checks.buckets or checks.pools):
            return identity, [], (), length
        verdict = self.limits.decide_nowait(checks.buckets, checks.pools, now)
        if verdict is None:
            return self._admit_waiting(checks, identity, now, length)
        return self._settle(checks, verdict, identity, now, length)

    async def _admit_uncached(
        self,
        scope: Scope,
        state: dict[str, Any],
        match: RouteMatch,
        method: str,
        path: str,
        now: float,
        secret: bytes,
    ) -> Admission:
        """:meth:`_admit` for a key not in the cache: look it up, then admit."""
        try:
            found = await self.keys.authenticate(secret)
        except StorageError:
            logger.exception("key lookup failed", extra={"request_id": state["request_id"]})
            raise ServiceUnavailable(
                "The key store is unavailable; retry shortly.",
                headers={"Retry-After": "1"},
            ) from None
        admitted = self._admit(scope, state, match, method, path, now, found)
        if not isinstance(admitted, tuple):
            admitted = await admitted
        return admitted

    async def _admit_waiting(
        self, checks: _Checks, identity: Identity, now: float, length: int | None
    ) -> Admission:
        """:meth:`_admit`'s limits when the store has to be waited for (or shadow
        buckets counted first)."""
        if checks.shadow:
            await self._shadow(checks, identity, now)
        if not (checks.buckets or checks.pools):
            return identity, [], (), length
        verdict = self.limits.decide_nowait(checks.buckets, checks.pools, now)
        if verdict is None:
            verdict = await self.limits.decide(checks.buckets, checks.pools, now)
        return self._settle(checks, verdict, identity, now, length)

    def _settle(
        self,
        checks: _Checks,
        verdict: Verdict,
        identity: Identity,
        now: float,
        length: int | None,
    ) -> Admission:
        """The admission once the store decided: headers, counters, or the 429."""
        headers = checks.headers(verdict.outcomes, now) if checks.buckets else []
        if not verdict.allowed:
            if verdict.pool_denied:
                headers = pool_headers(checks.pools, verdict.denied_by, verdict.retry_after, now)
            denier = verdict.denied_by or "unknown"
            self.denied[denier] = self.denied.get(denier, 0) + 1
            raise self._denied(verdict, headers)
        decided = checks.decided
        self.admitted[decided] = self.admitted.get(decided, 0) + 1
        return identity, headers, verdict.leases, length

    def _account(
        self,
        match: RouteMatch | None,
        identity: object,
        method: str,
        status: int,
        arrived: float,
        t0: float,
        scope: Scope,
    ) -> None:
        """Count one answer by status, and meter it when the key is known."""
        group = match.endpoint_group if match is not None else None
        counted = (group.key if group is not None else None, status)
        self.responses[counted] = self.responses.get(counted, 0) + 1
        if self.meter is not None and match is not None and isinstance(identity, Identity):
            self._record(identity, match, method, status, arrived, t0, scope)

    # -- websockets ------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket handshake, admitted like ``GET path``: same keys, policy match on
        the path with method ``GET``, roles, tenants, buckets consumed now; a pool slot is
        held until the connection ends. Refused handshakes get the error envelope (see
        :func:`reject_websocket`)."""
        path: str = scope["path"]
        t0 = perf_counter()
        arrived = self.clock()
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        request_id = state["request_id"] = new_request_id()
        request_id_var.set(request_id)
        match: RouteMatch | None = None
        method = "GET"  # the handshake is a GET request; policies name it so
        try:
            match, path = self._route(scope, method, path)
            admitted = self._admit(scope, state, match, method, path, arrived)
            if not isinstance(admitted, tuple):
                admitted = await admitted
            identity, headers, leases, _ = admitted
        except ApiError as exc:
            request_id = state["request_id"]
            if (await receive())["type"] == "websocket.connect":
                error_headers, body = _error_parts(
                    exc, request_id, match.error_format if match is not None else "envelope"
                )
                await reject_websocket(scope, send, exc.status, error_headers, body, exc.code)
            self._account(match, state.get("identity"), method, exc.status, arrived, t0, scope)
            return
        if headers:
            state["limited"] = True  # the proxy drops an upstream's own rate-limit headers
        headers.append((REQUEST_ID, state["request_id"].encode()))
        await self._pass_websocket(
            scope, receive, send, headers, leases, identity, match, arrived, t0
        )

    async def _pass_websocket(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: list[Header],
        leases: tuple[Lease, ...],
        identity: Identity,
        match: RouteMatch,
        arrived: float,
        t0: float,
    ) -> None:
        """Run the app on an admitted WebSocket connection.

        ``headers`` go on the handshake's answer (the 101, or the app's own refusal). The
        connection is counted and metered once, when its handshake is answered: 101 when
        accepted, the status of an HTTP refusal, 403 for a close before accepting, 500
        when the app failed first, 499 when the caller left first.

        Pool slots are given back as soon as the connection ends — the app closes it or
        refuses the handshake, the caller closes or goes away, the app fails or returns.
        While slots are held the gateway reads the caller's messages one ahead of the app
        (a bounded hand-over, never a buffer), so a caller leaving is noticed even by an
        app that is not reading.
        """
        request_id: str = scope["state"]["request_id"]
        answered = False
        closed = False
        gone = False
        held = bool(leases)

        def answer(status: int) -> None:
            nonlocal answered
            answered = True
            self._account(match, identity, "GET", status, arrived, t0, scope)

        async def release() -> None:
            nonlocal held
            if held:
                held = False
                now = self.clock()
                for lease in leases:
                    await self.limits.release(lease, now)

        async def send_wrapper(message: Message) -> None:
            nonlocal closed
            kind = message["type"]
            if not answered:
                if kind == "websocket.accept" or kind == "websocket.http.response.start":
                    message["headers"] = [*message.get("headers", ()), *headers]
                    answer(101 if kind == "websocket.accept" else message["status"])
                elif kind == "websocket.close":
                    answer(403)  # servers refuse the handshake with a 403
            if kind == "websocket.close" or (
                kind == "websocket.http.response.body" and not message.get("more_body", False)
            ):
                # The connection ends here: the slot is free before the caller hears it.
                closed = True
                await release()
            await send(message)

        app_receive = receive
        pump: asyncio.Future[None] | None = None
        if held:
            inbox: asyncio.Queue[Message] = asyncio.Queue(maxsize=1)

            async def read_ahead() -> None:
                nonlocal gone
                try:
                    while True:
                        message = await receive()
                        if message["type"] == "websocket.disconnect":
                            gone = True
                            await release()
                            await inbox.put(message)
                            return
                        await inbox.put(message)
                except Exception:
                    # A server failing on receive: for the app, the caller has left.
                    gone = True
                    await release()
                    await inbox.put({"type": "websocket.disconnect", "code": 1006})
                    raise

            pump = asyncio.ensure_future(read_ahead())
            app_receive = inbox.get
        try:
            await self.app(scope, app_receive, send_wrapper)
        except Exception as exc:
            if isinstance(exc, OSError):  # e.g. a send after the caller left
                logger.info("websocket app stopped: %r", exc, extra={"request_id": request_id})
            else:
                logger.exception("inner app failed", extra={"request_id": request_id})
            error = InternalError("The connection failed inside the API; it has been logged.")
            await release()
            with contextlib.suppress(Exception):
                if not answered:
                    answer(error.status)
                    error_headers, body = _error_parts(error, request_id)
                    await reject_websocket(
                        scope, send, error.status, error_headers, body, error.code
                    )
                elif not closed:
                    await send(
                        {"type": "websocket.close", "code": INTERNAL_ERROR, "reason": error.code}
                    )
        finally:
            if pump is not None:
                pump.cancel()
                await asyncio.wait((pump,))
                if not pump.cancelled() and pump.exception() is not None:
                    logger.warning(
                        "websocket receive failed",
                        exc_info=pump.exception(),
                        extra={"request_id": request_id},
                    )
            await release()
        if not answered:
            # Returned without answering the handshake: the server refuses it with a 500.
            answer(499 if gone else InternalError.status)

    async def _pass_plain(
        self, scope: Scope, receive: Receive, send: Send, headers: list[Header], request_id: str
    ) -> int:
        """Pass a request that holds no slot and has no body to count; returns the status."""
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            logger.exception("inner app failed", extra={"request_id": request_id})
            if not status:
                await _send_error(
                    send,
                    InternalError("The request failed inside the API; it has been logged."),
                    request_id,
                )
                status = InternalError.status
        # An app that returned without answering: the server sends a 500 for it.
        return status or InternalError.status

    def _record(
        self,
        identity: Identity,
        match: RouteMatch,
        method: str,
        status: int,
        arrived: float,
        t0: float,
        scope: Scope,
    ) -> None:
        labels = match.path_labels
        if match.header_labels or match.query_labels:
            labels = dict(labels)
            if match.header_labels:
                wanted = dict((h, name) for name, h in match.header_labels)
                for h, value in scope["headers"]:
                    name = wanted.get(h)
                    if name is not None:
                        labels[name] = value.decode("latin-1")
            if match.query_labels:
                query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
                for name, key in match.query_labels:
                    values = query.get(key)
                    if values:
                        labels[name] = values[0]
        group = match.endpoint_group
        assert self.meter is not None
        # Positional: this runs once per request.
        self.meter.record(
            CallRecord(
                arrived,
                identity.org,
                identity.environment,
                identity.key_id,
                identity.tenant,
                group.key if group is not None else None,
                method,
                match.template,
                status,
                (perf_counter() - t0) * 1000.0,
                labels,
                scope["state"]["request_id"],
            )
        )

    @staticmethod
    def _denied(verdict: Verdict, headers: list[Header]) -> ApiError:
        headers.append(retry_after_header(verdict.retry_after))
        extra = {k.decode(): v.decode() for k, v in headers}
        if verdict.pool_denied:
            return ConcurrencyLimited(
                f"Too many requests in flight ({verdict.denied_by}); retry after "
                f"{extra['retry-after']} s.",
                headers=extra,
            )
        return RateLimited(
            "Rate limit exceeded. Please retry after the specified delay.", headers=extra
        )

    def _limit(self, bucket: Bucket, identity: Identity) -> int:
        """The bucket's effective limit for this caller (overrides > policy)."""
        if self.overrides is None:
            return bucket.limit
        return self.overrides.limit(identity.org, identity.key_id, bucket.name, bucket.limit)

    def forget_checks(self) -> None:
        """Drop every cached check (limits changed): they are rebuilt on next use."""
        self.router.clear()

    async def _shadow(self, checks: _Checks, identity: Identity, now: float) -> None:
        verdict = self.limits.decide_nowait(checks.shadow, (), now)
        if verdict is None:
            verdict = await self.limits.decide(checks.shadow, (), now)
        if not verdict.allowed:
            for c, o in zip(checks.shadow, verdict.outcomes, strict=True):
                if not o.allowed:
                    key = (identity.org_scope, c.name)
                    self.shadow_denials[key] = self.shadow_denials.get(key, 0) + 1
                    logger.info(
                        "shadow bucket would deny",
                        extra={"bucket": c.name, "org": identity.org_scope},
                    )

    def _checks(self, match: RouteMatch, identity: Identity, scope: Scope) -> _Checks:
        ip_scoped = match.ip_scoped
        cache_key = (identity.key_id, identity.tenant)
        if not ip_scoped:
            found: _Checks | None = match.checks.get(cache_key)
            if found is not None:
                return found
        client = scope.get("client")
        ip = client[0] if client else None
        built = _Checks(
            tuple(
                _bucket_check(b, identity, ip, self._limit(b, identity))
                for b in match.buckets
                if not b.shadow
            ),
            tuple(_pool_check(p, identity) for p in match.pools),
            tuple(
                _bucket_check(b, identity, ip, self._limit(b, identity))
                for b in match.buckets
                if b.shadow
            ),
        )
        if not ip_scoped:
            if len(match.checks) >= CHECKS_PER_MATCH:
                match.checks.clear()
            match.checks[cache_key] = built
        return built

    async def _pass(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: list[Header],
        leases: tuple[Lease, ...],
        length: int | None,
        request_id: str,
    ) -> int:
        """Pass a request that holds pool slots or streams a body of unknown length;
        returns the response status."""
        started = False
        status = 0
        finished = False
        too_large = False
        received = 0
        limit = self.max_body
        watch_body = length is None and scope["method"] in _BODY_METHODS

        async def send_wrapper(message: Message) -> None:
            nonlocal started, finished, status
            if too_large and not started:
                return  # the app's answer to a cut-off body is replaced by our 413
            kind = message["type"]
            if kind == "http.response.start":
                started = True
                status = message["status"]
                message["headers"] = list(message.get("headers", ())) + headers
            elif kind == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        def count(message: Message) -> Message:
            # Bodies without Content-Length are counted as they stream in; past the limit
            # the app is told the client left, and the caller gets a 413.
            nonlocal received, too_large
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def receive_counted() -> Message:
            if too_large:
                return {"type": "http.disconnect"}
            return count(await receive())

        try:
            if leases:
                await self._run_holding(
                    scope, receive, send_wrapper, count, leases, lambda: finished
                )
            else:
                await self.app(scope, receive_counted if watch_body else receive, send_wrapper)
        except Exception:
            if not too_large:
                logger.exception("inner app failed", extra={"request_id": request_id})
                if not started:
                    await _send_error(
                        send,
                        InternalError("The request failed inside the API; it has been logged."),
                        request_id,
                    )
                    return InternalError.status
        if too_large and not started:
            await _send_error(
                send,
                PayloadTooLarge(f"The request body exceeds the limit of {self.max_body} bytes."),
                request_id,
            )
            return PayloadTooLarge.status
        # 499 (client closed request) when the client left before any answer.
        return status or 499

    async def _run_holding(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        count: Callable[[Message], Message],
        leases: tuple[Lease, ...],
        finished: Callable[[], bool],
    ) -> None:
        """Run the app while holding pool slots, giving them back the moment the request
        ends — completion, error, or the client going away.

        The gateway owns the receive channel here: a pump reads it (so a client that
        disconnects is noticed even while the app is busy and not reading) and feeds the
        app through a queue. On disconnect the app is cancelled and the slots released.
        """
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        app_task = asyncio.ensure_future(self.app(scope, inbox.get, send))
        gone = False

        async def pump() -> None:
            nonlocal gone
            while True:
                message = count(await receive())
                inbox.put_nowait(message)
                if message["type"] == "http.disconnect":
                    # After a complete response the app may still run background work:
                    # only a client leaving mid-request cancels it.
                    if not app_task.done() and not finished():
                        gone = True
                        app_task.cancel()
                    return

        pump_task = asyncio.ensure_future(pump())
        try:
            await app_task
        except asyncio.CancelledError:
            if not gone:
                app_task.cancel()
                raise
        finally:
            pump_task.cancel()
            now = self.clock()
            for lease in leases:
                await self.limits.release(lease, now)

    async def status_body(self, identity: Identity, scope: Scope) -> bytes:
        """The partner rate-limit status and scoring API shapes' status (docs/api-shapes.md),
        read without consuming anything."""
        client = scope.get("client")
        ip = client[0] if client else None
        policy = self.policy
        bchecks = tuple(
            _bucket_check(b, identity, ip, self._limit(b, identity)) for b in policy.buckets
        )
        pchecks = tuple(_pool_check(p, identity) for p in policy.pools)
        now = self.clock()
        bstats, pstats = await self.limits.peek(bchecks, pchecks, now)
        stamp = iso(now)
        categories = []
        buckets: dict[str, Any] = {}
        for b, c, s in zip(policy.buckets, bchecks, bstats, strict=True):
            reset = int(-(-s.reset_at // 1))
            category: dict[str, Any] = {
                "category": b.name,
                "displayName": b.display_name,
                "endpoints": list(b.endpoints),
                "limit": c.limit,
                "used": s.used,
                "remaining": s.remaining,
                "resetAt": reset if s.touched else 0,
                "windowSeconds": b.window_seconds,
            }
            bucket: dict[str, Any] = {
                "limit": c.limit,
                "remaining": s.remaining,
                "resetAt": reset,
                "resetInSeconds": max(0, reset - int(now)),
            }
            if b.shadow:
                # Additive fields: a shadow bucket denies nothing, it counts.
                denied = self.shadow_denials.get((identity.org_scope, b.name), 0)
                for section in (category, bucket):
                    section["shadow"] = True
                    section["shadowDenied"] = denied
            categories.append(category)
            buckets[b.name] = bucket
        body: dict[str, Any] = {
            "partnerId": identity.org,
            "environment": identity.environment,
            "generatedAt": stamp,
            "degraded": bool(self.limits.degraded),
            "buckets": buckets,
        }
        for p, s2 in zip(policy.pools, pstats, strict=True):
            body[p.name] = {
                "limit": p.limit,
                "active": s2.active,
                "retryAfterSeconds": int(-(-s2.retry_after // 1)),
            }
        body["categories"] = categories
        body["timestamp"] = stamp
        return orjson.dumps(body)


async def _send_json(
    send: Send, status: int, body: bytes, headers: list[Header], *, head: bool = False
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [JSON, (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})


#: ``{"detail": ...}`` bodies (error_format = "detail"); the metrics catalogue shape words its
#: 429 so.
_DETAIL_MESSAGES = {429: "Rate limit exceeded"}


def _error_parts(
    exc: ApiError, request_id: str, error_format: str = "envelope"
) -> tuple[list[Header], bytes]:
    """Headers and body of the answer for ``exc``."""
    if error_format == "detail":
        body = orjson.dumps({"detail": _DETAIL_MESSAGES.get(exc.status, exc.message)})
    else:
        body = error_json(exc, request_id)
    headers = [JSON, (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    headers.append((REQUEST_ID, request_id.encode()))
    return headers, body


async def _send_error(
    send: Send, exc: ApiError, request_id: str, error_format: str = "envelope"
) -> None:
    headers, body = _error_parts(exc, request_id, error_format)
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


#: The ASGI extension that lets a WebSocket app refuse a handshake with an HTTP response.
HTTP_RESPONSE_EXTENSION = "websocket.http.response"
#: Close codes of a refused handshake on servers without that extension.
POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011
#: Longest close reason, in bytes (a close frame's payload is 125 bytes with the code).
_MAX_CLOSE_REASON = 123


async def reject_websocket(
    scope: Scope, send: Send, status: int, headers: list[Header], body: bytes, reason: str
) -> None:
    """Refuse a WebSocket handshake whose ``websocket.connect`` has been received.

    With the ``websocket.http.response`` extension in ``scope["extensions"]`` the caller
    gets an HTTP response: ``status``, ``headers``, ``body``. Without it the handshake is
    refused with ``websocket.close`` — code 1008 (policy violation) for a 4xx status,
    1011 (internal error) otherwise, ``reason`` (e.g. ``RATE_LIMITED``) as its reason —
    which servers answer with a 403.
    """
    if HTTP_RESPONSE_EXTENSION in (scope.get("extensions") or ()):
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    code = POLICY_VIOLATION if status < 500 else INTERNAL_ERROR
    short = reason.encode()[:_MAX_CLOSE_REASON].decode(errors="ignore")
    await send({"type": "websocket.close", "code": code, "reason": short})
