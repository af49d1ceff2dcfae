"""Forward-auth: tollhouse as the decision service of a proxy in front of the API.

The proxy (nginx ``auth_request``, Envoy ``ext_authz`` in HTTP mode, Traefik
``ForwardAuth``, Caddy ``forward_auth``) asks ``/v1/platform/authorize`` whether a request
may pass, with the caller's headers (key, ``X-Tenant-Id``) and the original request in

* ``X-Original-Method`` + ``X-Original-URI`` (nginx, as its configuration sets them);
* ``X-Forwarded-Method`` + ``X-Forwarded-Uri`` (+ ``X-Forwarded-Host``) (Traefik, Caddy);
* the path after ``/v1/platform/authorize`` and the request's own method (Envoy, with
  ``path_prefix: /v1/platform/authorize``).

The gateway sends every request under that path here with one ``startswith``, before
CORS and the route table (:meth:`Gateway.__call__`). The original request then goes
through the very steps a direct call does — canonical path (400 on an encoded slash or a
dot segment), policy match, key, role, tenant, body size, every bucket and pool decided
at once — and the answer is a 200 without a body, carrying ``X-Tollhouse-Org``,
``-Environment``, ``-Key-Id``, ``-Role``, ``X-Request-Id`` and the rate-limit headers for the
proxy to copy; or the refusal a direct call would get (envelope, ``Retry-After``, the
rate-limit headers), plus ``X-Tollhouse-Error`` holding the envelope for proxies that
drop the body of a refusal (nginx). Only peers in ``[proxy] trusted_proxies`` are
answered; anyone else gets 403.
"""

from __future__ import annotations

import re
from time import perf_counter
from typing import TYPE_CHECKING
from urllib.parse import unquote

from tollhouse.errors import ApiError, BadRequest, Forbidden
from tollhouse.http.answers import REQUEST_ID, error_parts
from tollhouse.http.asgi import Header, Scope, Send
from tollhouse.http.call_records import call_record
from tollhouse.http.context import new_request_id, state_of
from tollhouse.keys.model import Identity
from tollhouse.ops.logs import request_id_var
from tollhouse.policy.match import RouteMatch

if TYPE_CHECKING:
    from tollhouse.http.gateway import Gateway

__all__ = ["AUTHORIZE_PATH", "ERROR_HEADER", "authorize", "read_original"]

AUTHORIZE_PATH = "/v1/platform/authorize"
#: The refusal's envelope, repeated as a header (nginx's auth_request drops the body).
ERROR_HEADER = b"x-tollhouse-error"
_METHOD = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")
_EMPTY: Header = (b"content-length", b"0")
_ORIGINAL = frozenset(
    (b"x-original-uri", b"x-original-method", b"x-forwarded-uri", b"x-forwarded-method")
)
_NOT_TRUSTED = (
    "The decision endpoint answers only the proxies in [proxy] trusted_proxies; "
    "call the API through the proxy."
)


def read_original(scope: Scope, prefix: str) -> None:
    """Rewrite ``scope`` to the original request the proxy asks about: ``method``,
    ``path``, ``raw_path`` and ``query_string`` (the canonical form is the gateway's
    business, as for a direct call).

    Args:
        scope: the decision request's scope.
        prefix: the decision endpoint's path (a longer path is Envoy's: its rest is the
            original path, the method is the request's own).

    Raises:
        BadRequest: the original-request headers are missing or malformed (400, naming
            the header).
    """
    if len(scope["path"]) > len(prefix):
        # Envoy ext_authz (HTTP): the original path after the prefix; the query and the
        # method as they came.
        raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        if not raw.startswith(prefix.encode("ascii")):
            raise BadRequest(f"Spell the decision path {prefix} as it is written.")
        rest = raw[len(prefix) :]
        scope["raw_path"] = rest
        scope["path"] = unquote(rest.decode("latin-1"))
        return
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in _ORIGINAL:
            found[name] = value
    if b"x-original-uri" in found:
        uri_header, method_header = "X-Original-URI", "X-Original-Method"
        uri, method = found[b"x-original-uri"], found.get(b"x-original-method")
    elif b"x-forwarded-uri" in found:
        uri_header, method_header = "X-Forwarded-Uri", "X-Forwarded-Method"
        uri, method = found[b"x-forwarded-uri"], found.get(b"x-forwarded-method")
    else:
        raise BadRequest(
            "The original request is missing: send X-Original-URI and X-Original-Method "
            "(nginx), or X-Forwarded-Uri and X-Forwarded-Method (Traefik, Caddy)."
        )
    if method is None:
        raise BadRequest(
            f"The {method_header} header is missing: send the original request's method."
        )
    text = method.decode("latin-1").strip()
    if not _METHOD.fullmatch(text):
        raise BadRequest(f"The original method {text[:40]!r} is not an HTTP method.")
    target = uri.strip()
    if not target.startswith(b"/"):
        raise BadRequest(f"The {uri_header} header must be the original path, starting with /.")
    path, _, query = target.partition(b"?")
    scope["method"] = text
    scope["raw_path"] = path
    scope["path"] = unquote(path.decode("latin-1"))
    scope["query_string"] = query


def _identity_headers(identity: Identity) -> list[Header]:
    return [
        (b"x-tollhouse-org", identity.org.encode()),
        (b"x-tollhouse-environment", identity.environment.encode()),
        (b"x-tollhouse-key-id", identity.key_id.encode()),
        (b"x-tollhouse-role", identity.role.encode()),
    ]


async def authorize(gw: Gateway, scope: Scope, send: Send) -> None:
    """Decide the original request of a proxy's decision request, and answer it."""
    t0 = perf_counter()
    arrived = gw.clock()
    state = state_of(scope)
    request_id = state["request_id"] = new_request_id()
    request_id_var.set(request_id)
    match: RouteMatch | None = None
    method: str = scope["method"]
    try:
        peer = state.get("peer") or scope.get("client")
        if not peer or not gw.proxies.trusts(str(peer[0])):
            raise Forbidden(_NOT_TRUSTED)
        read_original(scope, gw.authorize_path)
        method = scope["method"]
        match, path = gw.route(scope, method, scope["path"])
        admitted = gw.admit(scope, state, match, method, path, arrived)
        if not isinstance(admitted, tuple):
            admitted = await admitted
    except ApiError as exc:
        request_id = state["request_id"]
        headers, body = error_parts(
            exc, request_id, match.error_format if match is not None else "envelope"
        )
        headers.append((ERROR_HEADER, body))
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        if exc.status == 429 and gw.on_refused is not None:
            gw.on_refused(state.get("identity"), arrived, exc.headers)
        gw.account(match, state.get("identity"), method, exc.status, arrived, t0, scope)
        return
    identity, headers, leases, _ = admitted
    request_id = state["request_id"]
    headers += _identity_headers(identity)
    headers.append((REQUEST_ID, request_id.encode()))
    headers.append(_EMPTY)
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
    group = match.endpoint_group
    group_key = group.key if group is not None else None
    call = call_record(identity, match, method, 0, arrived, t0, scope) if gw.meter else None
    awaiting = gw.awaiting_log
    if awaiting is not None:
        # Counted (and metered) with the call's status once its access-log line says it.
        awaiting.hold(request_id, call, leases, arrived, group_key)
        return
    # No access log to learn the status from: unknown (status 0).
    gw.counters.answered(group_key, 0)
    if call is not None:
        assert gw.meter is not None
        gw.meter.record(call)
