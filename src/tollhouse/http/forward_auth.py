"""Forward-auth: tollhouse as the decision service of a proxy in front of the API.

The proxy (nginx ``auth_request``, Envoy ``ext_authz`` in HTTP mode, Traefik
``ForwardAuth``, Caddy ``forward_auth``) asks ``/v1/platform/authorize`` whether a request
may pass, with the caller's headers (key, ``X-Tenant-Id``) and the original request in

* ``X-Original-Method`` + ``X-Original-URI`` (nginx, as its configuration sets them);
* ``X-Forwarded-Method`` + ``X-Forwarded-Uri`` (+ ``X-Forwarded-Host``) (Traefik, Caddy);
* the path after ``/v1/platform/authorize`` and the request's own method (Envoy, with
  ``path_prefix: /v1/platform/authorize``).

A proxy sets its own way but passes the caller's other headers on, so one request
carrying more than one way is refused (400) rather than one of them believed;
``[forward_auth] headers`` pins the way and ignores the others.

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
#: The original-request headers, by their ASGI (lower-case) name.
_ORIGINAL: dict[bytes, str] = {
    b"x-original-uri": "X-Original-URI",
    b"x-original-method": "X-Original-Method",
    b"x-forwarded-uri": "X-Forwarded-Uri",
    b"x-forwarded-method": "X-Forwarded-Method",
}
#: Each header convention's (path header, method header).
_PAIRS: dict[str, tuple[bytes, bytes]] = {
    "original": (b"x-original-uri", b"x-original-method"),
    "forwarded": (b"x-forwarded-uri", b"x-forwarded-method"),
}
_NOT_TRUSTED = (
    "The decision endpoint answers only the proxies in [proxy] trusted_proxies; "
    "call the API through the proxy."
)


def _mixed(names: list[str]) -> BadRequest:
    return BadRequest(
        f"The original request came in more than one proxy's way ({', '.join(names)}): "
        "the proxy sets one, so the caller sent the other. Clear the other headers in the "
        "proxy's configuration, or set [forward_auth] headers to the proxy's way."
    )


def read_original(scope: Scope, prefix: str, convention: str = "auto") -> None:
    """Rewrite ``scope`` to the original request the proxy asks about: ``method``,
    ``path``, ``raw_path`` and ``query_string`` (the canonical form is the gateway's
    business, as for a direct call).

    A proxy sets its own pair of headers (or, Envoy, the path) but passes the caller's
    other headers on, so a caller can add the other pair: with ``convention`` ``auto``,
    more than one way present is refused rather than one of them believed.

    Args:
        scope: the decision request's scope.
        prefix: the decision endpoint's path (a longer path is Envoy's: its rest is the
            original path, the method is the request's own).
        convention: ``[forward_auth] headers``: ``auto``, ``original``, ``forwarded`` or
            ``envoy`` (only that way is read; the others' headers are ignored).

    Raises:
        BadRequest: the original request is missing, malformed, or given more than one
            way (400, naming the headers).
    """
    envoy = len(scope["path"]) > len(prefix)
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in _ORIGINAL:
            if name in found:
                raise BadRequest(f"The {_ORIGINAL[name]} header came twice: send it once.")
            found[name] = value
    if convention == "envoy" or (convention == "auto" and envoy):
        if not envoy:
            raise BadRequest(
                f"The original path is missing: send it after {prefix} "
                "(Envoy's path_prefix; [forward_auth] headers = 'envoy')."
            )
        if convention == "auto" and (b"x-original-uri" in found or b"x-forwarded-uri" in found):
            uris = (b"x-original-uri", b"x-forwarded-uri")
            raise _mixed([f"the path after {prefix}", *(_ORIGINAL[n] for n in uris if n in found)])
        # Envoy ext_authz (HTTP): the original path after the prefix; the query and the
        # method as they came.
        raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        if not raw.startswith(prefix.encode("ascii")):
            raise BadRequest(f"Spell the decision path {prefix} as it is written.")
        rest = raw[len(prefix) :]
        scope["raw_path"] = rest
        scope["path"] = unquote(rest.decode("latin-1"))
        return
    if envoy:
        raise BadRequest(
            f"With [forward_auth] headers = '{convention}' the original request comes in "
            f"headers: ask {prefix} itself, not a path under it."
        )
    if convention == "auto":
        original = b"x-original-uri" in found or b"x-original-method" in found
        if original and (b"x-forwarded-uri" in found or b"x-forwarded-method" in found):
            raise _mixed([_ORIGINAL[n] for n in _ORIGINAL if n in found])
        if not (original or found):
            raise BadRequest(
                "The original request is missing: send X-Original-URI and "
                "X-Original-Method (nginx), or X-Forwarded-Uri and X-Forwarded-Method "
                "(Traefik, Caddy)."
            )
        convention = "original" if original else "forwarded"
    uri_name, method_name = _PAIRS[convention]
    uri, method = found.get(uri_name), found.get(method_name)
    if uri is None:
        raise BadRequest(
            f"The {_ORIGINAL[uri_name]} header is missing: send the original request's "
            "path and query."
        )
    if method is None:
        raise BadRequest(
            f"The {_ORIGINAL[method_name]} header is missing: send the original request's method."
        )
    text = method.decode("latin-1").strip()
    if not _METHOD.fullmatch(text):
        raise BadRequest(f"The original method {text[:40]!r} is not an HTTP method.")
    target = uri.strip()
    if not target.startswith(b"/"):
        raise BadRequest(
            f"The {_ORIGINAL[uri_name]} header must be the original path, starting with /."
        )
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
        read_original(scope, gw.authorize_path, gw.policy.forward_auth.headers)
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
