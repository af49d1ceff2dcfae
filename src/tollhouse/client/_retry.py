"""When to retry and how long to wait: pure functions of the attempt, the answer and a
random source (the scoring API shape's advice, docs/api-shapes.md: respect
``Retry-After``, add jitter, back off exponentially when failures repeat).

Which failures are retried:

* **429** (rate or in-flight limit): always. The gateway refuses before the request
  reaches the API and consumes nothing, so a retry can never do the work twice. The wait
  is ``Retry-After`` plus up to ``retry_after_jitter`` seconds (so that many clients
  refused in one window do not all come back at the same instant), and at least the
  exponential backoff from the second retry on. A ``Retry-After`` longer than
  ``max_retry_after`` is not waited out: the caller gets the error at once.
* **503**: always (the gateway answers it before passing the request on).
* **502, 504**, and failures after the request may have been sent (read timeout,
  connection reset): only for idempotent calls. Every call the SDK makes is idempotent
  except adding a criterion; scoring calls are made idempotent with an
  ``Idempotency-Key``.
* **Connection failures** (refused, connect timeout, no pool slot): always — the request
  never left.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from tollhouse.times import parse_retry_after


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a client retries.

    Attributes:
        max_retries: retries after the first attempt (0 disables retrying).
        backoff_base: ceiling of the first backoff, in seconds; it doubles per retry.
        backoff_max: largest backoff, in seconds.
        retry_after_jitter: at most this many seconds are added to a ``Retry-After``.
        max_retry_after: a ``Retry-After`` longer than this (seconds) is not waited out.
        retry_statuses: statuses retried besides 429 (503 always; 502/504 when idempotent).
    """

    max_retries: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    retry_after_jitter: float = 0.5
    max_retry_after: float = 120.0
    retry_statuses: frozenset[int] = field(default_factory=lambda: frozenset({502, 503, 504}))

    def __post_init__(self) -> None:
        retries = self.max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"max_retries must be an integer of at least 0, not {retries!r}")
        if self.backoff_base <= 0 or self.backoff_max < self.backoff_base:
            raise ValueError("need 0 < backoff_base <= backoff_max")
        if self.retry_after_jitter < 0 or self.max_retry_after < 0:
            raise ValueError("retry_after_jitter and max_retry_after must be 0 or more")


class Failure(Enum):
    """How a request failed without an HTTP answer."""

    #: The request never left (connection refused, connect timeout, no pool slot).
    NOT_SENT = "not_sent"
    #: It may have reached the server (read/write timeout, connection reset mid-way).
    MAYBE_SENT = "maybe_sent"


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What to do after one attempt.

    Attributes:
        retry: send again after ``delay``.
        delay: seconds to wait first.
        reason: why, for logs and errors (``"429 Retry-After 1 s"``, ``"retries used up"``).
    """

    retry: bool
    delay: float
    reason: str


def backoff(retry: int, policy: RetryPolicy, rng: random.Random) -> float:
    """The wait before retry number ``retry`` (0-based): exponential with equal jitter.

    The ceiling is ``backoff_base × 2^retry`` capped at ``backoff_max``; the wait is
    uniform in ``[ceiling/2, ceiling]``. Half the ceiling is kept so the waits really grow,
    the other half randomised so clients that failed together spread out.
    """
    ceiling = min(policy.backoff_max, policy.backoff_base * (2.0 ** min(retry, 62)))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def decide(
    *,
    retry: int,
    policy: RetryPolicy,
    rng: random.Random,
    now: float,
    idempotent: bool,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
    failure: Failure | None = None,
) -> RetryDecision:
    """Decide whether to retry after an attempt.

    Args:
        retry: retries already made for this call (0 after the first attempt).
        policy: the client's policy.
        rng: randomness for the jitter.
        now: Unix time (for an HTTP-date ``Retry-After``).
        idempotent: whether doing the call twice is harmless.
        status: the HTTP status, when there was an answer.
        headers: the answer's headers (lower-case names).
        failure: how it failed, when there was no answer.

    Returns:
        The decision; ``retry=False`` means: return the answer or raise its error.
    """
    if status is not None and (200 <= status < 400):
        return RetryDecision(False, 0.0, "success")
    if failure is not None:
        if failure is Failure.MAYBE_SENT and not idempotent:
            return RetryDecision(False, 0.0, "not idempotent; the request may have been processed")
        if retry >= policy.max_retries:
            return RetryDecision(False, 0.0, f"retries used up ({policy.max_retries})")
        return RetryDecision(
            True, backoff(retry, policy, rng), f"connection failure ({failure.value})"
        )
    assert status is not None, "an answer's status or a failure is required"
    retry_after = parse_retry_after((headers or {}).get("retry-after"), now)
    if status == 429:
        if retry >= policy.max_retries:
            return RetryDecision(False, 0.0, f"retries used up ({policy.max_retries})")
        if retry_after is None:
            return RetryDecision(True, backoff(retry, policy, rng), "429 without Retry-After")
        if retry_after > policy.max_retry_after:
            return RetryDecision(
                False,
                0.0,
                f"Retry-After {retry_after:g} s exceeds max_retry_after "
                f"{policy.max_retry_after:g} s",
            )
        # The first retry waits exactly what the server asked (plus jitter); when 429s
        # repeat, the exponential backoff takes over if it is longer.
        wait = retry_after if retry == 0 else max(retry_after, backoff(retry, policy, rng))
        wait += rng.uniform(0, policy.retry_after_jitter)
        return RetryDecision(True, wait, f"429 Retry-After {retry_after:g} s")
    if status in policy.retry_statuses:
        if status != 503 and not idempotent:
            return RetryDecision(False, 0.0, f"{status} on a call that is not idempotent")
        if retry >= policy.max_retries:
            return RetryDecision(False, 0.0, f"retries used up ({policy.max_retries})")
        wait = backoff(retry, policy, rng)
        if retry_after is not None and retry_after <= policy.max_retry_after:
            wait = max(wait, retry_after)
        return RetryDecision(True, wait, f"{status}")
    return RetryDecision(False, 0.0, f"{status} is not retried")
