"""Per-request context: what the gateway learned about a request, read back by the
routes behind it.

The gateway puts two things in ``scope["state"]``: ``request_id`` (every request, the one
``X-Request-Id`` of its answer) and ``identity`` (once the key is known, a
:class:`~tollhouse.keys.model.Identity`). Routes read them through :func:`request_id_of`
and :func:`identity_of` only, so there is one fallback policy: a request that reached a
route without the gateway (a test, an app mounted on its own) gets a new id, stored in
its scope so that every later reader (the answer's header, the error body, the logs)
sees the same one; without an identity the answer is 401.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from typing import Any

from tollhouse.errors import Unauthorized
from tollhouse.http.asgi import Scope
from tollhouse.keys.model import Identity

__all__ = ["identity_of", "new_request_id", "request_id_of", "state_of"]

_REQUEST_PREFIX = "req_" + os.urandom(4).hex()
_request_seq = itertools.count(int.from_bytes(os.urandom(3), "big"))

NO_KEY = 'No API key: send "Authorization: Bearer sk_test_…" (or sk_live_…) or "X-API-Key: sk_…".'


def new_request_id() -> str:
    """``req_`` + 16 hex characters: 8 random per process, then a counter (its low 32
    bits).

    Unique across processes and cheap (no system call per request); request ids are
    for correlation, not secrets.
    """
    # hex() of the counter with bit 32 set, less "0x1": the same 8 digits as a "08x"
    # format of its low 32 bits, at half the cost (this runs once per request).
    return _REQUEST_PREFIX + hex(next(_request_seq) & 0xFFFFFFFF | 0x100000000)[3:]


def state_of(scope: Scope) -> dict[str, Any]:
    """``scope["state"]``, made (an empty dict) when the server gave none."""
    state = scope.get("state")
    if state is None:
        state = scope["state"] = {}
    return state


def request_id_of(scope: Scope) -> str:
    """The request's id: the gateway's, else a new one kept in the scope from now on."""
    state = scope.get("state")
    if isinstance(state, Mapping):
        found = state.get("request_id")
        if isinstance(found, str) and found:
            return found
    request_id = new_request_id()
    if isinstance(state, dict):
        state["request_id"] = request_id
    elif state is None:
        scope["state"] = {"request_id": request_id}
    return request_id


def identity_of(scope: Scope) -> Identity:
    """The caller the gateway authenticated.

    Raises:
        Unauthorized: no identity in ``scope["state"]`` (the route was reached without
            the gateway in front).
    """
    state = scope.get("state")
    found = state.get("identity") if isinstance(state, Mapping) else None
    if not isinstance(found, Identity):
        raise Unauthorized(NO_KEY)
    return found
