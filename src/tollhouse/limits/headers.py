"""Rate-limit response headers: the X-RateLimit trio and the IETF RateLimit fields.

``X-RateLimit-Limit/Remaining/Reset`` describe the tightest bucket a request hit (fewest
remaining; ties go to the smaller limit) with ``Reset`` as a Unix timestamp (the scoring
API shape, docs/api-shapes.md).
``RateLimit-Policy`` lists every bucket as ``"name";q=LIMIT;w=WINDOW`` and ``RateLimit``
as ``"name";r=REMAINING;t=SECONDS`` (draft-ietf-httpapi-ratelimit-headers).
"""

from __future__ import annotations

import math

from tollhouse.limits.maths import Outcome
from tollhouse.limits.store import BucketCheck

Header = tuple[bytes, bytes]

X_LIMIT = b"x-ratelimit-limit"
X_REMAINING = b"x-ratelimit-remaining"
X_RESET = b"x-ratelimit-reset"
POLICY = b"ratelimit-policy"
RATELIMIT = b"ratelimit"
RETRY_AFTER = b"retry-after"


def policy_header(checks: tuple[BucketCheck, ...]) -> Header:
    """``RateLimit-Policy`` for a set of buckets (static for a given set of limits)."""
    items = ", ".join(f'"{c.name}";q={c.limit};w={max(1, round(c.window))}' for c in checks)
    return (POLICY, items.encode())


def limit_headers(
    outcomes: list[Outcome],
    names: tuple[bytes, ...],
    limits: tuple[bytes, ...],
    policy: Header,
    now: float,
) -> list[Header]:
    """All rate-limit headers for one decided request (without ``Retry-After``).

    Args:
        outcomes: one per bucket, as the store decided them.
        names: per bucket, the constant ``"name";r=`` prefix of its ``RateLimit`` item.
        limits: per bucket, its limit as bytes.
        policy: the ``RateLimit-Policy`` header for these buckets.
        now: the time the decision was made.
    """
    tight = 0
    best = outcomes[0].remaining
    items = []
    for i, o in enumerate(outcomes):
        remaining = o.remaining
        if i and (remaining < best or (remaining == best and int(limits[i]) < int(limits[tight]))):
            best, tight = remaining, i
        items.append(b"%s%d;t=%d" % (names[i], remaining, _ceil(o.reset_at - now)))
    o = outcomes[tight]
    return [
        (X_LIMIT, limits[tight]),
        (X_REMAINING, b"%d" % o.remaining),
        (X_RESET, b"%d" % _ceil(o.reset_at)),
        policy,
        (RATELIMIT, b", ".join(items)),
    ]


def _ceil(x: float) -> int:
    """Whole seconds, rounded up, never negative."""
    n = int(x)
    return (n + 1 if x > n else n) if x > 0 else 0


def retry_after_header(seconds: float) -> Header:
    """``Retry-After`` in whole seconds, at least 1."""
    return (RETRY_AFTER, str(max(1, math.ceil(seconds))).encode())
