"""The retry decision and the backoff: pure functions, a seeded RNG, no sleeping."""

from __future__ import annotations

import random

import pytest

from tollhouse.client import RetryPolicy, backoff, decide
from tollhouse.client._retry import Failure

NOW = 1_800_000_000.0
POLICY = RetryPolicy(max_retries=4, backoff_base=0.5, backoff_max=8.0, retry_after_jitter=0.5)


def rng() -> random.Random:
    return random.Random(7)


@pytest.mark.parametrize("retry", range(8))
def test_backoff_is_exponential_with_equal_jitter(retry: int) -> None:
    ceiling = min(8.0, 0.5 * 2**retry)
    r = rng()
    waits = [backoff(retry, POLICY, r) for _ in range(200)]
    assert all(ceiling / 2 <= w <= ceiling for w in waits)
    assert len(set(waits)) > 100  # jittered, not a constant


def test_backoff_grows_then_caps() -> None:
    r = rng()
    floors = [min(backoff(n, POLICY, r) for _ in range(50)) for n in range(8)]
    assert floors[:4] == sorted(floors[:4]) and floors[3] > floors[0] * 4
    assert max(backoff(60, POLICY, r) for _ in range(50)) <= POLICY.backoff_max


def test_same_seed_same_waits() -> None:
    a = [backoff(3, POLICY, random.Random(1)) for _ in range(3)]
    b = [backoff(3, POLICY, random.Random(1)) for _ in range(3)]
    assert a == b


def _decide(**kw: object) -> tuple[bool, float, str]:
    args: dict[str, object] = {"retry": 0, "policy": POLICY, "rng": rng(), "now": NOW}
    args.update(kw)
    d = decide(idempotent=bool(args.pop("idempotent", True)), **args)  # type: ignore[arg-type]
    return d.retry, d.delay, d.reason


def test_429_waits_retry_after_plus_jitter() -> None:
    again, delay, reason = _decide(status=429, headers={"retry-after": "2"}, idempotent=False)
    assert again and 2.0 <= delay <= 2.5 and "Retry-After" in reason


def test_repeated_429_backs_off_exponentially() -> None:
    # Retry-After 1 s, but the fourth retry's backoff (ceiling 4 s) is longer.
    again, delay, _ = _decide(retry=3, status=429, headers={"retry-after": "1"})
    assert again and 2.0 <= delay <= 4.5


def test_429_without_retry_after_backs_off() -> None:
    again, delay, _ = _decide(retry=1, status=429, headers={})
    assert again and 0.5 <= delay <= 1.0


def test_429_retries_are_bounded() -> None:
    again, _, reason = _decide(retry=4, status=429, headers={"retry-after": "1"})
    assert not again and "used up" in reason


def test_a_long_retry_after_is_not_waited_out() -> None:
    again, _, reason = _decide(status=429, headers={"retry-after": "3600"})
    assert not again and "max_retry_after" in reason


def test_http_date_retry_after() -> None:
    again, delay, reason = _decide(
        status=429, headers={"retry-after": "Fri, 15 Jan 2027 08:00:10 GMT"}
    )
    assert again and 10.0 <= delay <= 10.5 and "Retry-After 10 s" in reason


def test_a_malformed_retry_after_backs_off() -> None:
    for bad in ("-3", "soon", "1.5"):
        again, delay, reason = _decide(status=429, headers={"retry-after": bad})
        assert again and delay <= 0.5 and reason == "429 without Retry-After"


@pytest.mark.parametrize(
    ("status", "idempotent", "expected"),
    [
        (503, False, True),  # the gateway refused it: safe to send again
        (502, True, True),
        (504, True, True),
        (502, False, False),  # the upstream may have done it
        (504, False, False),
        (500, True, False),
        (400, True, False),
        (401, True, False),
        (404, True, False),
        (422, True, False),
        (200, True, False),
        (202, False, False),
    ],
)
def test_which_statuses_retry(status: int, idempotent: bool, expected: bool) -> None:
    again, _, _ = _decide(status=status, headers={}, idempotent=idempotent)
    assert again is expected


def test_503_honours_retry_after() -> None:
    again, delay, _ = _decide(status=503, headers={"retry-after": "3"})
    assert again and delay >= 3.0


@pytest.mark.parametrize(
    ("failure", "idempotent", "expected"),
    [
        (Failure.NOT_SENT, False, True),
        (Failure.NOT_SENT, True, True),
        (Failure.MAYBE_SENT, True, True),
        (Failure.MAYBE_SENT, False, False),
    ],
)
def test_connection_failures(failure: Failure, idempotent: bool, expected: bool) -> None:
    again, delay, _ = _decide(failure=failure, idempotent=idempotent)
    assert again is expected
    if again:
        assert 0.25 <= delay <= 0.5


def test_no_retries_policy() -> None:
    none = RetryPolicy(max_retries=0)
    assert not decide(
        retry=0, policy=none, rng=rng(), now=NOW, idempotent=True, status=503, headers={}
    ).retry


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError, match="backoff"):
        RetryPolicy(backoff_base=2, backoff_max=1)
