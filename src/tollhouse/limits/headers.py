"""Rate-limit response headers: the X-RateLimit trio and the IETF RateLimit fields.

``X-RateLimit-Limit/Remaining/Reset`` describe the tightest bucket a request hit (fewest
remaining; ties go to the smaller limit) with ``Reset`` as a Unix timestamp (seed 004).
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
    checks: tuple[BucketCheck, ...], outcomes: list[Outcome], policy: Header, now: float
) -> list[Header]:
    """All rate-limit headers for one decided request (without ``Retry-After``)."""
    tight = 0
    best = (outcomes[0].remaining, checks[0].limit)
    items = []
    for i, (c, o) in enumerate(zip(checks, outcomes, strict=True)):
        if i and (o.remaining, c.limit) < best:
            best, tight = (o.remaining, c.limit), i
        items.append(f'"{c.name}";r={o.remaining};t={max(0, math.ceil(o.reset_at - now))}')
    o = outcomes[tight]
    return [
        (X_LIMIT, str(checks[tight].limit).encode()),
        (X_REMAINING, str(o.remaining).encode()),
        (X_RESET, str(math.ceil(o.reset_at)).encode()),
        policy,
        (RATELIMIT, ", ".join(items).encode()),
    ]


def retry_after_header(seconds: float) -> Header:
    """``Retry-After`` in whole seconds, at least 1."""
    return (RETRY_AFTER, str(max(1, math.ceil(seconds))).encode())
