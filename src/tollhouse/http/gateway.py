"""The gateway: raw ASGI middleware on the hot path — auth → route → limit → pass.

For every HTTP request it

1. matches the route against the policy (cached per method and path) on the canonical
   path, which is also the path passed on (:mod:`tollhouse.policy.paths`; a path with no
   single canonical form is refused with 400);
2. when the path is one of tollhouse's own (one ``startswith`` against the route table's
   prefixes, :mod:`tollhouse.http.routes`), asks the route table: a wrong method is a 405
   with ``Allow`` (no key read, no bucket spent), a keyless endpoint (health, readiness,
   metrics, the dashboard, the OpenAPI document) is answered at once — after its
   ``ip``-scoped buckets, if the policy gives it any —, any other endpoint is admitted
   below and answered by the table instead of the upstream;
3. authenticates the key (``Authorization: Bearer sk_…`` or ``X-API-Key``; two naming
   different keys are a 400, whatever their order) from the in-memory key cache; a key
   not known valid there is refused with 429, unlooked-up, from a client address over
   ``[limits] failed_auth``, and counts against its address when it is not valid
   (:mod:`tollhouse.http.failed_auth`);
4. checks the role and the ``X-Tenant-Id`` rule of the matching access rules, and the
   tenant and any call-count label values against their rules
   (:mod:`tollhouse.identifiers`: 400 naming them);
5. on a route with a pool, reads the request body whole, within its deadline
   (``[limits] body_timeout``, 408 after it), so a pool slot is taken only by a request
   ready to run;
6. asks the limit store, in one atomic call, whether every bucket and pool admits the
   request — a rejected request consumes nothing;
7. passes the request to its endpoint or the upstream (reverse proxy, in-process app or
   the bundled example) with ``X-RateLimit-*``, ``RateLimit-Policy``, ``RateLimit`` and
   ``X-Request-Id`` added to its response, holding any pool slot until the request ends,
   errors or the client disconnects, and giving a body still to come its deadline
   (:mod:`tollhouse.http.passing`).

Every answer carries ``X-Request-Id``, equal to the ``requestId`` of an error body.
What the gateway answers itself — ``GET /healthz`` (no key), ``GET /v1/rate-limit/status``
(after its own bucket admitted it), 405s, CORS preflights — is in
:mod:`tollhouse.http.gateway_own`; the meter's record of an answer in
:mod:`tollhouse.http.call_records`.

With ``[cors]`` allowing some origin, a CORS preflight is answered here before step 1
(no key, no bucket), and every answer gets the policy's CORS headers
(:mod:`tollhouse.http.cors`); with it off, that costs one attribute check.

A WebSocket handshake is admitted by the same steps, as ``GET`` on its path
(:mod:`tollhouse.http.gateway_ws`). Other scopes (lifespan) pass through.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Coroutine, Iterable
from time import perf_counter
from typing import Any
from urllib.parse import unquote_plus

from tollhouse.errors import (
    ApiError,
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    ServiceUnavailable,
    StorageError,
    TenantRequired,
    Unauthorized,
)
from tollhouse.http.access_log import AwaitingLog
from tollhouse.http.answers import (
    JSON,
    REQUEST_ID,
    reject_websocket,
    send_error,
    with_request_id,
)
from tollhouse.http.asgi import ASGIApp, Message, Receive, Scope, Send
from tollhouse.http.call_records import call_record, label_values
from tollhouse.http.checks import CheckCache, Checks, denial, iso
from tollhouse.http.context import new_request_id
from tollhouse.http.cors import ORIGIN, REQUEST_METHOD, CorsHeaders, find_header
from tollhouse.http.counters import GatewayCounters
from tollhouse.http.failed_auth import AuthFailures
from tollhouse.http.forward_auth import AUTHORIZE_PATH, authorize
from tollhouse.http.forwarded import TrustedProxies
from tollhouse.http.gateway_own import (
    HEALTH,
    HEALTH_PATH,
    STATUS_PATH,
    admit_keyless,
    count_shadow,
    own_endpoints,
    preflight,
    refuse_method,
)
from tollhouse.http.gateway_ws import admit_websocket
from tollhouse.http.passing import BODY_METHODS, BodyReader, ClientGone, Passer, body_expected
from tollhouse.http.routes import Endpoint, RouteTable
from tollhouse.identifiers import LABEL_VALUE, TENANT
from tollhouse.keys.cache import MISS, KeyCache, Refusal
from tollhouse.keys.model import Identity
from tollhouse.limits.headers import Header as LimitHeader
from tollhouse.limits.headers import pool_headers
from tollhouse.limits.overrides import OverrideCache
from tollhouse.limits.store import Lease, LimitStore, Verdict
from tollhouse.metering.record import Meter
from tollhouse.ops.logs import request_id_var
from tollhouse.policy.match import RouteMatch, Router
from tollhouse.policy.model import Bucket, Policy, Pool
from tollhouse.policy.paths import canonical, encode_path, needs_canonical, respell

__all__ = [
    "HEALTH",
    "HEALTH_PATH",
    "JSON",
    "STATUS_PATH",
    "ASGIApp",
    "Gateway",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "iso",
    "new_request_id",
    "reject_websocket",
]

logger = logging.getLogger(__name__)

#: What admitting a request yields: the caller's identity, the rate-limit headers for its
#: answer, the pool slots it holds, its declared body length (see ``Gateway.admit``).
Admission = tuple[Identity, list[LimitHeader], tuple[Lease, ...], int | None]

#: An ``X-Request-Id`` sent by the caller is kept when it looks like an id.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class Gateway:
    """Raw ASGI middleware enforcing a policy in front of ``app``.

    Args:
        app: the upstream: the inner ASGI app admitted requests are passed to when the
            route table does not answer them.
        policy: the loaded policy (``[platform]`` mounts and turns off the table's groups).
        limits: the limit store (memory or Redis).
        keys: the auth cache.
        clock: wall clock in epoch seconds (injected in tests).
        meter: takes one :class:`CallRecord` per answered call of an authenticated key.
        overrides: per-org and per-key limits from the database.
        counters: the counters ``/metrics`` reads (a new set when None).
        checks: the cache of built limit checks (emptied by ``overrides`` on a change).
        endpoints: tollhouse's own routes besides the gateway's (health, rate-limit
            status): platform, jobs, operations, dashboard.
        disable: groups left out of the table besides ``[platform] disable`` (``ops``
            when the operations endpoints have their own listener).
        on_refused: told of every 429 sent (identity, arrival, its headers): the
            fair-use tap (:mod:`tollhouse.fairuse`).
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
        counters: GatewayCounters | None = None,
        checks: CheckCache | None = None,
        endpoints: Iterable[Endpoint] = (),
        disable: Iterable[str] = (),
        on_refused: Callable[[object, float, dict[str, str]], None] | None = None,
    ) -> None:
        self.app = app
        #: Told of every 429 sent (identity, arrival, its headers): the fair-use tap.
        self.on_refused = on_refused
        self.policy = policy
        self.router = Router(policy)
        self.limits = limits
        self.keys = keys
        self.clock = clock
        self.max_body = policy.limits.max_body_bytes
        self.forward_authorization = policy.upstream.forward_authorization
        self.meter = meter
        self.overrides = overrides
        self.counters = counters if counters is not None else GatewayCounters()
        self.checks = checks if checks is not None else CheckCache()
        self._limit_of = self._limit
        self.passer = Passer(limits, clock, self.max_body, policy.limits.body_deadline)
        #: ``[limits] failed_auth``: client addresses over it (:class:`AuthFailures`).
        self.auth_failures = AuthFailures(policy.limits.failed_auth, limits, self.counters)
        #: ``[cors]``, compiled; None when no origin is allowed (CORS off).
        self.cors = CorsHeaders(policy.cors) if policy.cors.enabled else None
        platform = policy.platform
        #: Every path tollhouse answers itself (``tollhouse routes`` prints it).
        self.table = RouteTable(
            [*own_endpoints(self), *endpoints],
            prefix=platform.prefix,
            disable=(*platform.disable, *disable),
        )
        self.status_path = platform.prefix + STATUS_PATH
        self._owned = self.table.prefixes
        #: ``(METHOD, path template) → query parameters taken`` (the OpenAPI document's):
        #: any other on such an endpoint is a 400 naming it. Empty: not checked.
        self.query_names: dict[tuple[str, str], frozenset[str]] = {}
        #: The decision endpoint (forward-auth); a path no request has when it is off.
        self.authorize_path = (
            "\x00"
            if "forward-auth" in (*platform.disable, *disable)
            else platform.prefix + AUTHORIZE_PATH
        )
        #: The peers the decision endpoint answers (``[proxy] trusted_proxies``).
        self.proxies = TrustedProxies(policy.proxy.trusted_proxies)
        #: Decided calls waiting for the proxy's access-log line (forward-auth), if any.
        self.awaiting_log: AwaitingLog | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await admit_websocket(self, scope, receive, send)
            else:
                await self.app(scope, receive, send)  # lifespan
            return
        path: str = scope["path"]
        if path.startswith(self.authorize_path):
            # Forward-auth: a proxy's decision request, any method (its own steps).
            n = len(self.authorize_path)
            if len(path) == n or path[n] == "/":
                await authorize(self, scope, send)
                return
        if self.cors is not None:
            # [cors]: a preflight is answered here, before auth, and every other answer,
            # the gateway's own errors included, gets the CORS headers.
            origin = find_header(scope["headers"], ORIGIN)
            if origin is not None and scope["method"] == "OPTIONS":
                asked = find_header(scope["headers"], REQUEST_METHOD)
                if asked is not None:
                    await preflight(self, scope, send, self.cors, origin, asked)
                    return
            send = self.cors.wrap(send, origin)
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
        app = self.app
        sent = path
        keyless = False
        try:
            # Route here, then auth, access and limits in admit (shared with websockets).
            match, path = self.route(scope, method, path)
            if path.startswith(self._owned):
                found = self.table.resolve(method, path)
                if found.endpoint is None and found.allow is not None:
                    await refuse_method(self, send, match, method, path, found, request_id)
                    return
                if found.endpoint is not None:
                    if scope["query_string"] and self.query_names:
                        self._check_query(scope, method, found.endpoint.path)
                    scope["path_params"] = found.params
                    app = found.endpoint.app
                    if found.endpoint.keyless:
                        # Static files and probes see the path as sent (the dashboard
                        # redirects /dashboard to /dashboard/).
                        scope["path"] = sent
                        keyless = True
            admitted: Admission | None = None
            keyless_headers: list[LimitHeader] | None = None
            # A route with a pool has its body read before the pool is asked.
            reader = BodyReader(receive) if match.pools else None
            if keyless:
                if match.ip_scoped:  # e.g. the OpenAPI document: limited per address
                    keyless_headers = await admit_keyless(self, scope, match, arrived)
            else:
                pending = self.admit(scope, state, match, method, path, arrived, body=reader)
                # A coroutine when a key is to be looked up or a store waited for.
                admitted = pending if isinstance(pending, tuple) else await pending
        except ClientGone:
            # The caller left while its body was read for a pool route: nobody to answer.
            self.account(match, state.get("identity"), method, 499, arrived, t0, scope)
            return
        except ApiError as exc:
            request_id = state["request_id"]
            await send_error(
                send, exc, request_id, match.error_format if match is not None else "envelope"
            )
            if exc.status == 429 and self.on_refused is not None:
                self.on_refused(state.get("identity"), arrived, exc.headers)
            self.account(match, state.get("identity"), method, exc.status, arrived, t0, scope)
            return
        if keyless:
            # Answered outside the error handling above: no key, not metered.
            if keyless_headers:
                keyless_headers.append((REQUEST_ID, request_id.encode()))
                await self.passer.plain(app, scope, receive, send, keyless_headers, request_id)
            else:
                await app(scope, receive, with_request_id(send, request_id))
            return
        assert admitted is not None
        identity, headers, leases, length = admitted
        request_id = state["request_id"]
        if headers:
            state["limited"] = True  # the proxy drops an upstream's own rate-limit headers
        headers.append((REQUEST_ID, request_id.encode()))
        if reader is not None:
            receive = reader.replay  # the body read before the pool was asked
        if leases or length or (length is None and method in BODY_METHODS):
            status = await self.passer.counted(
                app, scope, receive, send, headers, leases, length, request_id
            )
        else:
            status = await self.passer.plain(app, scope, receive, send, headers, request_id)
        if "aborted" in state:
            # The reverse proxy cut the answer off: 502 when the upstream failed mid-body
            # (whatever status had started), 499 when the caller left first.
            status = state["aborted"]
        group = match.endpoint_group
        self.counters.answered(group.key if group is not None else None, status)
        meter = self.meter
        if meter is not None:
            meter.record(call_record(identity, match, method, status, arrived, t0, scope))

    def _check_query(self, scope: Scope, method: str, template: str) -> None:
        """Refuse a query parameter the endpoint's operation does not list (400)."""
        taken = self.query_names.get(("GET" if method == "HEAD" else method, template))
        if taken is None:
            return  # not in the document (e.g. the dashboard's files)
        query: bytes = scope["query_string"]
        for pair in query.split(b"&"):
            name = unquote_plus(pair.split(b"=", 1)[0].decode("latin-1"))
            if pair and name not in taken:
                takes = ", ".join(sorted(taken)) if taken else "none"
                raise BadRequest(
                    f'unknown query parameter "{name[:100]}": {method} {template} takes {takes}'
                )

    def route(self, scope: Scope, method: str, path: str) -> tuple[RouteMatch, str]:
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

    def admit(
        self,
        scope: Scope,
        state: dict[str, Any],
        match: RouteMatch,
        method: str,
        path: str,
        now: float,
        found: Identity | object | None = MISS,
        body: BodyReader | None = None,
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
        such key); by default the key cache is asked. A key not known valid from memory
        is not looked up for a client address over ``[limits] failed_auth`` (429), and
        one found not valid counts against it.

        ``body``: on a route with a pool, the request's body is read with it (within its
        deadline) before the limits are asked, so a slot is taken only when the request
        is ready to run.
        """
        bearer: bytes | None = None
        api_key: bytes | None = None
        malformed = False
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
                if not token:
                    malformed = True
                elif bearer is None:
                    bearer = token
                elif token != bearer:
                    raise _two_keys("two Authorization headers")
            elif name == b"x-api-key":
                given = value.strip() or None
                if api_key is None:
                    api_key = given
                elif given is not None and given != api_key:
                    raise _two_keys("two X-API-Key headers")
            elif name == b"x-tenant-id":
                tenant = value.decode("latin-1").strip()  # empty: refused below
            elif name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = -1
            elif name == REQUEST_ID:
                # The caller's (or the load balancer's) id, when it is a sane one.
                given_id = value.decode("latin-1")
                if _CLIENT_REQUEST_ID.fullmatch(given_id):
                    state["request_id"] = given_id
                    request_id_var.set(given_id)
        if bearer is not None and api_key is not None and bearer != api_key:
            # Whichever came first must not decide who the caller is.
            raise _two_keys("Authorization and X-API-Key")
        secret = bearer if bearer is not None else api_key
        if secret is None:
            if malformed:
                raise Unauthorized(
                    'The Authorization header must be "Bearer sk_test_…" or "Bearer sk_live_…".'
                )
            raise Unauthorized(
                'No API key: send "Authorization: Bearer sk_test_…" (or sk_live_…) or '
                '"X-API-Key: sk_…".'
            )
        identity = self.keys.cached(secret) if found is MISS else found
        if not isinstance(identity, Identity):
            # Not known valid: refused at once from an address over [limits] failed_auth.
            failures = self.auth_failures
            if failures.blocked:
                failures.check(scope, now)
            if identity is MISS:
                return self._admit_uncached(scope, state, match, method, path, now, secret, body)
            if isinstance(identity, Refusal):
                # A known key, refused with its reason: expired (401), or its org
                # suspended (403). Remembered by the key cache: no lookup to protect.
                raise identity.error()
            if failures.limit:
                return failures.failed(scope, now)
            raise failures.refusal()
        if tenant is not None:
            if not TENANT.admits(tenant):
                state["identity"] = identity  # metered as the key's, without the tenant
                raise BadRequest(f'header "X-Tenant-Id" {TENANT.problem(tenant)}')
            identity = self.keys.with_tenant(identity, tenant)
        state["identity"] = identity

        if match.roles is not None and identity.role not in match.roles:
            raise Forbidden(
                f"This key's role {identity.role!r} may not call {method} {path}; "
                f"allowed roles: {', '.join(sorted(match.roles))}."
            )
        if match.path_labels or match.header_labels or match.query_labels:
            for name, value in label_values(scope, match).items():
                problem = LABEL_VALUE.problem(value)
                if problem is not None:
                    raise BadRequest(f'the value of label "{name}" {problem}')
        if (
            match.tenant_required
            and tenant is None
            and not (path == self.status_path and (method == "GET" or method == "HEAD"))
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

        checks = self.checks.get(match, identity, scope, self._limit_of)
        if body is not None and body_expected(method, length):
            return self._admit_after_body(body, checks, identity, length)
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
        body: BodyReader | None,
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
        admitted = self.admit(scope, state, match, method, path, now, found, body)
        if not isinstance(admitted, tuple):
            admitted = await admitted
        return admitted

    async def _admit_after_body(
        self, body: BodyReader, checks: Checks, identity: Identity, length: int | None
    ) -> Admission:
        """:meth:`_admit`'s limits for a route with a pool: the body first (408 when it
        misses its deadline, 413 past the size limit), then the store, at the time the
        request is ready to run."""
        limits = self.policy.limits
        await body.read(length, limits.body_deadline(length), self.max_body)
        return await self._admit_waiting(checks, identity, self.clock(), length)

    async def _admit_waiting(
        self, checks: Checks, identity: Identity, now: float, length: int | None
    ) -> Admission:
        """:meth:`_admit`'s limits when the store has to be waited for (or shadow
        buckets counted first)."""
        if checks.shadow:
            await count_shadow(self, checks, identity, now)
        if not (checks.buckets or checks.pools):
            return identity, [], (), length
        verdict = self.limits.decide_nowait(checks.buckets, checks.pools, now)
        if verdict is None:
            verdict = await self.limits.decide(checks.buckets, checks.pools, now)
        return self._settle(checks, verdict, identity, now, length)

    def _settle(
        self,
        checks: Checks,
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
            denied = self.counters.denied
            denied[denier] = denied.get(denier, 0) + 1
            raise denial(verdict, headers)
        decided = checks.decided
        admitted = self.counters.admitted
        admitted[decided] = admitted.get(decided, 0) + 1
        return identity, headers, verdict.leases, length

    def account(
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
        self.counters.answered(group.key if group is not None else None, status)
        if self.meter is not None and match is not None and isinstance(identity, Identity):
            self.meter.record(call_record(identity, match, method, status, arrived, t0, scope))

    def _limit(self, limited: Bucket | Pool, identity: Identity) -> int:
        """The bucket's or pool's effective limit for this caller (overrides of its key,
        or of its org in its environment, > policy)."""
        if self.overrides is None:
            return limited.limit
        return self.overrides.limit(
            identity.org, identity.environment, identity.key_id, limited.name, limited.limit
        )

    def forget_checks(self) -> None:
        """Drop every cached check (limits changed): they are rebuilt on next use."""
        self.checks.clear()


def _two_keys(what: str) -> BadRequest:
    """The 400 of a request naming two different keys (never the keys themselves)."""
    return BadRequest(
        f"{what} name different API keys; send one key, in Authorization "
        '("Bearer sk_…") or X-API-Key.'
    )
