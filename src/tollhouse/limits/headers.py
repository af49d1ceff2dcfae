"""Rate-limit response headers: the X-RateLimit trio and the IETF RateLimit fields.

``X-RateLimit-Limit/Remaining/Reset`` describe the tightest bucket a request hit (fewest
remaining; ties go to the smaller limit) with ``Reset`` as a Unix timestamp (the scoring
API shape, docs/api-shapes.md).
``RateLimit-Policy`` lists every bucket as ``"name";q=LIMIT;w=WINDOW`` and ``RateLimit``
as ``"name";r=REMAINING;t=SECONDS`` (draft-ietf-httpapi-ratelimit-headers).

One moment on a 429
    When buckets deny, the request passes once the last of them admits again: the
    denying bucket with the longest wait binds. ``Retry-After`` (seconds, at least 1),
    ``X-RateLimit-Reset`` (that moment, rounded up to a whole second) and the ``t`` of
    every denying bucket's ``RateLimit`` item all name that moment, and the X-RateLimit
    trio describes the binding bucket. A pool's 429 describes the pool alone
    (:func:`pool_headers`): its limit, 0 remaining, the moment a slot is expected free.
"""

from __future__ import annotations

import math

from tollhouse.limits.maths import Outcome
from tollhouse.limits.store import BucketCheck, PoolCheck

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
    names: tuple[str, ...],
    limits: tuple[bytes, ...],
    sizes: tuple[int, ...],
    policy: Header,
    now: float,
) -> list[Header]:
    """All rate-limit headers for one decided request (without ``Retry-After``).

    Args:
        outcomes: one per bucket, as the store decided them.
        names: per bucket, the constant ``"name";r=`` prefix of its ``RateLimit`` item.
        limits: per bucket, its limit as bytes.
        sizes: per bucket, its limit (the tie-break between equally tight buckets).
        policy: the ``RateLimit-Policy`` header for these buckets.
        now: the time the decision was made.
    """
    # Once per admitted request: one pass, the items formatted as text and encoded once,
    # no helper calls (the gateway's share of a request is a few µs; this was 1.5 of it).
    tight = 0
    best = -1
    items = []
    for i, (allowed, _, remaining, reset_at, _) in enumerate(outcomes):
        if not allowed:
            return _denied_headers(outcomes, names, limits, policy, now)
        wait = reset_at - now
        t = int(wait)
        if wait > t:
            t += 1
        elif wait <= 0:
            t = 0
        if best < 0 or remaining < best or (remaining == best and sizes[i] < sizes[tight]):
            best, tight = remaining, i
        items.append(f"{names[i]}{remaining};t={t}")
    reset_at = outcomes[tight][3]
    n = int(reset_at)
    return [
        (X_LIMIT, limits[tight]),
        (X_REMAINING, str(best).encode()),
        (X_RESET, str(n + 1 if reset_at > n else n).encode()),
        policy,
        (RATELIMIT, ", ".join(items).encode()),
    ]


def _denied_headers(
    outcomes: list[Outcome],
    names: tuple[str, ...],
    limits: tuple[bytes, ...],
    policy: Header,
    now: float,
) -> list[Header]:
    """:func:`limit_headers` of a request buckets denied: everything names the moment
    the binding bucket (the denying one with the longest wait) admits again."""
    binding = max(
        (i for i, o in enumerate(outcomes) if not o.allowed),
        key=lambda i: outcomes[i].retry_after,
    )
    wait = outcomes[binding].retry_after
    seconds = retry_seconds(wait)
    items = []
    for i, o in enumerate(outcomes):
        t = seconds if not o.allowed else _ceil(o.reset_at - now)
        items.append(f"{names[i]}{o.remaining};t={t}")
    return [
        (X_LIMIT, limits[binding]),
        (X_REMAINING, b"%d" % outcomes[binding].remaining),
        (X_RESET, b"%d" % _ceil(now + wait)),
        policy,
        (RATELIMIT, ", ".join(items).encode()),
    ]


def pool_headers(
    pools: tuple[PoolCheck, ...], denied_by: str | None, wait: float, now: float
) -> list[Header]:
    """The rate-limit headers of a request a pool denied (without ``Retry-After``): they
    describe the pool — its limit, nothing remaining, and the moment ``wait`` seconds
    from ``now`` when a slot is expected free — not the buckets the request passed.

    Args:
        pools: the pools the request asked for.
        denied_by: the name of the pool that denied.
        wait: seconds until a slot of it is expected free.
        now: the time the decision was made.
    """
    pool = next((p for p in pools if p.name == denied_by), pools[0])
    seconds = retry_seconds(wait)
    return [
        (X_LIMIT, b"%d" % pool.limit),
        (X_REMAINING, b"0"),
        (X_RESET, b"%d" % _ceil(now + wait)),
        (POLICY, b'"%s";q=%d' % (pool.name.encode(), pool.limit)),
        (RATELIMIT, b'"%s";r=0;t=%d' % (pool.name.encode(), seconds)),
    ]


def retry_seconds(wait: float) -> int:
    """``wait`` as ``Retry-After`` says it: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait))


def _ceil(x: float) -> int:
    """Whole seconds, rounded up, never negative."""
    n = int(x)
    return (n + 1 if x > n else n) if x > 0 else 0


def retry_after_header(seconds: float) -> Header:
    """``Retry-After`` in whole seconds, at least 1."""
    return (RETRY_AFTER, b"%d" % retry_seconds(seconds))
